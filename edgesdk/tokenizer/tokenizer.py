"""The Tokenizer: text <-> token ids for a model, from its GGUF metadata alone.

Encoding follows llama.cpp's rules exactly (our ids are tested against it):
special-token strings are split out first (see special.py), BOS/EOS are added
as the metadata says, and each raw-text piece goes to the vocabulary's model
(byte-level BPE, or SentencePiece-style merging by score).

Input that cannot be UTF-8: `encode` accepts str (lone surrogates, which have
no UTF-8 form, are replaced by U+FFFD) or bytes (invalid sequences are replaced
by U+FFFD). `decode` replaces byte sequences that are not valid UTF-8 with
U+FFFD. Ids outside [0, n_vocab) raise InvalidArgumentError.

Decoding is lossless: it does not apply llama.cpp's optional "clean spaces"
rewriting (" ," -> ","), so decode(encode(x)) == x for every text the
vocabulary can spell. eot_ids is llama.cpp's end-of-generation set, quirks
included (e.g. Gemma-3's HTML "</s>" token is in it, as in llama.cpp).
"""
from __future__ import annotations

import os
from typing import Any, FrozenSet, Iterable, List, Optional, Tuple, Union

from ..errors import InvalidArgumentError
from .bpe import BPEModel
from .special import build_matchers
from .spm import SPMModel
from .streaming import StreamDecoder
from .vocab import ATTR_CONTROL, ATTR_UNKNOWN, MODEL_BPE, Vocab, vocab_from_metadata


def _clean_text(text: Union[str, bytes, bytearray]) -> str:
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise InvalidArgumentError(f"text must be str or bytes, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: round-trip through UTF-16 turns each into U+FFFD.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class Tokenizer:
    """Encode and decode for one vocabulary. Build with from_gguf() or from_sentencepiece()."""

    def __init__(self, vocab: Vocab, model: Any):
        self._vocab = vocab
        self._model = model
        self._always_matcher, self._special_matcher = build_matchers(vocab.tokens, vocab.attrs)
        self._token_bytes_cache: List[Optional[bytes]] = [None] * vocab.n_vocab

    # -- construction ----------------------------------------------------------

    @classmethod
    def from_gguf(cls, source: Any) -> "Tokenizer":
        """From a GGUF path, an opened edgesdk.gguf.GGUFFile, or a metadata mapping."""
        if isinstance(source, (str, os.PathLike)):
            from .. import gguf
            with gguf.open(source) as opened:
                metadata = dict(opened.metadata)
        elif hasattr(source, "metadata"):
            metadata = source.metadata
        elif hasattr(source, "get") and hasattr(source, "__getitem__"):
            metadata = source
        else:
            raise InvalidArgumentError(
                f"from_gguf needs a path, a GGUFFile or a metadata mapping, got {type(source).__name__}"
            )
        return cls.from_metadata(metadata)

    @classmethod
    def from_metadata(cls, metadata) -> "Tokenizer":
        vocab = vocab_from_metadata(metadata)
        model = BPEModel(vocab) if vocab.model == MODEL_BPE else SPMModel(vocab)
        return cls(vocab, model)

    @classmethod
    def from_sentencepiece(cls, path: Union[str, os.PathLike]) -> "Tokenizer":
        """From a SentencePiece .model file, encoded by the sentencepiece library itself."""
        from .sentencepiece_model import load_sentencepiece
        vocab, model = load_sentencepiece(path)
        return cls(vocab, model)

    # -- vocabulary facts ------------------------------------------------------

    @property
    def vocab(self) -> Vocab:
        return self._vocab

    @property
    def n_vocab(self) -> int:
        return self._vocab.n_vocab

    @property
    def bos_id(self) -> Optional[int]:
        return self._vocab.bos_id

    @property
    def eos_id(self) -> Optional[int]:
        return self._vocab.eos_id

    @property
    def add_bos(self) -> bool:
        return self._vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self._vocab.add_eos

    @property
    def eot_ids(self) -> FrozenSet[int]:
        """Ids that end a generation: EOS, EOT, and end-of-turn control tokens of the vocabulary."""
        return self._vocab.eog_ids

    def _check_id(self, token_id: int) -> int:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            try:
                token_id = int(token_id)  # numpy integers
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"token id must be an int, got {type(token_id).__name__}") from None
        if not 0 <= token_id < self._vocab.n_vocab:
            raise InvalidArgumentError(f"token id {token_id} is out of range [0, {self._vocab.n_vocab})")
        return token_id

    def token_text(self, token_id: int) -> str:
        """The vocabulary's string for this id (byte-level or ▁ spelling, as stored)."""
        return self._vocab.tokens[self._check_id(token_id)]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes the token stands for; control tokens give their text."""
        token_id = self._check_id(token_id)
        cached = self._token_bytes_cache[token_id]
        if cached is None:
            cached = self._model.token_bytes(token_id)
            self._token_bytes_cache[token_id] = cached
        return cached

    def is_control(self, token_id: int) -> bool:
        return bool(self._vocab.attrs[self._check_id(token_id)] & ATTR_CONTROL)

    def _is_special(self, token_id: int) -> bool:
        return bool(self._vocab.attrs[token_id] & (ATTR_CONTROL | ATTR_UNKNOWN))

    # -- encoding --------------------------------------------------------------

    def encode(self, text: Union[str, bytes], add_special: bool = True, parse_special: bool = False) -> List[int]:
        """Token ids for text. add_special: BOS/EOS as the vocabulary asks. parse_special:
        control-token strings in text become those tokens (leave off for user text)."""
        text = _clean_text(text)
        vocab = self._vocab
        matcher = self._special_matcher if parse_special else self._always_matcher
        fragments = matcher.partition(text) if matcher else ([text] if text else [])
        out: List[int] = []
        if add_special and vocab.add_bos:
            out.append(vocab.bos_id)
        after_special = True
        encode_raw = self._model.encode
        for fragment in fragments:
            if isinstance(fragment, str):
                out.extend(encode_raw(fragment, after_special))
                after_special = False
            else:
                out.append(fragment)
                after_special = True
        if add_special and vocab.add_eos:
            out.append(vocab.eos_id)
        return out

    # -- decoding --------------------------------------------------------------

    def _piece(self, token_id: int, skip_special: bool, at_start: bool) -> Tuple[bytes, bool]:
        """Bytes for one id in a sequence, and whether the next id is still 'at the start'."""
        token_id = self._check_id(token_id)
        if self._is_special(token_id):
            if at_start and token_id == self._vocab.bos_id:
                return (b"" if skip_special else self.token_bytes(token_id)), True
            return (b"" if skip_special else self.token_bytes(token_id)), False
        piece = self.token_bytes(token_id)
        if at_start and self._vocab.add_space_prefix and piece.startswith(b" "):
            piece = piece[1:]  # the space encode() put in front of the text
        return piece, False

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text for ids. Control tokens show their text unless skip_special. Byte sequences
        that are not UTF-8 become U+FFFD. With add_space_prefix vocabularies the space
        encode() added in front of the text is removed again."""
        pieces = []
        at_start = True
        for token_id in ids:
            piece, at_start = self._piece(token_id, skip_special, at_start)
            pieces.append(piece)
        return b"".join(pieces).decode("utf-8", errors="replace")

    def streaming_decoder(self, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special)

    def __repr__(self) -> str:
        v = self._vocab
        return (f"Tokenizer({v.model!r}, pre={v.pre!r}, n_vocab={v.n_vocab}, bos={v.bos_id}, "
                f"eos={v.eos_id}, add_bos={v.add_bos}, add_eos={v.add_eos})")
