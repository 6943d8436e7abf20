"""The vocabulary as a GGUF file describes it: token strings, types, scores, merges, special ids.

Everything here is read from metadata and checked before use, because a model
file from the internet may carry arrays of different lengths or special ids
that point past the vocabulary. Problems raise TokenizerError with the key and
the numbers.

The rules for defaults and for tokens that are treated as control tokens even
when the file says otherwise follow llama.cpp's vocabulary loader, which is
the reference our token ids are compared with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Mapping, Optional

from ..errors import TokenizerError

# GGUF tokenizer.ggml.token_type values.
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)

# Attribute bits (a token may carry several after the overrides below).
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5

_TYPE_TO_ATTR = {
    TYPE_NORMAL: ATTR_NORMAL, TYPE_UNKNOWN: ATTR_UNKNOWN, TYPE_CONTROL: ATTR_CONTROL,
    TYPE_USER_DEFINED: ATTR_USER_DEFINED, TYPE_UNUSED: ATTR_UNUSED, TYPE_BYTE: ATTR_BYTE,
}

# Token texts that end a generation whatever the file's token type says (llama.cpp's list,
# which also gives them the control attribute: that decides whether they are matched in text).
END_OF_GENERATION_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
)
# Candidates for the end-of-turn id when the file does not name one.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>")
# Fill-in-the-middle markers by role: also given the control attribute; the pad, repository
# and file-separator markers also end a generation.
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
            "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
            "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
            "\u2581<MID>", "<|code_middle|>", "<|middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_FIM_ENDS = ("pad", "rep", "sep")

MODEL_BPE = "gpt2"
MODEL_SPM = "llama"

_SPECIAL_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",
}


@dataclass
class Vocab:
    """A checked vocabulary. `attrs[i]` holds ATTR_* bits; `token_to_id` maps text to id
    (when a text appears twice, the later id wins, as in llama.cpp)."""
    model: str                     # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str                       # tokenizer.ggml.pre, "default" when absent
    tokens: List[str]
    attrs: List[int]
    scores: Optional[List[float]]
    merges: Optional[List[str]]
    bos_id: Optional[int]
    eos_id: Optional[int]
    eot_id: Optional[int]
    unk_id: Optional[int]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    token_to_id: Dict[str, int] = field(repr=False, default_factory=dict)
    eog_ids: FrozenSet[int] = frozenset()

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)


def _as_list(value: Any, key: str) -> list:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TokenizerError(f"{key} must be an array, got {type(value).__name__}")
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _optional_id(metadata: Mapping[str, Any], key: str, n_vocab: int) -> Optional[int]:
    if key not in metadata:
        return None
    value = metadata[key]
    try:
        token_id = int(value)
    except (TypeError, ValueError):
        raise TokenizerError(f"{key} must be an integer token id, got {value!r}") from None
    if not 0 <= token_id < n_vocab:
        raise TokenizerError(f"{key} = {token_id} is out of range for a vocabulary of {n_vocab} tokens")
    return token_id


def vocab_from_metadata(metadata: Mapping[str, Any]) -> Vocab:
    """Build and check a Vocab from GGUF metadata (tokenizer.ggml.*)."""
    model = metadata.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("tokenizer.ggml.model is missing: the file has no tokenizer")
    if model not in (MODEL_BPE, MODEL_SPM):
        raise TokenizerError(
            f"tokenizer.ggml.model = {model!r} is not supported (supported: 'gpt2' byte-level BPE, "
            "'llama' SentencePiece)"
        )
    tokens = _as_list(metadata.get("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError("tokenizer.ggml.tokens is missing or empty")
    n_vocab = len(tokens)
    if not all(isinstance(t, str) for t in tokens):
        raise TokenizerError("tokenizer.ggml.tokens must be an array of strings")

    types = _as_list(metadata.get("tokenizer.ggml.token_type"), "tokenizer.ggml.token_type")
    if types is not None and len(types) != n_vocab:
        raise TokenizerError(
            f"tokenizer.ggml.token_type has {len(types)} entries, tokenizer.ggml.tokens has {n_vocab}"
        )
    scores = _as_list(metadata.get("tokenizer.ggml.scores"), "tokenizer.ggml.scores")
    if scores is not None and len(scores) != n_vocab:
        raise TokenizerError(
            f"tokenizer.ggml.scores has {len(scores)} entries, tokenizer.ggml.tokens has {n_vocab}"
        )
    merges = None
    if model == MODEL_BPE:
        merges = _as_list(metadata.get("tokenizer.ggml.merges"), "tokenizer.ggml.merges")
        if merges is None:
            raise TokenizerError("tokenizer.ggml.merges is missing: a gpt2-type BPE vocabulary needs its merges")
        if not all(isinstance(m, str) for m in merges):
            raise TokenizerError("tokenizer.ggml.merges must be an array of strings")
    if model == MODEL_SPM and scores is None:
        raise TokenizerError("tokenizer.ggml.scores is missing: a SentencePiece vocabulary needs its scores")

    # An empty token text would match everywhere; llama.cpp renames it, so do we.
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    attrs = [ATTR_NORMAL] * n_vocab if types is None else [_TYPE_TO_ATTR.get(int(t), ATTR_UNDEFINED) for t in types]
    token_to_id = {text: i for i, text in enumerate(tokens)}

    pre = metadata.get("tokenizer.ggml.pre") or "default"
    if model == MODEL_SPM:
        bos_default, eos_default, unk_default = 1, 2, 0
        add_bos, add_eos, add_space_prefix = True, False, True
    else:
        bos_default = eos_default = 11
        unk_default = None
        add_bos = pre in ("llama3", "llama-v3", "llama-bpe", "falcon3", "tekken", "chameleon")
        add_eos, add_space_prefix = False, False

    ids = {name: _optional_id(metadata, key, n_vocab) for name, key in _SPECIAL_ID_KEYS.items()}
    bos_id = ids["bos"] if ids["bos"] is not None else (bos_default if bos_default < n_vocab else None)
    eos_id = ids["eos"] if ids["eos"] is not None else (eos_default if eos_default < n_vocab else None)
    unk_id = ids["unk"] if ids["unk"] is not None else (unk_default if unk_default is not None and unk_default < n_vocab else None)
    eot_id = ids["eot"]

    for key, current in (("tokenizer.ggml.add_bos_token", "bos"), ("tokenizer.ggml.add_eos_token", "eos"),
                         ("tokenizer.ggml.add_space_prefix", "space")):
        if key in metadata:
            value = metadata[key]
            if not isinstance(value, (bool, int)) or isinstance(value, int) and value not in (0, 1):
                raise TokenizerError(f"{key} must be a bool, got {value!r}")
            if current == "bos":
                add_bos = bool(value)
            elif current == "eos":
                add_eos = bool(value)
            else:
                add_space_prefix = bool(value)
    if add_bos and bos_id is None:
        raise TokenizerError(f"the vocabulary asks for a BOS token but has none (vocabulary of {n_vocab} tokens)")
    if add_eos and eos_id is None:
        raise TokenizerError(f"the vocabulary asks for an EOS token but has none (vocabulary of {n_vocab} tokens)")

    # Tokens that look like control tokens get the control attribute (llama.cpp's loader does
    # the same), which matters for whether they are matched in user text. llama.cpp takes the
    # first such text its hash map yields per role; vocabularies with two candidates for one
    # role are not known, so we take them all.
    eog = set()
    if eot_id is None:
        for text in _EOT_TEXTS:
            if text in token_to_id:
                eot_id = token_to_id[text]
                attrs[eot_id] |= ATTR_CONTROL
                break
    if ids["eom"] is None and "<|eom_id|>" in token_to_id:
        attrs[token_to_id["<|eom_id|>"]] |= ATTR_CONTROL
    for role, texts in _FIM_TEXTS.items():
        for text in texts:
            token_id = token_to_id.get(text)
            if token_id is not None:
                attrs[token_id] |= ATTR_CONTROL
                if role in _FIM_ENDS:
                    eog.add(token_id)
    for text in END_OF_GENERATION_TEXTS:
        token_id = token_to_id.get(text)
        if token_id is not None:
            attrs[token_id] |= ATTR_CONTROL
            eog.add(token_id)
    for text in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
        if text in token_to_id:  # gpt-oss markers: always rendered, as llama.cpp does
            attrs[token_to_id[text]] = ATTR_USER_DEFINED
    for token_id in (eos_id, eot_id, ids["eom"]):
        if token_id is not None:
            eog.add(token_id)
    eog_texts = {tokens[i] for i in eog}
    # gpt-oss / solar-open: with <|return|>+<|call|> (or <|calls|>+<|flush|>), <|end|> is not an end.
    has_call = "<|call|>" in eog_texts or "<|calls|>" in eog_texts
    if "<|end|>" in eog_texts and has_call and ("<|return|>" in eog_texts or "<|flush|>" in eog_texts):
        end_id = token_to_id["<|end|>"]
        eog.discard(end_id)
        attrs[end_id] = ATTR_USER_DEFINED
    # Gemma-4 / PaddleOCR: with <|tool_response>, </s> is ordinary text.
    if "<|tool_response>" in eog_texts and "</s>" in eog_texts:
        s_id = token_to_id["</s>"]
        eog.discard(s_id)
        attrs[s_id] = ATTR_NORMAL

    return Vocab(
        model=model, pre=pre, tokens=tokens, attrs=attrs,
        scores=None if scores is None else [float(s) for s in scores],
        merges=merges, bos_id=bos_id, eos_id=eos_id, eot_id=eot_id, unk_id=unk_id,
        add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix,
        token_to_id=token_to_id, eog_ids=frozenset(eog),
    )
