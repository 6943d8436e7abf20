"""The pair-merge loop in C (native/src/tokenize.c) for long words.

Short words are merged in Python (bpe.py, spm.py) and cached; a long word (one
run of letters, or text without spaces) goes to C, where the heap-based merge
is O(n log n) in time and O(n) in memory, so a 10 MB word takes seconds,
not minutes. Both paths give identical ids (tests/test_tokenizer_native.py).

The C table (every token, and for BPE every merge) is built on first use, so
loading a tokenizer stays fast for text that never needs it.
"""
from __future__ import annotations

import ctypes
from typing import Iterable, List, Tuple

import numpy as np

from ..errors import InvalidArgumentError

# Words with at least this many characters go to C when the native library is there.
NATIVE_MIN_CHARS = 48
MAX_WORD_BYTES = (1 << 31) - 1  # the C loop indexes bytes with int32


def _library():
    try:
        from .. import _native
    except Exception:  # no built library: the Python path is complete on its own
        return None
    return _native if hasattr(_native.lib, "ek_tok_merge") else None


class NativeMerger:
    """One C merge table and the call that merges a word with it."""

    def __init__(self, entries: Iterable[Tuple[str, int, float, int]], split_keys: bool):
        native = _library()
        if native is None:
            raise InvalidArgumentError("the native library has no tokenizer loop (rebuild with setup.py)")
        self._native = native
        self._split_keys = 1 if split_keys else 0
        keys, splits, priorities, ids = [], [], [], []
        for text, split, priority, token_id in entries:
            keys.append(text.encode("utf-8"))
            splits.append(split)
            priorities.append(priority)
            ids.append(token_id)
        blob = b"".join(keys)
        offsets = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum([len(k) for k in keys], out=offsets[1:])
        splits_arr = np.asarray(splits, dtype=np.int32)
        priorities_arr = np.asarray(priorities, dtype=np.float32)
        ids_arr = np.asarray(ids, dtype=np.int32)
        handle = ctypes.c_void_p()
        lib = native.lib
        native.check(lib.ek_tok_table_create(
            blob, offsets.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
            splits_arr.ctypes.data_as(native.c_int32_p), priorities_arr.ctypes.data_as(native.c_float_p),
            ids_arr.ctypes.data_as(native.c_int32_p), len(keys), ctypes.byref(handle)), "ek_tok_table_create")
        self._handle = handle
        self._free = lib.ek_tok_table_free

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle:
            self._free(handle)
            self._handle = None

    def merge(self, word: str) -> Tuple[List[int], List[bytes]]:
        """Final symbols of word: (token ids, -1 where not a token; their bytes)."""
        data = word.encode("utf-8")
        if len(data) > MAX_WORD_BYTES:
            raise InvalidArgumentError(f"one word of {len(data)} bytes exceeds the limit of {MAX_WORD_BYTES}")
        raw = np.frombuffer(data, dtype=np.uint8)
        starts = np.flatnonzero((raw & 0xC0) != 0x80)
        symbol_bytes = np.diff(np.append(starts, len(data))).astype(np.int32)
        n = len(symbol_bytes)
        out_ids = np.empty(n, dtype=np.int32)
        out_bytes = np.empty(n, dtype=np.int32)
        n_out = ctypes.c_int32()
        native = self._native
        native.check(native.lib.ek_tok_merge(
            self._handle, self._split_keys, data, symbol_bytes.ctypes.data_as(native.c_int32_p), n,
            out_ids.ctypes.data_as(native.c_int32_p), out_bytes.ctypes.data_as(native.c_int32_p),
            ctypes.byref(n_out)), "ek_tok_merge")
        ids = out_ids[:n_out.value].tolist()
        if -1 not in ids:
            return ids, []
        ends = np.cumsum(out_bytes[:n_out.value]).tolist()
        pieces = [data[a:b] for a, b in zip([0] + ends[:-1], ends)]
        return ids, pieces


def available() -> bool:
    return _library() is not None
