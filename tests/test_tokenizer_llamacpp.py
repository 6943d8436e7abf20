"""Our token ids, decoded text and end-of-generation ids equal llama.cpp's on the real models.

llama.cpp (through llama-cpp-python, vocab_only) is the reference: SmolLM2-135M
(GPT-2 byte-level BPE, "smollm" pre-tokenizer) and Gemma-3-270M (SentencePiece
vocabulary with byte fallback and user-defined whitespace tokens), on the corpus
of tests/tokenizer_corpus.py (>= 2,000 strings).
"""
from __future__ import annotations

import ctypes

import pytest

from edgesdk.tokenizer import Tokenizer
from tokenizer_corpus import build_corpus

import llama_cpp

MIN_CORPUS_STRINGS = 2000
# (add_special, parse_special) combinations every string is encoded with.
MODES = [(True, False), (False, False), (True, True), (False, True)]


class _Reference:
    """llama.cpp's tokenizer for one model file, with nothing but the vocabulary loaded."""

    def __init__(self, path: str):
        self.llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def piece(self, token_id: int, special: bool) -> bytes:
        """llama_token_to_piece with a buffer large enough for any token."""
        vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        size = 1024
        buffer = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token_id, buffer, size, 0, special)
        assert 0 <= n <= size
        return buffer.raw[:n]

    def is_eog(self, token_id: int) -> bool:
        vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        return bool(llama_cpp.llama_vocab_is_eog(vocab, token_id))


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model_pair(request):
    path = request.getfixturevalue(f"{request.param}_path")
    tokenizer = Tokenizer.from_gguf(path)
    specials = [tokenizer.token_text(i) for i in range(tokenizer.n_vocab) if tokenizer.is_control(i)]
    # The first special strings (BOS/EOS/chat markers) and a spread of the rest.
    chosen = specials[:24] + specials[24::max(1, len(specials) // 16)]
    return request.param, tokenizer, _Reference(path), build_corpus(chosen)


@pytest.mark.models
@pytest.mark.slow
def test_ids_equal_llamacpp_on_the_corpus(model_pair):
    name, tokenizer, reference, corpus = model_pair
    assert len(corpus) >= MIN_CORPUS_STRINGS
    mismatches = []
    for text in corpus:
        for add_special, parse_special in MODES:
            ours = tokenizer.encode(text, add_special=add_special, parse_special=parse_special)
            theirs = reference.tokenize(text, add_special, parse_special)
            if ours != theirs:
                mismatches.append((text, add_special, parse_special, ours, theirs))
    assert not mismatches, f"{name}: {len(mismatches)} of {len(corpus) * len(MODES)} differ; first: {mismatches[:3]}"


@pytest.mark.models
def test_token_bytes_equal_llamacpp_pieces_for_every_token(model_pair):
    name, tokenizer, reference, _ = model_pair
    differ = [i for i in range(tokenizer.n_vocab) if tokenizer.token_bytes(i) != reference.piece(i, True)]
    assert not differ, f"{name}: {len(differ)} tokens differ, first ids {differ[:5]}"
    # Without special rendering, control tokens print nothing in both.
    for token_id in range(tokenizer.n_vocab):
        if tokenizer.is_control(token_id):
            assert reference.piece(token_id, False) == b""
            assert tokenizer.decode([token_id], skip_special=True) == ""


def _representable(tokenizer: Tokenizer, text: str) -> bool:
    """Every byte of text has a token of its own, so no byte can be lost."""
    if tokenizer.vocab.model == "gpt2":
        from edgesdk.tokenizer.bpe import BYTE_TO_CHAR
        return all(BYTE_TO_CHAR[b] in tokenizer.vocab.token_to_id for b in text.encode("utf-8"))
    return all(f"<0x{b:02X}>" in tokenizer.vocab.token_to_id for b in text.encode("utf-8"))


@pytest.mark.models
def test_decode_of_encode_gives_the_text_back(model_pair):
    name, tokenizer, _, corpus = model_pair
    checked = 0
    for text in corpus:
        if not _representable(tokenizer, text):
            continue
        checked += 1
        assert tokenizer.decode(tokenizer.encode(text)) == text if not tokenizer.add_bos else \
            tokenizer.decode(tokenizer.encode(text), skip_special=True) == text, (name, text)
        assert tokenizer.decode(tokenizer.encode(text, add_special=False)) == text, (name, text)
    assert checked >= MIN_CORPUS_STRINGS * 0.9


@pytest.mark.models
def test_end_of_generation_ids_equal_llamacpp(model_pair):
    name, tokenizer, reference, _ = model_pair
    theirs = {i for i in range(tokenizer.n_vocab) if reference.is_eog(i)}
    assert tokenizer.eot_ids == theirs


@pytest.mark.models
def test_special_ids_and_flags_equal_llamacpp(model_pair):
    name, tokenizer, reference, _ = model_pair
    model = reference.llama._model
    assert tokenizer.n_vocab == reference.llama.n_vocab()
    assert tokenizer.bos_id == model.token_bos()
    assert tokenizer.eos_id == model.token_eos()
    assert tokenizer.add_bos == model.add_bos_token()
    assert tokenizer.add_eos == model.add_eos_token()
    for token_id in range(0, tokenizer.n_vocab, 97):
        assert tokenizer.token_text(token_id) == model.token_get_text(token_id)
        control = bool(model.token_get_attr(token_id) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL)
        assert tokenizer.is_control(token_id) == control


@pytest.mark.models
def test_chat_markers_are_single_tokens_only_with_parse_special(smollm2_path):
    tokenizer = Tokenizer.from_gguf(smollm2_path)
    marker = tokenizer.vocab.token_to_id["<|im_start|>"]
    assert tokenizer.encode("<|im_start|>user", add_special=False, parse_special=True)[0] == marker
    assert marker not in tokenizer.encode("<|im_start|>user", add_special=False, parse_special=False)
    assert tokenizer.vocab.token_to_id["<|im_end|>"] in tokenizer.eot_ids
