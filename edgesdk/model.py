"""`edgesdk.load` and `Model`: a loaded model with its tokenizer, scoring and generation.

A Model owns one backend (one KV cache) and remembers which ids the cache
holds, so every call evaluates only what differs from the last one: a prompt
that starts with the previous prompt and answer prefills just the new suffix.

Generation streams text as tokens come, stops on the tokenizer's
end-of-generation ids and on user stop strings (also when a stop string spans
several tokens), and never emits any part of a stop string: text that could be
the beginning of one is held back until it is known not to be. A `cancel`
event stops it between two steps (finish reason "cancelled"): what a Ctrl-C
handler or a server sets, from any thread.

One Model serves one call at a time: calls from several threads are
serialized (each waits for the one running to finish, a stream until it is
exhausted or closed). A thread that starts a call while its own stream on the
same Model is still open gets InvalidArgumentError instead of waiting for
itself forever.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import loading, registry
from .backends.base import Backend, check_ids
from .config import LoadConfig
from .errors import CancelledError, ContextOverflowError, InvalidArgumentError, NumericError, TokenizerError
from .generation import DEFAULT_GENERATION, Continuation, GenerationConfig, GenerationStats
from .memory import MemoryPlan
from .sampling import Sampler
from .templates import special_tokens_from_gguf
from .tokenizer import Tokenizer

log = logging.getLogger("edgesdk")

ModelArg = Union[str, os.PathLike, None]


def load(model: ModelArg = None, config: Optional[LoadConfig] = None, **settings: Any) -> "Model":
    """Load a registry model (already pulled) or a .gguf path; None means the registry's default model.

    Settings are LoadConfig's fields (backend, n_ctx, threads, kv_type,
    max_memory, n_batch, options), given as a LoadConfig, as keywords, or both
    (keywords win). The backend "auto" (the default) takes the first
    registered backend that can run the model here. The memory planner picks
    n_ctx, or checks the one given, against this device's memory or
    `max_memory` before anything is allocated, and raises MemoryBudgetError
    when it does not fit. A registry model (by name or by its cached file)
    starts with the generation defaults the registry recommends for it.
    """
    if config is not None and not isinstance(config, LoadConfig):
        raise InvalidArgumentError(f"config must be a LoadConfig, got {type(config).__name__}")
    config = (config or LoadConfig()).with_(**settings) if settings else (config or LoadConfig())
    prepared = loading.prepare(model, config)
    file = prepared.source.file
    try:
        metadata = {k: v for k, v in file.metadata.items() if not k.startswith("tokenizer.ggml.")}
        special_tokens = special_tokens_from_gguf(file.metadata)
        header = bytes(file.data[:file.data_offset])
        tokenizer = Tokenizer.from_gguf(file)
    except BaseException:
        prepared.close()
        raise
    backend = prepared.open()
    return Model(path=prepared.source.path, backend=backend, tokenizer=tokenizer, metadata=metadata, header=header,
                 memory_plan=prepared.plan, name=prepared.name, special_tokens=special_tokens,
                 config=prepared.config, generation=registry.generation_defaults(prepared.source.path))


@dataclass(frozen=True)
class CacheSnapshot:
    """A Model's KV cache: the ids it holds, in order, and the backend's serialized state of them."""
    ids: List[int]
    state: bytes


class Model:
    """A loaded model: tokenizer, backend (with its KV cache), scoring and generation."""

    def __init__(self, path: Path, backend: Backend, tokenizer, metadata: Dict[str, Any], header: bytes,
                 memory_plan: Optional[MemoryPlan] = None, name: Optional[str] = None,
                 special_tokens: Optional[Dict[str, int]] = None, config: Optional[LoadConfig] = None,
                 generation: GenerationConfig = DEFAULT_GENERATION):
        self.path = Path(path)
        self.backend = backend
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.memory_plan = memory_plan
        self.config = config
        self.name = name or self.path.name
        self.n_ctx = backend.n_ctx
        self.n_vocab = backend.n_vocab
        self.n_batch = config.n_batch if config is not None else LoadConfig().n_batch
        if tokenizer.n_vocab > self.n_vocab:
            raise TokenizerError(f"the tokenizer has {tokenizer.n_vocab} tokens, the model's output {self.n_vocab}")
        self.generation = generation        # this model's defaults for generate/chat options left out
        self._header = header
        self.special_tokens = dict(special_tokens or {})   # control-token text -> id, for chat templates
        self._cache_ids: List[int] = []     # the ids at KV positions 0..len-1 (a prefix of what backend holds)
        self._formatter = None
        self._lock = threading.Lock()
        self._holder: Optional[int] = None  # thread id of the call running now
        self.last_stats = GenerationStats()

    # -- one call at a time ------------------------------------------------------------

    @contextmanager
    def _exclusive(self):
        me = threading.get_ident()
        if self._holder == me:
            raise InvalidArgumentError(
                "this thread already has a call running on this Model (an unfinished stream?): exhaust or "
                "close it before starting another")
        with self._lock:
            self._holder = me
            try:
                yield
            finally:
                self._holder = None

    @contextmanager
    def exclusive_backend(self) -> Iterator[Backend]:
        """The backend, for one owner that manages its sequences itself (edgesdk.batching): the Model's
        own calls wait until the block ends, and the cache the Model remembers is forgotten, since the
        owner rewrites it."""
        with self._exclusive():
            self._cache_ids = []
            try:
                yield self.backend
            finally:
                self._cache_ids = []

    # -- identity, formatting ---------------------------------------------------

    @property
    def identity(self) -> str:
        """sha256 of the GGUF header + backend + context + KV type: what a saved KV cache depends on."""
        info = self.backend.info()
        digest = hashlib.sha256(self._header)
        digest.update(f"|{info.name}|{self.n_ctx}|{info.kv_type}".encode())
        return digest.hexdigest()

    @property
    def chat_formatter(self):
        if self._formatter is None:
            from .templates import ChatFormatter
            self._formatter = ChatFormatter(self.tokenizer, self.metadata.get("tokenizer.chat_template"),
                                            self.metadata.get("general.architecture"), self.special_tokens)
        return self._formatter

    # -- the KV cache ----------------------------------------------------------------

    @property
    def cached_ids(self) -> List[int]:
        return list(self._cache_ids)

    def reset(self) -> None:
        """Forget the KV cache: the next call evaluates its prompt from the start."""
        with self._exclusive():
            self._cache_ids = []

    def save_cache(self) -> CacheSnapshot:
        """The ids the KV cache holds and the backend's state of them (what a saved session keeps)."""
        with self._exclusive():
            ids = self._cache_ids[:self.backend.n_past]
            if ids and self.backend.n_past != len(ids):
                # An interrupted eval left positions we cannot name: evaluating the last
                # known id again drops them (eval forgets every position >= start).
                self._eval(ids[-1:], len(ids) - 1)
            return CacheSnapshot(ids=list(ids), state=self.backend.save_state() if ids else b"")

    def restore_cache(self, ids: Sequence[int], state: bytes) -> None:
        """Put back a cache from save_cache of this model: its ids and state (SessionFileError when the
        state does not restore those ids' positions here)."""
        ids = [int(i) for i in ids]
        if ids:
            check_ids(ids, self.n_vocab)
        with self._exclusive():
            self._cache_ids = []
            if ids:
                self.backend.load_state(state, len(ids))
                self._cache_ids = ids

    def _eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        # Record the truncation first: if the call is interrupted (Ctrl-C) the
        # cache may hold more than we know, never less.
        self._cache_ids = self._cache_ids[:start]
        logits = self.backend.eval(ids, start, all_logits)
        self._cache_ids.extend(int(i) for i in ids)
        if not np.isfinite(logits).all():
            raise NumericError(f"{self.name}: the model produced non-finite logits (NaN or infinity) at positions "
                               f"{start}..{start + len(ids) - 1}: its weights or hyperparameters are broken")
        return logits

    def _prefill(self, ids: List[int], cancel: Optional[threading.Event]) -> "tuple[Optional[np.ndarray], int]":
        """Logits after ids, evaluating only what the cache does not already hold, n_batch ids per step
        (a cancel is seen between steps); (logits or None when cancelled, reused)."""
        held = self._cache_ids[:self.backend.n_past]
        common = 0
        for a, b in zip(held, ids):
            if a != b:
                break
            common += 1
        # The last id is always evaluated again: its logits are what we need.
        common = min(common, len(ids) - 1)
        logits = None
        for at in range(common, len(ids), self.n_batch):
            if cancel is not None and cancel.is_set():
                return None, common
            logits = self._eval_cancellable(ids[at:at + self.n_batch], at, cancel)
            if logits is None:
                return None, common
        return logits, common

    # How often the waiting thread looks at the cancel event and repeats the abort request.
    _CANCEL_POLL_S = 0.02

    def _eval_cancellable(self, ids: List[int], start: int, cancel: Optional[threading.Event]) -> Optional[np.ndarray]:
        """_eval on a helper thread while this one waits, so that this thread stays free to run signal
        handlers: Ctrl-C's handler (or another thread) setting `cancel`, or a KeyboardInterrupt,
        aborts the backend within one layer instead of one batch. None when cancelled."""
        if cancel is None:
            return self._eval(ids, start)
        outcome: Dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["logits"] = self._eval(ids, start)
            except BaseException as exc:  # handed to the waiting thread
                outcome["error"] = exc

        helper = threading.Thread(target=work, name="edgesdk-prefill", daemon=True)
        helper.start()
        try:
            while helper.is_alive():
                if cancel.wait(self._CANCEL_POLL_S):
                    break
        finally:  # an exception here (KeyboardInterrupt) must not leave the helper writing the cache
            interrupted = None
            while helper.is_alive():
                try:
                    helper.join(self._CANCEL_POLL_S if self.backend.abort() else None)
                except KeyboardInterrupt as exc:  # a second Ctrl-C: still wait, then raise it
                    interrupted = exc
            if interrupted is not None:
                raise interrupted
        error = outcome.get("error")
        if isinstance(error, CancelledError) or (error is None and cancel.is_set()):
            return None
        if error is not None:
            raise error
        return outcome["logits"]

    # -- public API -------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> List[int]:
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special=add_special, parse_special=False)

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits: float32 (len(ids), n_vocab), row i predicts the id after ids[i]."""
        arr = check_ids(ids, self.n_vocab)
        if arr.size > self.n_ctx:
            raise ContextOverflowError(f"{arr.size} ids do not fit the context of {self.n_ctx}")
        with self._exclusive():
            return self._eval([int(i) for i in arr], 0, all_logits=True)

    def _prompt_ids(self, prompt: Union[str, Sequence[int]]) -> List[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidArgumentError("the prompt is empty")
            ids = self.tokenizer.encode(prompt, add_special=True, parse_special=False)
            if not ids:
                raise InvalidArgumentError("the prompt produced no tokens")
            return ids
        if isinstance(prompt, (bytes, bytearray)) or not isinstance(prompt, (Sequence, np.ndarray)):
            raise InvalidArgumentError(f"prompt must be str or a sequence of token ids, got {type(prompt).__name__}")
        return [int(i) for i in check_ids(prompt, self.n_vocab)]

    def generate(self, prompt_or_ids: Union[str, Sequence[int]], stream: bool = False,
                 cancel: Optional[threading.Event] = None, **options: Any) -> Union[str, Iterator[str]]:
        """Continue a prompt (text, or ids for prompts with special tokens): the text, or its pieces if stream.

        options: max_tokens, temperature, top_k, top_p, min_p, repeat_penalty,
        repeat_last_n, seed, stop (edgesdk.generation.GenerationConfig); the
        ones left out take this model's defaults (Model.generation)."""
        config = self.generation.with_options(**options)
        ids = self._prompt_ids(prompt_or_ids)
        pieces = self.stream_ids(ids, config, cancel=cancel)
        return pieces if stream else "".join(pieces)

    def chat(self, messages, stream: bool = False, cancel: Optional[threading.Event] = None, **options: Any):
        """An OpenAI-shaped chat completion (or its chunks when stream) for OpenAI-style messages."""
        from .chat import chat_completion
        return chat_completion(self, messages, stream=stream, cancel=cancel, **options)

    def stream_ids(self, ids: Sequence[int], config: GenerationConfig = DEFAULT_GENERATION,
                   stats: Optional[GenerationStats] = None,
                   cancel: Optional[threading.Event] = None) -> Iterator[str]:
        """Validate now, then generate lazily: an iterator of text pieces; `stats` is filled as it runs."""
        if not isinstance(config, GenerationConfig):
            raise InvalidArgumentError(f"config must be a GenerationConfig, got {type(config).__name__}")
        ids = [int(i) for i in check_ids(ids, self.n_vocab)] if len(ids) else []
        if not ids:
            raise InvalidArgumentError("the prompt is empty")
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens; the context holds {self.n_ctx}, leaving no room for an answer"
            )
        if cancel is not None and not hasattr(cancel, "is_set"):
            raise InvalidArgumentError(f"cancel must be a threading.Event, got {type(cancel).__name__}")
        sampler = Sampler(config.sampling, config.seed)
        stats = stats if stats is not None else GenerationStats()
        self.last_stats = stats
        return self._generate(ids, sampler, config, stats, cancel)

    def _generate(self, ids: List[int], sampler: Sampler, config: GenerationConfig, stats: GenerationStats,
                  cancel: Optional[threading.Event]) -> Iterator[str]:
        with self._exclusive():
            yield from self._generate_locked(ids, sampler, config, stats, cancel)

    def _generate_locked(self, ids: List[int], sampler: Sampler, config: GenerationConfig, stats: GenerationStats,
                         cancel: Optional[threading.Event]) -> Iterator[str]:
        tok = self.tokenizer
        started = time.perf_counter()
        stats.prompt_tokens = len(ids)
        stats.finish_reason = "length"
        try:
            logits, stats.reused_tokens = self._prefill(ids, cancel)
            stats.prefill_s = time.perf_counter() - started
            if logits is None:
                stats.finish_reason = "cancelled"
                return
            step = Continuation(tok, sampler, config, stats, len(ids), self.n_ctx, started)
            while True:
                text = step.step(logits, cancel)
                if text:
                    yield text
                if step.done:
                    break
                if cancel is not None and cancel.is_set():   # set while the consumer held the piece
                    stats.finish_reason = "cancelled"
                    break
                logits = self._eval([step.next_token], step.n_held - 1)
            text = step.finish()
            if text:
                yield text
        finally:
            stats.total_s = time.perf_counter() - started

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        info = self.backend.info()
        return f"Model({self.name!r}, backend={info.name!r}, n_ctx={self.n_ctx}, n_vocab={self.n_vocab})"


__all__ = ["load", "Model", "CacheSnapshot", "GenerationStats", "GenerationConfig"]
