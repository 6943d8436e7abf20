"""`edgesdk.load` and `Model`: a loaded model with its tokenizer, scoring and generation.

A Model owns one backend (one KV cache) and remembers which ids the cache
holds, so every call evaluates only what differs from the last one: a prompt
that starts with the previous prompt and answer prefills just the new suffix.

Generation streams text as tokens come, stops on the tokenizer's
end-of-generation ids and on user stop strings (also when a stop string spans
several tokens), and never emits any part of a stop string: text that could be
the beginning of one is held back until it is known not to be.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import gguf, registry
from .backends.base import Backend, check_ids
from .errors import (BackendUnavailableError, ContextOverflowError, InvalidArgumentError, TokenizerError)
from .sampling import DEFAULT_REPEAT_LAST_N, Sampler, SamplingParams
from .templates import special_tokens_from_gguf

log = logging.getLogger("edgesdk")

DEFAULT_N_CTX_CAP = 4096      # without a memory plan, the context we choose when the model allows more
BACKENDS = ("native", "llamacpp", "auto")


@dataclass
class GenerationStats:
    """What the last generate/chat call did: token counts, why it stopped, how long each phase took."""
    prompt_tokens: int = 0
    reused_tokens: int = 0          # prompt ids already in the KV cache, not evaluated again
    completion_tokens: int = 0
    finish_reason: str = "length"   # "stop" (end-of-turn id or stop string) or "length"
    prefill_s: float = 0.0
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - self.prefill_s
        return self.completion_tokens / decode_s if decode_s > 0 else 0.0


def _load_tokenizer(path: Path):
    """edgesdk's own tokenizer; llama.cpp's vocabulary while edgesdk.tokenizer is not installed."""
    try:
        from .tokenizer import Tokenizer
    except ImportError:
        from .backends.llamacpp import LlamaCppTokenizer
        log.info("edgesdk.tokenizer is not available; using llama.cpp's tokenizer")
        return LlamaCppTokenizer.from_gguf(path)
    return Tokenizer.from_gguf(path)


def _plan_context(path: Path, n_ctx: Optional[int], kv_type: str, max_memory, backend: str, threads: int,
                  context_length: int):
    """(n_ctx, plan) from edgesdk.memory's planner; without it, the asked n_ctx or min(trained, 4096)."""
    try:
        from . import memory
    except ImportError:
        memory = None
    if memory is not None:
        plan = memory.fit(path, n_ctx=n_ctx, kv_type=kv_type, max_memory=max_memory, backend=backend,
                          threads=threads)
        return int(plan.n_ctx), plan
    if n_ctx is None:
        n_ctx = min(context_length, DEFAULT_N_CTX_CAP) if context_length > 0 else DEFAULT_N_CTX_CAP
    return n_ctx, None


def _default_threads() -> int:
    try:
        from .hardware import default_threads
    except ImportError:
        return max(1, os.cpu_count() or 1)
    return int(default_threads())


def _resolve_backend(name: str) -> str:
    """"auto" -> "native" when its module imports, else "llamacpp"; other names as given."""
    if name != "auto":
        return name
    try:
        from .backends.native import NativeBackend  # noqa: F401
    except ImportError:
        return "llamacpp"
    return "native"


def _make_backend(name: str, path: Path, n_ctx: int, threads: int, kv_type: str) -> Backend:
    if name == "native":
        try:
            from .backends.native import NativeBackend
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the native backend is not available in this installation ({exc}); use backend='llamacpp'"
            ) from None
        return NativeBackend(path, n_ctx=n_ctx, threads=threads, kv_type=kv_type)
    if name == "llamacpp":
        from .backends.llamacpp import LlamaCppBackend
        return LlamaCppBackend(path, n_ctx=n_ctx, threads=threads, kv_type=kv_type)
    raise InvalidArgumentError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def load(model: Optional[Union[str, os.PathLike]] = None, backend: str = "native", n_ctx: Optional[int] = None,
         threads: Optional[int] = None, kv_type: str = "f16", max_memory: Optional[int] = None) -> "Model":
    """Load a registry model (already pulled) or a .gguf path; None means the registry's default model.

    The memory planner (edgesdk.memory.fit) picks n_ctx, or checks the one
    given, against this device's memory or `max_memory` before anything is
    allocated, and raises MemoryBudgetError when it does not fit. `threads`
    defaults to edgesdk.hardware.default_threads(). backend: "native",
    "llamacpp", or "auto" (native when installed).
    """
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if n_ctx is not None and (not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx <= 0):
        raise InvalidArgumentError(f"n_ctx must be a positive int, got {n_ctx!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0):
        raise InvalidArgumentError(f"threads must be a positive int, got {threads!r}")
    name = model if model is not None else registry.default_model()
    path = registry.resolve(name)
    with gguf.open(path) as file:
        metadata = {k: v for k, v in file.metadata.items() if not k.startswith("tokenizer.ggml.")}
        special_tokens = special_tokens_from_gguf(file.metadata)
        header = bytes(file.data[:file.data_offset])
        arch = file.architecture or ""
        context_length = int(file.get(f"{arch}.context_length", 0) or 0)
    backend = _resolve_backend(backend)
    threads = threads or _default_threads()
    n_ctx, plan = _plan_context(path, n_ctx, kv_type, max_memory, backend, threads, context_length)
    tokenizer = _load_tokenizer(path)
    backend_obj = _make_backend(backend, path, n_ctx, threads, kv_type)
    return Model(path=path, backend=backend_obj, tokenizer=tokenizer, metadata=metadata, header=header,
                 memory_plan=plan, name=os.fspath(name), special_tokens=special_tokens)


class _StopScanner:
    """Finds user stop strings in streamed text and holds back what could start one."""

    def __init__(self, stop: Sequence[str]):
        self.stop = [s for s in stop if s]
        self.pending = ""

    def feed(self, text: str) -> "tuple[str, bool]":
        """(text safe to emit, whether a stop string was found)."""
        self.pending += text
        if not self.stop:
            out, self.pending = self.pending, ""
            return out, False
        first = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if first >= 0:
            out = self.pending[:first]
            self.pending = ""
            return out, True
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def finish(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _check_stop(stop) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise InvalidArgumentError(f"stop must be a string or a list of strings, got {stop!r}")
    return list(stop)


class Model:
    """A loaded model: tokenizer, backend (with its KV cache), scoring and generation."""

    def __init__(self, path: Path, backend: Backend, tokenizer, metadata: Dict[str, Any], header: bytes,
                 memory_plan=None, name: Optional[str] = None, special_tokens: Optional[Dict[str, int]] = None):
        self.path = Path(path)
        self.backend = backend
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.memory_plan = memory_plan
        self.name = name or self.path.name
        self.n_ctx = backend.n_ctx
        self.n_vocab = backend.n_vocab
        if tokenizer.n_vocab > self.n_vocab:
            raise TokenizerError(f"the tokenizer has {tokenizer.n_vocab} tokens, the model's output {self.n_vocab}")
        self._header = header
        self.special_tokens = dict(special_tokens or {})   # control-token text -> id, for chat templates
        self._cache_ids: List[int] = []     # the ids at KV positions 0..len-1 (a prefix of what backend holds)
        self._formatter = None
        self.last_stats = GenerationStats()

    # -- identity, formatting ---------------------------------------------------

    @property
    def identity(self) -> str:
        """sha256 of the GGUF header + backend + context + KV type: what a saved KV cache depends on."""
        import hashlib
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
        self._cache_ids = []

    def _eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        # Record the truncation first: if the call is interrupted (Ctrl-C) the
        # cache may hold more than we know, never less.
        self._cache_ids = self._cache_ids[:start]
        logits = self.backend.eval(ids, start, all_logits)
        self._cache_ids.extend(int(i) for i in ids)
        return logits

    def _prefill(self, ids: List[int]) -> "tuple[np.ndarray, int]":
        """Logits after ids, evaluating only what the cache does not already hold; (logits, reused)."""
        held = self._cache_ids[:self.backend.n_past]
        common = 0
        for a, b in zip(held, ids):
            if a != b:
                break
            common += 1
        # The last id is always evaluated again: its logits are what we need.
        common = min(common, len(ids) - 1)
        return self._eval(ids[common:], common), common

    # -- public API -------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> List[int]:
        return self.tokenizer.encode(text, add_special=add_special, parse_special=False)

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits: float32 (len(ids), n_vocab), row i predicts the id after ids[i]."""
        arr = check_ids(ids, self.n_vocab)
        if arr.size > self.n_ctx:
            raise ContextOverflowError(f"{arr.size} ids do not fit the context of {self.n_ctx}")
        return self._eval([int(i) for i in arr], 0, all_logits=True)

    def _prompt_ids(self, prompt: Union[str, Sequence[int]]) -> List[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidArgumentError("the prompt is empty")
            ids = self.tokenizer.encode(prompt, add_special=True, parse_special=False)
            if not ids:
                raise InvalidArgumentError("the prompt produced no tokens")
            return ids
        if isinstance(prompt, (bytes, bytearray)):
            raise InvalidArgumentError("prompt must be str or a sequence of token ids, got bytes")
        return [int(i) for i in check_ids(list(prompt) if not isinstance(prompt, np.ndarray) else prompt,
                                          self.n_vocab)]

    def generate(self, prompt_or_ids: Union[str, Sequence[int]], max_tokens: int = 256, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.1,
                 seed: Optional[int] = None, stop: Optional[Sequence[str]] = None, stream: bool = False,
                 repeat_last_n: int = DEFAULT_REPEAT_LAST_N) -> Union[str, Iterator[str]]:
        """Continue a prompt (text, or ids for prompts with special tokens): the text, or its pieces if stream."""
        ids = self._prompt_ids(prompt_or_ids)
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n)
        pieces = self.stream_ids(ids, params, max_tokens=max_tokens, seed=seed, stop=stop)
        return pieces if stream else "".join(pieces)

    def chat(self, messages, stream: bool = False, **sampling):
        """An OpenAI-shaped chat completion (or its chunks when stream) for OpenAI-style messages."""
        from .chat import chat_completion
        return chat_completion(self, messages, stream=stream, **sampling)

    def stream_ids(self, ids: List[int], params: SamplingParams, max_tokens: int = 256, seed: Optional[int] = None,
                   stop: Optional[Sequence[str]] = None, stats: Optional[GenerationStats] = None) -> Iterator[str]:
        """Validate now, then generate lazily: an iterator of text pieces; `stats` is filled as it runs."""
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
            raise InvalidArgumentError(f"max_tokens must be a positive int, got {max_tokens!r}")
        if not ids:
            raise InvalidArgumentError("the prompt is empty")
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens; the context holds {self.n_ctx}, leaving no room for an answer"
            )
        stop_strings = _check_stop(stop)
        sampler = Sampler(params, seed)
        stats = stats if stats is not None else GenerationStats()
        self.last_stats = stats
        return self._generate(list(ids), sampler, max_tokens, stop_strings, stats)

    def _generate(self, ids: List[int], sampler: Sampler, max_tokens: int, stop: List[str],
                  stats: GenerationStats) -> Iterator[str]:
        tok = self.tokenizer
        eot_ids = tok.eot_ids
        started = time.perf_counter()
        stats.prompt_tokens = len(ids)
        logits, stats.reused_tokens = self._prefill(ids)
        stats.prefill_s = time.perf_counter() - started
        decoder = tok.streaming_decoder()
        scanner = _StopScanner(stop)
        history = list(ids)
        generated: List[int] = []   # the repeat-penalty window: generated ids only, as llama-cpp-python
        stats.finish_reason = "length"
        try:
            while True:
                token = sampler.sample(logits, generated)
                if token in eot_ids:
                    stats.finish_reason = "stop"
                    break
                stats.completion_tokens += 1
                if stats.completion_tokens == 1:
                    stats.time_to_first_token_s = time.perf_counter() - started
                history.append(token)
                generated.append(token)
                piece = "" if tok.is_control(token) else decoder.push(token)
                text, stopped = scanner.feed(piece)
                if text:
                    yield text
                if stopped:
                    stats.finish_reason = "stop"
                    return
                if stats.completion_tokens >= max_tokens or len(history) >= self.n_ctx:
                    break
                logits = self._eval([token], len(history) - 1)
            text, stopped = scanner.feed(decoder.flush())
            if stopped:
                stats.finish_reason = "stop"
            else:
                text += scanner.finish()
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


__all__ = ["load", "Model", "GenerationStats"]
