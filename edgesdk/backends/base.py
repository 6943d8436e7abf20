"""The one interface every backend fills: native (ours), llama.cpp, and later ONNX Runtime, CUDA.

A backend owns a loaded model's compute and its KV cache, nothing else:
tokenization, sampling, stop strings, chat templates and sessions live above
it (edgesdk.model, edgesdk.chat) and work the same on every backend.

The KV cache holds the tokens evaluated so far at positions 0..n_past-1.
`eval(ids, start)` first forgets every position >= start, then appends `ids`
at positions start, start+1, ...; so reusing a shared prefix is just calling
eval with start = length of that prefix.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np


@dataclass(frozen=True)
class BackendInfo:
    """What a loaded backend reports about itself (for `edgesdk info`, logs and benchmarks)."""
    name: str              # "native", "llamacpp", ...
    device: str            # "cpu (avx512, 2 threads)", "cuda:0", ...
    n_ctx: int
    n_vocab: int
    threads: int
    kv_type: str           # "f16", "q8_0", ...


class Backend(abc.ABC):
    """A model loaded for inference, with a KV cache of at most n_ctx positions."""

    name: ClassVar[str]

    n_ctx: int
    n_vocab: int

    @abc.abstractmethod
    def eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        """Evaluate ids at positions start.. after dropping cache positions >= start.

        Returns float32 logits: shape (n_vocab,) for the last id, or
        (len(ids), n_vocab) when all_logits is True. Raises ContextOverflowError
        when start + len(ids) > n_ctx and InvalidArgumentError for ids out of range.
        """

    @property
    @abc.abstractmethod
    def n_past(self) -> int:
        """Number of positions currently held in the KV cache."""

    @abc.abstractmethod
    def save_state(self) -> bytes:
        """The KV cache of positions 0..n_past-1, serialized (format private to the backend)."""

    @abc.abstractmethod
    def load_state(self, blob: bytes, n_past: int) -> None:
        """Restore a cache produced by save_state of the same model and backend.

        Raises SessionFileError when the blob does not restore n_past positions
        of this model, InvalidArgumentError for an n_past outside [0, n_ctx].
        """

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        ...

    def close(self) -> None:
        """Release native resources now rather than at garbage collection."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def available_backends() -> list[str]:
    """Backends whose libraries import on this machine."""
    names = ["native"]
    try:
        import llama_cpp  # noqa: F401
        names.append("llamacpp")
    except ImportError:
        pass
    return names


def check_ids(ids: Sequence[int], n_vocab: int) -> np.ndarray:
    """ids as int32 array, with every id in [0, n_vocab); raises InvalidArgumentError otherwise."""
    from ..errors import InvalidArgumentError

    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidArgumentError(f"ids must be a non-empty 1-D sequence of token ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidArgumentError(f"ids must be integers, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= n_vocab))
    if bad.size:
        raise InvalidArgumentError(
            f"token id {int(arr[bad[0]])} at index {int(bad[0])} is out of range [0, {n_vocab})"
        )
    return arr.astype(np.int32, copy=False)


__all__ = ["Backend", "BackendInfo", "available_backends", "check_ids"]
