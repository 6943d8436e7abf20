"""What one generation is asked to do and what it did: GenerationConfig, GenerationStats, stop strings.

`GenerationConfig` holds the one set of generation defaults: `Model.generate`,
`chat`, `ChatSession` and the CLI's flags all start from `GenerationConfig()`
(the sampler's own defaults are `SamplingParams()`'s, in sampling.py).
`from_options(**kwargs)` is the one parser of keyword options: an unknown
name is an InvalidArgumentError listing the known ones.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, List, Optional, Sequence, Tuple

from .config import check_positive_int
from .errors import InvalidArgumentError
from .sampling import SamplingParams

SAMPLING_KEYS = tuple(f.name for f in fields(SamplingParams))
FINISH_REASONS = ("stop", "length", "cancelled")


def _check_stop(stop: Any) -> Tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise InvalidArgumentError(f"stop must be a string or a list of strings, got {stop!r}")
    return tuple(stop)


@dataclass(frozen=True)
class GenerationConfig:
    """How to generate: token budget, sampling, seed and stop strings."""
    max_tokens: int = 512
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()

    def __post_init__(self):
        check_positive_int("max_tokens", self.max_tokens)
        if not isinstance(self.sampling, SamplingParams):
            raise InvalidArgumentError(f"sampling must be SamplingParams, got {type(self.sampling).__name__}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise InvalidArgumentError(f"seed must be a non-negative int or None, got {self.seed!r}")
        object.__setattr__(self, "stop", _check_stop(self.stop))

    @classmethod
    def known_options(cls) -> Tuple[str, ...]:
        return ("max_tokens", "seed", "stop") + SAMPLING_KEYS

    def with_options(self, **options: Any) -> "GenerationConfig":
        """This config with keyword options applied (max_tokens, seed, stop and SamplingParams' fields)."""
        unknown = sorted(set(options) - set(self.known_options()))
        if unknown:
            raise InvalidArgumentError(f"unknown option(s) {', '.join(unknown)}; "
                                       f"known: {', '.join(self.known_options())}")
        sampling = {k: options.pop(k) for k in SAMPLING_KEYS if k in options}
        if sampling:
            options["sampling"] = replace(self.sampling, **sampling)
        return replace(self, **options)

    @classmethod
    def from_options(cls, **options: Any) -> "GenerationConfig":
        return cls().with_options(**options)

    def options(self) -> dict:
        """The config as keyword options (the inverse of with_options), e.g. to save it."""
        out = {"max_tokens": self.max_tokens, "seed": self.seed, "stop": list(self.stop)}
        out.update({k: getattr(self.sampling, k) for k in SAMPLING_KEYS})
        return out


DEFAULT_GENERATION = GenerationConfig()


@dataclass
class GenerationStats:
    """What the last generate/chat call did: token counts, why it stopped, how long each phase took."""
    prompt_tokens: int = 0
    reused_tokens: int = 0          # prompt ids already in the KV cache, not evaluated again
    completion_tokens: int = 0
    finish_reason: str = "length"   # "stop" (end-of-turn id or stop string), "length", or "cancelled"
    queued_s: float = 0.0           # waiting for a free sequence (a server's queue), before any of the below
    prefill_s: float = 0.0
    time_to_first_token_s: float = 0.0
    total_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - self.prefill_s
        return self.completion_tokens / decode_s if decode_s > 0 else 0.0


class StopScanner:
    """Finds user stop strings in streamed text and holds back what could start one."""

    def __init__(self, stop: Sequence[str]):
        self.stop: List[str] = [s for s in stop if s]
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


class Continuation:
    """One answer's token-by-token state: sampling, end-of-turn ids, stop strings and the token budget.

    Whoever owns the KV cache (Model for one caller, the batching scheduler for
    several) evaluates; this decides. `step(logits)` takes the logits after the
    last evaluated id and returns the text now safe to emit; then either `done`
    is set (call `finish()` for the held-back tail) or `next_token` is the id to
    evaluate at position `n_held - 1` next. `stats` is filled as it goes.
    """

    def __init__(self, tokenizer, sampler, config: "GenerationConfig", stats: "GenerationStats", n_prompt: int,
                 n_ctx: int, started: float):
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.config = config
        self.stats = stats
        self.n_ctx = n_ctx
        self.started = started
        self.n_held = n_prompt          # ids in the cache once next_token is evaluated
        self.generated: List[int] = []  # the repeat-penalty window: generated ids only, as llama-cpp-python
        self.decoder = tokenizer.streaming_decoder()
        self.scanner = StopScanner(config.stop)
        self.next_token: Optional[int] = None
        self.done = False
        self._stopped_by_string = False
        stats.finish_reason = "length"

    def step(self, logits, cancel=None) -> str:
        token = self.sampler.sample(logits, self.generated)
        stats = self.stats
        if token in self.tokenizer.eot_ids:
            stats.finish_reason = "stop"
            self.done = True
            return ""
        stats.completion_tokens += 1
        if stats.completion_tokens == 1:
            stats.time_to_first_token_s = time.perf_counter() - self.started
        self.n_held += 1
        self.generated.append(token)
        piece = "" if self.tokenizer.is_control(token) else self.decoder.push(token)
        text, stopped = self.scanner.feed(piece)
        if stopped:
            stats.finish_reason = "stop"
            self._stopped_by_string = True
            self.done = True
        elif stats.completion_tokens >= self.config.max_tokens or self.n_held >= self.n_ctx:
            self.done = True
        elif cancel is not None and cancel.is_set():
            stats.finish_reason = "cancelled"
            self.done = True
        else:
            self.next_token = token
        return text

    def finish(self) -> str:
        """The text held back by the decoder and the stop scanner (nothing after a stop string)."""
        if self._stopped_by_string:
            return ""
        text, stopped = self.scanner.feed(self.decoder.flush())
        if stopped:
            self.stats.finish_reason = "stop"
            return text
        return text + self.scanner.finish()


__all__ = ["GenerationConfig", "GenerationStats", "StopScanner", "Continuation", "DEFAULT_GENERATION", "FINISH_REASONS",
           "SAMPLING_KEYS"]
