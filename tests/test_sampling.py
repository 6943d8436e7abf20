"""Sampling chain against expectations written here in plain numpy/Python."""
from __future__ import annotations

import numpy as np
import pytest

from edgesdk.errors import InvalidArgumentError
from edgesdk.sampling import Sampler, SamplingParams, apply_repeat_penalty, candidate_filter

N_DRAWS = 6000
# Frequencies of N_DRAWS draws: binomial std <= sqrt(0.25 / 6000) ~ 0.0065; 4 sigma.
FREQ_ATOL = 0.026


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _reference_keep(logits, top_k, top_p, min_p):
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    if 0 < top_k < len(order):
        order = order[:top_k]
    probs = _softmax(np.array([logits[i] for i in order], dtype=np.float64))
    if top_p < 1.0:
        total, keep = 0.0, 0
        for p in probs:
            total += p
            keep += 1
            if total >= top_p:
                break
        order, probs = order[:keep], probs[:keep]
    if min_p > 0:
        order = [i for i, p in zip(order, probs) if p >= min_p * probs[0]]
    return order


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([2.0, -1.0, 0.5, 3.0, -2.5], dtype=np.float32)
    out = apply_repeat_penalty(logits, [0, 1, 1, 4], 1.25)
    expected = np.array([2.0 / 1.25, -1.0 * 1.25, 0.5, 3.0, -2.5 * 1.25], dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(logits, [2.0, -1.0, 0.5, 3.0, -2.5])  # input untouched


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 1.0, 0.0), (5, 1.0, 0.0), (0, 0.7, 0.0), (0, 1.0, 0.1),
                                               (40, 0.95, 0.05), (3, 0.5, 0.2), (1000, 0.9, 0.0)])
def test_candidate_filter_keeps_what_the_reference_keeps(rng, top_k, top_p, min_p):
    logits = rng.normal(0, 2.0, size=301).astype(np.float32)
    kept = candidate_filter(logits, top_k, top_p, min_p)
    assert list(kept) == _reference_keep(list(map(float, logits)), top_k, top_p, min_p)


def test_temperature_zero_is_argmax_after_penalty(rng):
    logits = rng.normal(size=97).astype(np.float32)
    best = int(np.argmax(logits))
    sampler = Sampler(SamplingParams(temperature=0, repeat_penalty=1.0))
    assert sampler.sample(logits) == best
    logits[best] = abs(logits[best])
    runner_up = int(np.argsort(logits)[-2])
    penalized = Sampler(SamplingParams(temperature=0, repeat_penalty=1e6))
    assert penalized.sample(logits, [best]) == runner_up


def test_draw_frequencies_follow_tempered_softmax_of_the_survivors(rng):
    logits = np.array([1.0, 2.0, 0.5, 3.0, -4.0, 2.5], dtype=np.float32)
    params = SamplingParams(temperature=0.7, top_k=4, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    sampler = Sampler(params, seed=7)
    counts = np.bincount([sampler.sample(logits) for _ in range(N_DRAWS)], minlength=6) / N_DRAWS
    survivors = [3, 5, 1, 0]                       # the 4 highest logits
    expected = np.zeros(6)
    expected[survivors] = _softmax(logits[survivors].astype(np.float64) / 0.7)
    np.testing.assert_allclose(counts, expected, atol=FREQ_ATOL)
    assert counts[4] == 0 and counts[2] == 0


def test_same_seed_same_draws_and_other_seed_differs(rng):
    logits = rng.normal(size=500).astype(np.float32)
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    draws = lambda seed: [Sampler(params, seed).sample(logits) for _ in range(1)] + \
        [s for s in _run(Sampler(params, seed), logits, 50)]
    assert draws(11) == draws(11)
    assert draws(11) != draws(12)


def _run(sampler, logits, n):
    return [sampler.sample(logits) for _ in range(n)]


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1),
                                    dict(repeat_penalty=0.0), dict(top_k=2.5), dict(temperature=float("nan")),
                                    dict(repeat_last_n=-1)])
def test_invalid_sampling_settings_are_rejected(kwargs):
    with pytest.raises(InvalidArgumentError):
        SamplingParams(**kwargs)


def test_negative_seed_is_rejected():
    with pytest.raises(InvalidArgumentError):
        Sampler(SamplingParams(), seed=-3)
