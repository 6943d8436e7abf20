"""Byte-level BPE (GPT-2 family): bytes as printable characters, merges by rank.

A word from the pre-tokenizer is turned into its UTF-8 bytes, each byte shown as
one character (GPT-2's byte-to-unicode table), then adjacent pairs are merged,
lowest merge rank first and leftmost first among equal ranks, until no listed
pair remains. A heap keeps that O(n log n) even for one multi-megabyte word.
The final pieces are token ids; a piece that is not in the vocabulary falls
back to its single-character tokens (as llama.cpp does).

Words repeat in real text, so results are cached per word (bounded LRU).
"""
from __future__ import annotations

import heapq
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

from . import native_loops
from .pretokenize import pre_tokenizer
from .vocab import Vocab

WORD_CACHE_SIZE = 1 << 17  # distinct words kept; ~30 MB at worst for typical word lengths


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's table: printable Latin-1 bytes stand for themselves, the rest map to U+0100 upward."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
# str.translate table: a Latin-1-decoded byte string -> its byte-level characters.
_LATIN1_TO_BYTE_CHARS = {b: c for b, c in BYTE_TO_CHAR.items()}


def byte_level(text: str) -> str:
    """The byte-level spelling of text: one character per UTF-8 byte."""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)


def parse_merges(merges: Sequence[str]) -> Dict[Tuple[str, str], int]:
    """'left right' lines -> rank; the first occurrence of a pair keeps its rank."""
    ranks: Dict[Tuple[str, str], int] = {}
    for rank, line in enumerate(merges):
        # Split at the first space after the first character: a left part may itself be a space.
        pos = line.find(" ", 1)
        pair = (line[:pos], line[pos + 1:]) if pos >= 0 else ("", "")
        if pair not in ranks:
            ranks[pair] = rank
    return ranks


def bpe_merge(symbols: List[str], ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """Merge adjacent symbols by rank (lowest first, leftmost on ties); the reference algorithm."""
    n = len(symbols)
    if n < 2:
        return list(symbols)
    text = list(symbols)          # text[i]: current text of symbol i ("" once merged away)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap: List[Tuple[int, int, int, str]] = []
    get = ranks.get
    for i in range(n - 1):
        rank = get((text[i], text[i + 1]))
        if rank is not None:
            heap.append((rank, i, i + 1, text[i] + text[i + 1]))
    heapq.heapify(heap)
    push, pop = heapq.heappush, heapq.heappop
    while heap:
        rank, left, right, merged = pop(heap)
        if not text[left] or not text[right] or text[left] + text[right] != merged:
            continue  # stale: one side changed since this pair was queued
        text[left] = merged
        text[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        before = prv[left]
        if before >= 0:
            rank = get((text[before], merged))
            if rank is not None:
                push(heap, (rank, before, left, text[before] + merged))
        after = nxt[left]
        if after >= 0:
            rank = get((merged, text[after]))
            if rank is not None:
                push(heap, (rank, left, after, merged + text[after]))
    out = []
    i = 0
    while i >= 0:
        out.append(text[i])
        i = nxt[i]
    return out


class BPEModel:
    """Byte-level BPE over a checked Vocab: encode raw text (no special tokens) to ids."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.ranks = parse_merges(vocab.merges or [])
        self.token_to_id = vocab.token_to_id
        self.split_words = pre_tokenizer(vocab.pre)
        # llama.cpp: for these pre-tokenizers a word that is itself a token is never merged further.
        self.ignore_merges = vocab.pre in ("llama3", "llama-v3", "llama-bpe", "falcon3", "tekken")
        self.encode_word = lru_cache(maxsize=WORD_CACHE_SIZE)(self._encode_word)
        # Ranks travel to C as float32: exact below 2**24 merges.
        self.use_native = native_loops.available() and len(self.ranks) < (1 << 24)
        self._merger = None

    def _pieces_to_ids(self, pieces: List[str]) -> List[int]:
        ids = []
        token_to_id = self.token_to_id
        for piece in pieces:
            token_id = token_to_id.get(piece)
            if token_id is not None:
                ids.append(token_id)
                continue
            # Not a token: fall back to single characters that are (llama.cpp looks up each
            # UTF-8 byte of the piece as a one-byte string, so only ASCII can match).
            for byte in piece.encode("utf-8"):
                if byte < 0x80:
                    single = token_to_id.get(chr(byte))
                    if single is not None:
                        ids.append(single)
        return ids

    def _encode_word(self, word: str) -> Tuple[int, ...]:
        chars = byte_level(word)
        if self.ignore_merges:
            token_id = self.token_to_id.get(chars)
            if token_id is not None:
                return (token_id,)
        return tuple(self._pieces_to_ids(bpe_merge(list(chars), self.ranks)))

    def native_merger(self) -> "native_loops.NativeMerger":
        """The C merge table: every token (split 0) and every merge (split = left byte length)."""
        if self._merger is None:
            token_to_id = self.token_to_id
            entries = [(text, 0, 0.0, token_id) for text, token_id in token_to_id.items()]
            entries += [(left + right, len(left.encode("utf-8")), float(rank), token_to_id.get(left + right, -1))
                        for (left, right), rank in self.ranks.items() if left and right]
            self._merger = native_loops.NativeMerger(entries, split_keys=True)
        return self._merger

    def encode_long_word(self, word: str) -> List[int]:
        """A long word, uncached, merged in C when available (same ids as the Python path)."""
        if not self.use_native:
            return list(self._encode_word(word))
        chars = byte_level(word)
        if self.ignore_merges and chars in self.token_to_id:
            return [self.token_to_id[chars]]
        ids, pieces = self.native_merger().merge(chars)
        if not pieces:
            return ids
        out: List[int] = []
        for token_id, piece in zip(ids, pieces):
            out.extend([token_id] if token_id >= 0 else self._pieces_to_ids([piece.decode("utf-8")]))
        return out

    def encode_reference(self, text: str) -> List[int]:
        """Pure-Python path, uncached: the reference the native path is tested against."""
        out: List[int] = []
        for word in self.split_words(text):
            chars = byte_level(word)
            if self.ignore_merges and chars in self.token_to_id:
                out.append(self.token_to_id[chars])
                continue
            out.extend(self._pieces_to_ids(bpe_merge(list(chars), self.ranks)))
        return out

    def encode(self, text: str, after_special: bool = False) -> List[int]:
        out: List[int] = []
        extend = out.extend
        encode_word = self.encode_word
        long_word = native_loops.NATIVE_MIN_CHARS
        for word in self.split_words(text):
            extend(encode_word(word) if len(word) < long_word else self.encode_long_word(word))
        return out

    def token_bytes(self, token_id: int) -> bytes:
        text = self.vocab.tokens[token_id]
        try:
            return bytes(CHAR_TO_BYTE[c] for c in text)
        except KeyError:
            # A character outside the byte table (malformed vocabulary): keep its UTF-8.
            return b"".join(bytes([CHAR_TO_BYTE[c]]) if c in CHAR_TO_BYTE else c.encode("utf-8") for c in text)
