"""Continuous batching: many generations at once over one Model's backend.

    model = edgesdk.load("smollm2-135m-instruct", n_seq=4)
    with BatchScheduler(model) as scheduler:
        answer = scheduler.submit(prompt_ids, model.generation)   # QueueFullError when the queue is full
        for piece in answer:
            print(piece, end="")

One worker thread owns the backend (Model.exclusive_backend: the Model's own
calls wait until the scheduler closes). A request takes one of the backend's
n_seq sequences, or waits in a bounded queue until one is free. Each step is
one eval_batch: the next token of every sequence that is answering, plus a
chunk of the prompt of each sequence still reading its prompt, at most
`prompt_tokens_per_step` prompt ids in all, so a long prompt arriving delays
the running answers by a chunk per step, never by its whole length.

Each answer is sampled by its own Sampler (its own seed) and turned into text
by edgesdk.generation.Continuation, the same code Model.generate runs, so one
request answers here exactly as it would alone: end-of-turn ids, stop
strings, max_tokens, the context's end and cancel all behave the same.

Prefix reuse: the scheduler remembers which ids each sequence's cache holds,
also after its request finished. A new request takes the free sequence whose
cache shares the longest prefix with its prompt; when another sequence (busy
or not) shares a longer one, that prefix is copied over (copy_seq) instead of
being evaluated again: the same system prompt is read once.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Deque, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .backends.base import SeqInput, check_ids
from .config import check_positive_int
from .errors import (ContextOverflowError, EdgeSDKError, InvalidArgumentError, NumericError, QueueFullError,
                     SchedulerClosedError)
from .generation import Continuation, GenerationConfig, GenerationStats
from .sampling import Sampler

if TYPE_CHECKING:
    from .model import Model

log = logging.getLogger("edgesdk.batching")

DEFAULT_MAX_QUEUE = 16
DEFAULT_PROMPT_TOKENS_PER_STEP = 128
RATE_WINDOW_S = 10.0        # the window of tokens_per_s
RETRY_AFTER_RANGE_S = (1, 60)

# What a Generation's listener receives: ("piece", str), ("done", GenerationStats), ("error", Exception).
Event = Tuple[str, object]


class Generation:
    """One submitted request: its text pieces as they come, then `stats`.

    Iterate it (blocking) for the pieces, or give submit() an `on_event`
    listener, called on the worker thread with each Event (it must not block).
    A failure after submit (the backend failed, the scheduler closed) is raised
    by the iteration, or sent as an "error" event.
    """

    _ids = itertools.count(1)

    def __init__(self, ids: List[int], config: GenerationConfig, cancel: threading.Event,
                 on_event: Optional[Callable[[Event], None]]):
        self.id = next(self._ids)
        self.ids = ids
        self.config = config
        self.cancel_event = cancel
        self.stats = GenerationStats(prompt_tokens=len(ids))
        self.submitted = time.perf_counter()
        self.error: Optional[BaseException] = None
        self.finished = threading.Event()
        self._events: "queue.SimpleQueue[Event]" = queue.SimpleQueue()
        self._listened = on_event is not None
        self._on_event = on_event if on_event is not None else self._events.put

    def cancel(self) -> None:
        """Stop at the next step (finish reason "cancelled"); safe from any thread."""
        self.cancel_event.set()

    def __iter__(self) -> Iterator[str]:
        if self._listened:
            raise InvalidArgumentError("this generation sends its events to its on_event listener")
        while True:
            kind, value = self._events.get()
            if kind == "piece":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def text(self) -> str:
        """The whole answer (blocks until it is finished)."""
        return "".join(self)

    def _emit(self, kind: str, value: object) -> None:
        if kind == "done" or kind == "error":
            if kind == "error":
                self.error = value
            self.finished.set()
        try:
            self._on_event((kind, value))
        except Exception:      # the listener is gone (its event loop closed): nobody reads on
            log.warning("generation %d: its listener failed; cancelling it", self.id, exc_info=True)
            self.cancel_event.set()


@dataclass
class _Slot:
    """A generation holding a sequence: reading its prompt (continuation None) or answering."""
    generation: Generation
    seq: int
    pos: int                    # prompt ids evaluated so far (or found in the cache)
    sampler: Sampler
    started: float
    continuation: Optional[Continuation] = None


@dataclass
class SchedulerCounters:
    """Totals since the scheduler started (what /metrics reports)."""
    requests_finished: int = 0
    requests_failed: int = 0
    requests_rejected: int = 0
    prompt_tokens: int = 0          # prompt ids of finished requests
    reused_tokens: int = 0          # of those, found in a cache (own or copied) and not evaluated
    completion_tokens: int = 0      # tokens generated
    steps: int = 0                  # eval_batch calls


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class BatchScheduler:
    """Generations for many callers over one Model, batched into shared engine steps (see the module)."""

    def __init__(self, model: "Model", max_queue: int = DEFAULT_MAX_QUEUE,
                 prompt_tokens_per_step: int = DEFAULT_PROMPT_TOKENS_PER_STEP):
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise InvalidArgumentError(f"max_queue must be an int >= 0, got {max_queue!r}")
        self.model = model
        self.max_queue = max_queue
        self.prompt_tokens_per_step = check_positive_int("prompt_tokens_per_step", prompt_tokens_per_step)
        self.n_seq = model.backend.n_seq
        self.n_ctx = model.n_ctx
        self.counters = SchedulerCounters()
        self._cond = threading.Condition()
        self._waiting: Deque[Generation] = deque()
        self._slots: List[Optional[_Slot]] = [None] * self.n_seq
        self._held: List[List[int]] = [[] for _ in range(self.n_seq)]   # ids each sequence's cache holds
        self._closing = False
        self._recent: Deque[Tuple[float, int]] = deque()   # (time, tokens generated) per step, RATE_WINDOW_S
        self._mean_request_s = 1.0
        self._started = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._worker = threading.Thread(target=self._run, name="edgesdk-batching", daemon=True)
        self._worker.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    # -- callers ------------------------------------------------------------------------

    def submit(self, ids: Sequence[int], config: GenerationConfig, cancel: Optional[threading.Event] = None,
               on_event: Optional[Callable[[Event], None]] = None) -> Generation:
        """Queue a generation for prompt ids; QueueFullError (with retry_after_s) when max_queue wait already."""
        if not isinstance(config, GenerationConfig):
            raise InvalidArgumentError(f"config must be a GenerationConfig, got {type(config).__name__}")
        ids = [int(i) for i in check_ids(ids, self.model.n_vocab)] if len(ids) else []
        if not ids:
            raise InvalidArgumentError("the prompt is empty")
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt has {len(ids)} tokens; the context holds {self.n_ctx}, "
                                       "leaving no room for an answer")
        if cancel is not None and not hasattr(cancel, "is_set"):
            raise InvalidArgumentError(f"cancel must be a threading.Event, got {type(cancel).__name__}")
        generation = Generation(ids, config, cancel if cancel is not None else threading.Event(), on_event)
        Sampler(config.sampling, config.seed)      # seed errors now, in the caller's thread
        with self._cond:
            if self._closing:
                raise SchedulerClosedError("the scheduler is closed")
            busy = sum(s is not None for s in self._slots)
            if busy + len(self._waiting) >= self.n_seq:
                self._drop_cancelled_waiting()
            if busy + len(self._waiting) >= self.n_seq + self.max_queue:
                self.counters.requests_rejected += 1
                raise QueueFullError(f"all {self.n_seq} sequences are busy and {len(self._waiting)} requests wait "
                                     f"(at most {self.max_queue})", self._retry_after_s())
            self._waiting.append(generation)
            self._cond.notify()
        return generation

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a sequence."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Requests holding a sequence now."""
        return sum(s is not None for s in self._slots)

    @property
    def tokens_per_s(self) -> float:
        """Tokens generated per second, all requests together, over the last RATE_WINDOW_S."""
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= RATE_WINDOW_S]
        return sum(n for _, n in recent) / RATE_WINDOW_S if recent else 0.0

    def close(self) -> None:
        """Stop: waiting requests fail with SchedulerClosedError, running ones end "cancelled"."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._worker is not threading.current_thread():
            self._worker.join()

    def __enter__(self) -> "BatchScheduler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the worker ---------------------------------------------------------------------

    def _retry_after_s(self) -> int:
        low, high = RETRY_AFTER_RANGE_S
        estimate = self._mean_request_s * (len(self._waiting) + 1) / self.n_seq
        return int(min(max(np.ceil(estimate), low), high))

    def _drop_cancelled_waiting(self) -> None:
        for generation in [g for g in self._waiting if g.cancel_event.is_set()]:
            self._waiting.remove(generation)
            generation.stats.finish_reason = "cancelled"
            generation._emit("done", generation.stats)

    def _run(self) -> None:
        try:
            with self.model.exclusive_backend() as backend:
                self._backend = backend
                self._started.set()
                self._loop()
        except BaseException as exc:    # the lock could not be taken, or the loop broke: nobody may hang
            if not self._started.is_set():
                self._start_error = exc
                self._started.set()
                return
            log.exception("batching worker stopped")
            self._fail_everything(exc)
            raise

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._waiting and self.active == 0:
                    self._cond.wait()
                if self._closing:
                    break
                admitted = []
                free = [seq for seq, slot in enumerate(self._slots) if slot is None]
                while free and self._waiting:
                    generation = self._waiting.popleft()
                    admitted.append(generation)
                    free.pop()
            for generation in admitted:
                self._admit(generation)
            if self.active:
                self._step()
        self._fail_everything(SchedulerClosedError("the scheduler closed before this request was answered"))

    def _fail_everything(self, error: BaseException) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for generation in waiting:
            generation._emit("error", error)
        for slot in self._slots:
            if slot is not None:
                self._finish(slot, "cancelled")

    def _admit(self, generation: Generation) -> None:
        now = time.perf_counter()
        stats = generation.stats
        stats.queued_s = now - generation.submitted
        if generation.cancel_event.is_set():
            stats.finish_reason = "cancelled"
            generation._emit("done", stats)
            return
        ids = generation.ids
        limit = len(ids) - 1        # the last prompt id is always evaluated: its logits are needed
        shared = [min(_common_prefix(held, ids), limit) for held in self._held]
        free = [seq for seq, slot in enumerate(self._slots) if slot is None]
        # The free sequence sharing the most; among equals the one holding least (keep others' caches).
        seq = max(free, key=lambda s: (shared[s], -len(self._held[s])))
        source = max(range(self.n_seq), key=lambda s: shared[s])
        reused = shared[seq]
        if shared[source] > reused:
            try:
                self._backend.copy_seq(source, seq, shared[source])
                self._held[seq] = self._held[source][:shared[source]]
                reused = shared[source]
            except EdgeSDKError as exc:
                log.warning("copying sequence %d's prefix to %d failed (%s); evaluating it instead", source, seq, exc)
        stats.reused_tokens = reused
        self._slots[seq] = _Slot(generation, seq, reused, Sampler(generation.config.sampling, generation.config.seed),
                                 now)

    def _step(self) -> None:
        entries: List[SeqInput] = []
        owners: List[_Slot] = []
        budget = self.prompt_tokens_per_step
        for slot in sorted((s for s in self._slots if s is not None), key=lambda s: s.generation.id):
            if slot.continuation is not None:
                entries.append(SeqInput(slot.seq, [slot.continuation.next_token], slot.continuation.n_held - 1))
                owners.append(slot)
            elif slot.generation.cancel_event.is_set():
                self._finish(slot, "cancelled")
            elif budget > 0:
                chunk = slot.generation.ids[slot.pos:slot.pos + budget]
                budget -= len(chunk)
                entries.append(SeqInput(slot.seq, chunk, slot.pos))
                owners.append(slot)
        if not entries:
            return
        for entry in entries:       # record the truncation first: a failed step leaves no more than we know
            self._held[entry.seq] = self._held[entry.seq][:entry.start]
        try:
            rows = self._backend.eval_batch(entries)
        except Exception as exc:
            log.warning("an engine step over %d sequences failed: %s", len(entries), exc)
            for slot in owners:
                self._fail(slot, exc)
            return
        self.counters.steps += 1
        generated = 0
        for slot, entry, logits in zip(owners, entries, rows):
            self._held[entry.seq].extend(int(i) for i in entry.ids)
            if not np.isfinite(logits).all():
                self._fail(slot, NumericError(
                    f"{self.model.name}: the model produced non-finite logits (NaN or infinity) at positions "
                    f"{entry.start}..{entry.start + len(entry.ids) - 1}: its weights or hyperparameters are broken"))
                continue
            stats = slot.generation.stats
            if slot.continuation is None:
                slot.pos += len(entry.ids)
                if slot.pos < len(slot.generation.ids):
                    continue
                stats.prefill_s = time.perf_counter() - slot.started
                slot.continuation = Continuation(self.model.tokenizer, slot.sampler, slot.generation.config, stats,
                                                 len(slot.generation.ids), self.n_ctx, slot.started)
            before = stats.completion_tokens
            try:
                text = slot.continuation.step(logits, slot.generation.cancel_event)
                if text:
                    slot.generation._emit("piece", text)
                if slot.continuation.done:
                    tail = slot.continuation.finish()
                    if tail:
                        slot.generation._emit("piece", tail)
            except Exception as exc:       # the tokenizer failed: this request only
                self._fail(slot, exc)
                continue
            generated += stats.completion_tokens - before
            if slot.continuation.done:
                self._finish(slot, None)
        now = time.perf_counter()
        self.counters.completion_tokens += generated
        self._recent.append((now, generated))
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()

    def _release(self, slot: _Slot) -> None:
        with self._cond:
            self._slots[slot.seq] = None
        stats = slot.generation.stats
        stats.total_s = time.perf_counter() - slot.started
        self._mean_request_s = 0.8 * self._mean_request_s + 0.2 * (stats.queued_s + stats.total_s)

    def _finish(self, slot: _Slot, reason: Optional[str]) -> None:
        self._release(slot)
        stats = slot.generation.stats
        if reason is not None:
            stats.finish_reason = reason
        self.counters.requests_finished += 1
        self.counters.prompt_tokens += stats.prompt_tokens
        self.counters.reused_tokens += stats.reused_tokens
        slot.generation._emit("done", stats)

    def _fail(self, slot: _Slot, error: BaseException) -> None:
        self._release(slot)
        self._held[slot.seq] = []      # what the cache holds after a failure is unknown
        self.counters.requests_failed += 1
        slot.generation._emit("error", error)


__all__ = ["BatchScheduler", "Generation", "SchedulerCounters", "DEFAULT_MAX_QUEUE",
           "DEFAULT_PROMPT_TOKENS_PER_STEP"]
