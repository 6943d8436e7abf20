"""Choosing the next token from a row of logits.

The chain follows llama.cpp's default sampler order, so the same settings mean
the same thing in both:

1. repeat penalty over the last `repeat_last_n` generated tokens: each distinct
   token seen there has its logit divided by `repeat_penalty` when positive,
   multiplied when negative (llama.cpp's `penalties` sampler, frequency and
   presence at 0; like llama-cpp-python, the window holds the tokens sampled so
   far, not the prompt);
2. top-k: keep the k highest logits (k = 0 keeps all);
3. top-p: keep the smallest set of most likely tokens whose probability sums
   to at least p (1.0 keeps all);
4. min-p: keep tokens whose probability is at least min_p times the most
   likely token's (0 keeps all);
5. temperature: divide the surviving logits by it, softmax, draw one token
   with the seeded numpy Generator.

Temperature 0 is greedy: the highest logit after the repeat penalty.
Steps 2-4 work on the untempered distribution, as in llama.cpp.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import InvalidArgumentError

DEFAULT_REPEAT_LAST_N = 64   # llama.cpp's default penalty window


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    repeat_last_n: int = DEFAULT_REPEAT_LAST_N

    def __post_init__(self):
        def number(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise InvalidArgumentError(f"{name} must be finite, got {value!r}")
            return value

        if number("temperature", self.temperature) < 0:
            raise InvalidArgumentError(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, (int, np.integer)) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise InvalidArgumentError(f"top_k must be an int >= 0 (0 keeps every token), got {self.top_k!r}")
        if not 0.0 < number("top_p", self.top_p) <= 1.0:
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= number("min_p", self.min_p) <= 1.0:
            raise InvalidArgumentError(f"min_p must be in [0, 1], got {self.min_p}")
        if number("repeat_penalty", self.repeat_penalty) <= 0:
            raise InvalidArgumentError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        if not isinstance(self.repeat_last_n, (int, np.integer)) or self.repeat_last_n < 0:
            raise InvalidArgumentError(f"repeat_last_n must be an int >= 0, got {self.repeat_last_n!r}")


def apply_repeat_penalty(logits: np.ndarray, recent_ids: Sequence[int], penalty: float) -> np.ndarray:
    """A copy of logits with every distinct id of recent_ids penalized (llama.cpp semantics)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0 or len(recent_ids) == 0:
        return out
    ids = np.unique(np.asarray(recent_ids, dtype=np.int64))
    vals = out[ids]
    out[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def candidate_filter(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Ids that survive top-k, then top-p, then min-p, most likely first."""
    n = logits.shape[0]
    if 0 < top_k < n:
        ids = np.argpartition(-logits, top_k - 1)[:top_k]
    else:
        ids = np.arange(n)
    # Stable sort by descending logit; ties keep the lower id first.
    ids = ids[np.lexsort((ids, -logits[ids]))]
    vals = logits[ids].astype(np.float64)
    probs = np.exp(vals - vals[0])
    probs /= probs.sum()
    if top_p < 1.0:
        cumulative = np.cumsum(probs)
        keep = int(np.searchsorted(cumulative, top_p, side="left")) + 1
        keep = min(max(keep, 1), ids.size)
        ids, probs = ids[:keep], probs[:keep]
    if min_p > 0.0:
        keep = int(np.count_nonzero(probs >= min_p * probs[0]))
        ids = ids[:max(keep, 1)]
    return ids


class Sampler:
    """Stateful only in its random generator: the same seed gives the same draws."""

    def __init__(self, params: SamplingParams, seed: Optional[int] = None):
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise InvalidArgumentError(f"seed must be a non-negative int or None, got {seed!r}")
        self.params = params
        self.rng = np.random.default_rng(seed)

    def sample(self, logits: np.ndarray, recent_ids: Sequence[int] = ()) -> int:
        p = self.params
        window = list(recent_ids)[-p.repeat_last_n:] if p.repeat_last_n else []
        penalized = apply_repeat_penalty(logits, window, p.repeat_penalty)
        if p.temperature == 0:
            return int(np.argmax(penalized))
        ids = candidate_filter(penalized, p.top_k, p.top_p, p.min_p)
        scaled = penalized[ids].astype(np.float64) / p.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        cumulative = np.cumsum(probs)
        draw = self.rng.random() * cumulative[-1]
        return int(ids[min(int(np.searchsorted(cumulative, draw, side="right")), ids.size - 1)])


__all__ = ["SamplingParams", "Sampler", "apply_repeat_penalty", "candidate_filter", "DEFAULT_REPEAT_LAST_N"]
