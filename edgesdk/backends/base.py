"""The one interface every backend fills: native (ours), cuda (ours, on NVIDIA GPUs), llama.cpp, ONNX Runtime.

A backend is one class in one file of this package, registered by name with
`@register` (edgesdk/backends/__init__.py). Its class answers, before anything
is loaded:
  available()                   whether its library can run here, and why not
  check(source, config)         whether it runs this model with these settings:
                                the backend's checked view of the model, reused below
  memory_parts(checked, config) the bytes it will hold, part by part (edgesdk.memory)
  plan_budget(checked, host)    the memory.Budget those parts must fit: this machine's, unless the
                                backend's memory is a discrete GPU's
  open(checked, config)         the loaded backend
`config` is the LoadConfig with n_ctx and threads resolved.

A loaded backend owns a model's compute and its KV cache, nothing else:
tokenization, sampling, stop strings, chat templates and sessions live above
it (edgesdk.model, edgesdk.chat) and work the same on every backend.

The KV cache holds the tokens evaluated so far at positions 0..n_past-1.
`eval(ids, start)` first forgets every position >= start, then appends `ids`
at positions start, start+1, ...; so reusing a shared prefix is just calling
eval with start = length of that prefix.

Several sequences: a backend opened with config.n_seq = N holds N independent
caches (sequences 0..N-1, each of n_ctx positions). `eval_batch` advances
several of them in one engine step, so a weight read serves every sequence in
the step (generation is bandwidth-bound: N streams cost little more than one).
`eval`, `n_past`, `save_state` and `load_state` are sequence 0's. A backend that
holds one sequence only keeps `max_seqs = 1`; the default eval_batch serves it.

Workers: a backend with `takes_workers` places layers on other devices
(config.workers, `edgesdk worker`s): `probe_workers(endpoints)` asks what each
offers, `plan_split(checked, config, offered)` gives the memory.SplitPlan
(MemoryBudgetError when they cannot hold the model) and `open_split(checked,
config, split)` loads it; `memory_parts` is then the host's share only.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
import struct
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import gguf
from ..config import LoadConfig
from ..errors import ContextOverflowError, InvalidArgumentError, SessionFileError
from ..shape import ModelShape


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run on this machine; `reason` says why not and what to install."""
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class ModelSource:
    """An opened model as every backend's check() receives it."""
    path: Path
    file: gguf.GGUFFile
    shape: ModelShape


@dataclass(frozen=True)
class BackendInfo:
    """What a loaded backend reports about itself (for `edgesdk info`, logs and benchmarks)."""
    name: str              # "native", "llamacpp", ...
    device: str            # "cpu (avx512, 2 threads)", "cuda:0", ...
    n_ctx: int
    n_vocab: int
    threads: int
    kv_type: str           # "f16", "q8_0", ...


@dataclass(frozen=True)
class SeqInput:
    """One sequence's part of an eval_batch step: ids written at positions start.. of sequence seq."""
    seq: int
    ids: Sequence[int]
    start: int


class Backend(abc.ABC):
    """A model loaded for inference, with a KV cache of at most n_ctx positions."""

    name: ClassVar[str]
    description: ClassVar[str]
    kv_types: ClassVar[Tuple[str, ...]]      # KV cache types it stores (a subset of config.KV_CACHE_TYPES)
    options: ClassVar[Tuple[str, ...]] = ()  # LoadConfig.options names it takes
    # Where backend="auto" tries it: lower first; None: only when asked for by name.
    auto_rank: ClassVar[Optional[int]] = None
    # Whether the backend keeps the GGUFFile it was checked with open (it reads weights from it).
    keeps_file: ClassVar[bool] = False
    # Most sequences (config.n_seq) it can hold at once; check() refuses more.
    max_seqs: ClassVar[int] = 1
    # Whether it can put layers on workers (config.workers; see the module docstring).
    takes_workers: ClassVar[bool] = False

    n_ctx: int
    n_vocab: int

    # -- the class: before loading --------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def available(cls) -> Availability:
        """Whether this backend's library imports and can run here (cheap: no model is read)."""

    @classmethod
    def check(cls, source: ModelSource, config: LoadConfig) -> Any:
        """The backend's checked view of the model; UnsupportedModelError/ModelFormatError/
        InvalidArgumentError when it cannot run it with these settings. The default checks the
        KV type and options; backends extend it."""
        check_common_settings(cls, config)
        return source

    @classmethod
    @abc.abstractmethod
    def memory_parts(cls, checked: Any, config: LoadConfig) -> Dict[str, int]:
        """Bytes it will hold for n_ctx = config.n_ctx and config.kv_type: edgesdk.memory.PART_NAMES
        and "address_space"."""

    @classmethod
    def plan_budget(cls, checked: Any, host: Any) -> Any:
        """The memory.Budget its plan is checked against, given this machine's: that one, unless the
        backend's memory is elsewhere (a discrete GPU's)."""
        return host

    @classmethod
    @abc.abstractmethod
    def open(cls, checked: Any, config: LoadConfig) -> "Backend":
        """Load the checked model with a resolved config (n_ctx and threads set)."""

    # -- a loaded backend -------------------------------------------------------------

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

    # -- several sequences ------------------------------------------------------------

    @property
    def n_seq(self) -> int:
        """Sequences this loaded backend holds (config.n_seq)."""
        return 1

    def eval_batch(self, entries: Sequence[SeqInput]) -> List[np.ndarray]:
        """One engine step over several sequences, each at most once: entry i's ids go to positions
        entries[i].start.. of its sequence after that sequence forgets positions >= start. Returns
        each entry's last-token float32 logits (n_vocab,). Errors as eval's, plus
        InvalidArgumentError for a sequence outside [0, n_seq) or named twice.
        The default, for backends holding one sequence, is eval."""
        check_seq_inputs(entries, self.n_seq)
        return [self.eval(e.ids, e.start) for e in entries]

    def seq_n_past(self, seq: int) -> int:
        """Positions held in sequence seq's cache."""
        check_seq_inputs([SeqInput(seq, (0,), 0)], self.n_seq)
        return self.n_past

    def copy_seq(self, src: int, dst: int, n: int) -> None:
        """Make sequence dst hold sequence src's first n positions (a shared prompt prefix is
        computed once); dst forgets what it held. InvalidArgumentError when n > seq_n_past(src)."""
        check_seq_inputs([SeqInput(src, (0,), 0), SeqInput(dst, (0,), 0)] if src != dst
                         else [SeqInput(src, (0,), 0)], self.n_seq)
        if n > self.seq_n_past(src):
            raise InvalidArgumentError(f"sequence {src} holds {self.seq_n_past(src)} positions, not {n}")

    def abort(self) -> bool:
        """Ask an eval running on another thread to stop soon (the native engine: after the layer it
        is in); that eval then raises CancelledError. False when this backend cannot: its evals
        run to the end, and a cancel is seen between them."""
        return False

    def close(self) -> None:
        """Release native resources now rather than at garbage collection."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_seq_inputs(entries: Sequence[SeqInput], n_seq: int) -> None:
    """InvalidArgumentError unless every entry names a sequence in [0, n_seq), each at most once."""
    if not entries:
        raise InvalidArgumentError("eval_batch needs at least one sequence")
    seen = set()
    for e in entries:
        if not isinstance(e, SeqInput):
            raise InvalidArgumentError(f"eval_batch takes SeqInput entries, got {type(e).__name__}")
        if isinstance(e.seq, bool) or not isinstance(e.seq, int) or not 0 <= e.seq < n_seq:
            raise InvalidArgumentError(f"sequence {e.seq!r} is outside [0, {n_seq})")
        if e.seq in seen:
            raise InvalidArgumentError(f"sequence {e.seq} appears twice in one eval_batch step")
        seen.add(e.seq)


def check_common_settings(cls, config: LoadConfig) -> None:
    """The KV type and options a backend class declares; InvalidArgumentError naming its own choices."""
    if config.kv_type not in cls.kv_types:
        raise InvalidArgumentError(f"kv_type {config.kv_type!r} is not supported by the {cls.name} backend; "
                                   f"it stores {', '.join(cls.kv_types)}")
    unknown = sorted(set(config.options) - set(cls.options))
    if unknown:
        known = ", ".join(cls.options) or "none"
        raise InvalidArgumentError(f"the {cls.name} backend has no option(s) {', '.join(unknown)}; it takes {known}")
    if config.workers and not cls.takes_workers:
        raise InvalidArgumentError(f"the {cls.name} backend cannot use workers; the llamacpp backend can "
                                   f"(backend=\"llamacpp\")")
    if config.n_seq > cls.max_seqs:
        raise InvalidArgumentError(f"n_seq {config.n_seq}: the {cls.name} backend holds at most "
                                   f"{cls.max_seqs} sequence{'s' if cls.max_seqs != 1 else ''}")


def check_start(start: Any, n_new: int, n_past: int, n_ctx: int, where: str = "") -> None:
    """eval's start: an int in [0, n_past] (InvalidArgumentError) with room for n_new tokens before n_ctx
    (ContextOverflowError); `where` ends the messages (" of sequence 3")."""
    if not isinstance(start, (int, np.integer)) or isinstance(start, bool) or start < 0:
        raise InvalidArgumentError(f"start must be a non-negative integer, got {start!r}")
    if start > n_past:
        raise InvalidArgumentError(f"start {start} is past the {n_past} cached positions{where}")
    if start + n_new > n_ctx:
        raise ContextOverflowError(
            f"{start} cached + {n_new} new tokens = {start + n_new} exceeds the context of {n_ctx}{where}")


def check_state(blob: bytes, n_past: Any, n_ctx: int, header: "struct.Struct", expected: Callable[[int], bytes],
                payload_bytes: Callable[[int], int], mismatch: Callable[[tuple], str]) -> int:
    """The offset of a load_state blob's payload once it is known to restore n_past positions:
    InvalidArgumentError for n_past outside [0, n_ctx], SessionFileError for a short blob, a header
    other than expected(n_past) (mismatch(saved fields) says how) or a payload of the wrong size."""
    if not isinstance(n_past, (int, np.integer)) or isinstance(n_past, bool) or not 0 <= n_past <= n_ctx:
        raise InvalidArgumentError(f"n_past {n_past!r} must be in [0, {n_ctx}]")
    head = header.size
    if len(blob) < head:
        raise SessionFileError(f"KV state is {len(blob)} bytes, shorter than its {head}-byte header")
    if bytes(blob[:head]) != expected(int(n_past)):
        raise SessionFileError("KV state does not belong to this model/settings: "
                               + mismatch(header.unpack(bytes(blob[:head]))))
    size = payload_bytes(int(n_past))
    if len(blob) - head != size:
        raise SessionFileError(f"KV state holds {len(blob) - head} bytes, {n_past} positions need {size}")
    return head


def threads_text(threads: int) -> str:
    return f"{threads} thread{'s' if threads != 1 else ''}"


def resolved(config: LoadConfig) -> Tuple[int, int]:
    """(n_ctx, threads) of a config that load() has resolved; InvalidArgumentError otherwise."""
    if config.n_ctx is None or config.threads is None:
        raise InvalidArgumentError("a backend is opened with n_ctx and threads chosen (edgesdk.load does that)")
    return config.n_ctx, config.threads


def check_ids(ids: Sequence[int], n_vocab: int) -> np.ndarray:
    """ids as int32 array, with every id in [0, n_vocab); raises InvalidArgumentError otherwise."""
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


__all__ = ["Availability", "Backend", "BackendInfo", "ModelSource", "check_common_settings", "check_ids", "check_start", "check_state",
           "resolved", "threads_text"]
