"""SentencePiece-style vocabularies (Llama-2, TinyLlama, Gemma) as llama.cpp tokenizes them.

Spaces become "▁" (U+2581), optionally with one "▁" in front of the text
(add_space_prefix). Then, over the characters of the whole piece of text,
adjacent symbols are merged when their concatenation is a vocabulary token,
the pair whose token has the highest score first (leftmost on ties), until no
pair forms a token. Characters that are not tokens become byte tokens <0xNN>.

This is a BPE over scores. It equals SentencePiece's own BPE model exactly; a
SentencePiece *unigram* model (Viterbi over piece scores) can segment some
words differently (see tests/test_tokenizer_sentencepiece.py for the measured rate).

Speed: the merge cannot cross a position where the two characters around it
appear next to each other in no vocabulary token, so text is cut at such
positions before "▁" and each word is merged (and cached) on its own; the result
is identical to merging the whole text at once.
"""
from __future__ import annotations

import heapq
from functools import lru_cache
from typing import Dict, List, Optional, Set, Tuple

import regex

from ..errors import TokenizerError
from . import native_loops
from .vocab import ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED, Vocab

SPACE_MARK = "\u2581"
WORD_CACHE_SIZE = 1 << 17
_WORD_STARTS = regex.compile(f"(?<!{SPACE_MARK}){SPACE_MARK}")


def spm_merge(symbols: List[str], token_to_id: Dict[str, int], scores: List[float]) -> List[str]:
    """Merge adjacent symbols whose concatenation is a token, highest score first; the reference."""
    n = len(symbols)
    if n < 2:
        return list(symbols)
    text = list(symbols)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap: List[Tuple[float, int, int, int]] = []  # (-score, left, right, merged length)
    get = token_to_id.get
    for i in range(n - 1):
        merged = text[i] + text[i + 1]
        token_id = get(merged)
        if token_id is not None:
            heap.append((-scores[token_id], i, i + 1, len(merged)))
    heapq.heapify(heap)
    push, pop = heapq.heappush, heapq.heappop
    while heap:
        _, left, right, size = pop(heap)
        left_text, right_text = text[left], text[right]
        if not left_text or not right_text or len(left_text) + len(right_text) != size:
            continue  # stale: symbols only grow, so a changed side changes the size
        merged = left_text + right_text
        text[left] = merged
        text[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        before = prv[left]
        if before >= 0:
            candidate = text[before] + merged
            token_id = get(candidate)
            if token_id is not None:
                push(heap, (-scores[token_id], before, left, len(candidate)))
        after = nxt[left]
        if after >= 0:
            candidate = merged + text[after]
            token_id = get(candidate)
            if token_id is not None:
                push(heap, (-scores[token_id], left, after, len(candidate)))
    out = []
    i = 0
    while i >= 0:
        out.append(text[i])
        i = nxt[i]
    return out


class SPMModel:
    """SentencePiece-type vocabulary: encode raw text (no special tokens) to ids."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.token_to_id = vocab.token_to_id
        self.scores = vocab.scores
        self.add_space_prefix = vocab.add_space_prefix
        # Byte fallback ids, as llama.cpp finds them: "<0xNN>", else the one-byte string itself.
        self.byte_ids: List[Optional[int]] = []
        for b in range(256):
            token_id = self.token_to_id.get(f"<0x{b:02X}>")
            if token_id is None and b < 0x80:
                token_id = self.token_to_id.get(chr(b))
            self.byte_ids.append(token_id)
        # Pairs (a, "▁") that occur inside some token: a cut before "▁" is unsafe after such an a.
        self.joins_before_mark: Set[str] = set()
        for token in vocab.tokens:
            start = 1
            while True:
                pos = token.find(SPACE_MARK, start)
                if pos < 0:
                    break
                self.joins_before_mark.add(token[pos - 1])
                start = pos + 1
        self.encode_word = lru_cache(maxsize=WORD_CACHE_SIZE)(self._encode_word)
        self.use_native = native_loops.available()
        self._merger = None

    def _symbols_to_ids(self, pieces: List[str]) -> List[int]:
        ids = []
        get = self.token_to_id.get
        for piece in pieces:
            token_id = get(piece)
            if token_id is not None:
                ids.append(token_id)
                continue
            for byte in piece.encode("utf-8"):
                byte_id = self.byte_ids[byte]
                if byte_id is None:
                    raise TokenizerError(
                        f"character {piece!r} is not in the vocabulary and byte 0x{byte:02X} has no "
                        f"<0x{byte:02X}> token to fall back to"
                    )
                ids.append(byte_id)
        return ids

    def _encode_word(self, word: str) -> Tuple[int, ...]:
        return tuple(self._symbols_to_ids(spm_merge(list(word), self.token_to_id, self.scores)))

    def native_merger(self) -> "native_loops.NativeMerger":
        """The C merge table: every token keyed by its text, priority -score (highest score first)."""
        if self._merger is None:
            scores = self.scores
            entries = [(text, 0, -scores[token_id], token_id) for text, token_id in self.token_to_id.items()]
            self._merger = native_loops.NativeMerger(entries, split_keys=False)
        return self._merger

    def encode_long_word(self, word: str) -> List[int]:
        """A long word, uncached, merged in C when available (same ids as the Python path)."""
        if not self.use_native:
            return list(self._encode_word(word))
        ids, pieces = self.native_merger().merge(word)
        if not pieces:
            return ids
        out: List[int] = []
        for token_id, piece in zip(ids, pieces):
            out.extend([token_id] if token_id >= 0 else self._symbols_to_ids([piece.decode("utf-8")]))
        return out

    def escape(self, text: str, after_special: bool) -> str:
        if self.add_space_prefix and after_special:
            text = " " + text
        return text.replace(" ", SPACE_MARK)

    def words(self, escaped: str) -> List[str]:
        """Cut before "▁" wherever no token joins the two characters around the cut."""
        cuts = [0]
        joins = self.joins_before_mark
        for match in _WORD_STARTS.finditer(escaped):
            pos = match.start()
            if pos > 0 and escaped[pos - 1] not in joins:
                cuts.append(pos)
        cuts.append(len(escaped))
        return [escaped[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]

    def encode_reference(self, text: str, after_special: bool = True) -> List[int]:
        """The whole text merged at once, in Python, uncached: the reference for the fast path."""
        escaped = self.escape(text, after_special)
        return self._symbols_to_ids(spm_merge(list(escaped), self.token_to_id, self.scores))

    def encode(self, text: str, after_special: bool = True) -> List[int]:
        out: List[int] = []
        encode_word = self.encode_word
        long_word = native_loops.NATIVE_MIN_CHARS
        for word in self.words(self.escape(text, after_special)):
            out.extend(encode_word(word) if len(word) < long_word else self.encode_long_word(word))
        return out

    def token_bytes(self, token_id: int) -> bytes:
        attr = self.vocab.attrs[token_id]
        text = self.vocab.tokens[token_id]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if attr & ATTR_NORMAL:
            return text.replace(SPACE_MARK, " ").encode("utf-8")
        if attr & ATTR_BYTE:
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                try:
                    return bytes([int(text[3:5], 16)])
                except ValueError:
                    pass
            raise TokenizerError(f"byte token {token_id} has text {text!r}, expected <0xNN>")
        return b""  # unused and undefined tokens print nothing (as in llama.cpp)
