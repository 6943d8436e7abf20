"""One contract for every backend of the registry: the class protocol, eval semantics, prefix reuse,
state round trip, errors.

Backends come from edgesdk.backends' registry: a new backend is tested here
without editing this file. Every registered backend must be available on the
test machine (a missing library is a failure, not a skip), except one that
needs hardware this machine lacks, which says so in its reason.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgesdk import backends, loading
from edgesdk.backends.base import Availability, Backend, BackendInfo, SeqInput
from edgesdk.config import KV_CACHE_TYPES, LoadConfig
from edgesdk.errors import ContextOverflowError, InvalidArgumentError, SessionFileError

# Logits of the same position computed in a different batch split: the same
# math, but matmul accumulation order differs between GEMM tiles and GEMV, and the
# rounding carried through every layer grows with the logit's size (ONNX Runtime's
# AVX2 float32 kernels on a real model: 0.021 on a logit of 10.3).
REUSE_ATOL = 2e-2
REUSE_RTOL = 1e-3
# Gemma-3's logits are ~10x wider and its activations large: a different batch
# split moves logits by up to ~0.6 in llama.cpp itself: its largest row KL over 12 random
# prompts was 0.033 (median 0.02), so the bound leaves room above that and no more.
SPLIT_KL_MAX = 0.05
N_CTX = 160
THREADS = 1       # the shared test machine: one thread per process is the fastest and least noisy

# Words an Availability reason uses when the backend needs hardware, not a library.
HARDWARE_REASONS = ("GPU", "NPU", "no CUDA device", "no device")


def _installed():
    return backends.available()


def _make(name, path, n_ctx=N_CTX, kv_type="f16") -> Backend:
    """A backend made the way edgesdk.load makes it: through the registry's check and open."""
    return loading.prepare(path, LoadConfig(backend=name, n_ctx=n_ctx, threads=THREADS, kv_type=kv_type)).open()


@pytest.mark.parametrize("name", backends.names())
def test_every_registered_backend_answers_the_class_protocol(name, smollm2_path):
    cls = backends.get(name)
    assert cls.name == name and cls.description
    assert set(cls.kv_types) <= set(KV_CACHE_TYPES) and "f16" in cls.kv_types
    status = cls.available()
    assert isinstance(status, Availability)
    if not status:
        assert any(word in status.reason for word in HARDWARE_REASONS), (
            f"{name} is registered but not available here for a reason other than missing hardware: "
            f"{status.reason}")
        pytest.skip(f"{name} needs hardware this machine lacks: {status.reason}")
    plan = loading.plan(smollm2_path, backend=name, n_ctx=N_CTX, threads=THREADS)
    assert plan.backend == name and plan.n_ctx == N_CTX
    assert plan.kv_cache > 0 and plan.weights_mapped + plan.weights_owned > 0 and plan.address_space > plan.kv_cache
    # A KV type it does not store is refused naming the backend and the types it does store.
    for kv_type in [kv for kv in KV_CACHE_TYPES if kv not in cls.kv_types][:1]:
        with pytest.raises(InvalidArgumentError, match=f"kv_type '{kv_type}' is not supported by the {name}"):
            loading.plan(smollm2_path, backend=name, n_ctx=N_CTX, threads=THREADS, kv_type=kv_type)


@pytest.fixture(scope="module", params=_installed())
def backend(request, smollm2_path):
    b = _make(request.param, smollm2_path)
    yield b
    b.close()


def _ids(rng, n, n_vocab=49152):
    # Ordinary vocabulary ids (no control tokens at the low end).
    return [int(i) for i in rng.integers(300, n_vocab, size=n)]


def test_eval_returns_float32_logits_of_the_last_id_or_of_all(backend, rng):
    ids = _ids(rng, 13)
    last = backend.eval(ids, 0)
    assert last.shape == (backend.n_vocab,) and last.dtype == np.float32
    assert backend.n_past == 13
    every = backend.eval(ids, 0, all_logits=True)
    assert every.shape == (13, backend.n_vocab) and every.dtype == np.float32
    assert np.isfinite(every).all()
    np.testing.assert_allclose(every[-1], last, atol=REUSE_ATOL, rtol=REUSE_RTOL)
    assert backend.n_past == 13


def test_reusing_a_prefix_equals_a_fresh_eval(backend, rng):
    prefix, tail, other = _ids(rng, 21), _ids(rng, 9), _ids(rng, 17)
    fresh = backend.eval(prefix + tail, 0, all_logits=True)
    backend.eval(prefix + other, 0)               # cache now holds a different continuation
    reused = backend.eval(tail, len(prefix), all_logits=True)
    assert backend.n_past == len(prefix) + len(tail)
    np.testing.assert_allclose(reused, fresh[len(prefix):], atol=REUSE_ATOL, rtol=REUSE_RTOL)
    # Token by token from the same prefix gives the same last logits too.
    backend.eval(prefix, 0)
    for k, t in enumerate(tail):
        last = backend.eval([t], len(prefix) + k)
    np.testing.assert_allclose(last, fresh[-1], atol=REUSE_ATOL, rtol=REUSE_RTOL)


def test_state_round_trip_restores_the_cache(backend, rng):
    prefix, tail = _ids(rng, 25), _ids(rng, 6)
    fresh = backend.eval(prefix + tail, 0, all_logits=True)
    backend.eval(prefix, 0)
    blob = backend.save_state()
    assert isinstance(blob, bytes) and blob
    backend.eval(_ids(rng, 40), 0)                # overwrite every position
    backend.load_state(blob, len(prefix))
    assert backend.n_past == len(prefix)
    restored = backend.eval(tail, len(prefix), all_logits=True)
    np.testing.assert_allclose(restored, fresh[len(prefix):], atol=REUSE_ATOL, rtol=REUSE_RTOL)


def test_eval_longer_than_one_batch_matches_token_by_token(smollm2_path):
    # 530 ids cross llama.cpp's 512-token batch; every backend must split or not, invisibly.
    for name in _installed():
        rng = np.random.default_rng(1234)     # the same ids for every backend, whatever their order
        b = _make(name, smollm2_path, n_ctx=544)
        try:
            ids = _ids(rng, 530)
            every = b.eval(ids, 0, all_logits=True)
            assert every.shape == (530, b.n_vocab)
            again = b.eval(ids[520:], 520, all_logits=True)
            np.testing.assert_allclose(again, every[520:], atol=REUSE_ATOL, rtol=REUSE_RTOL)
        finally:
            b.close()


def test_sliding_window_model_reuses_prefix_like_a_fresh_eval(gemma3_path):
    for name in _installed():
        rng = np.random.default_rng(1234)     # the same ids for every backend, whatever their order
        b = _make(name, gemma3_path, n_ctx=96)
        try:
            prefix, tail = _ids(rng, 30, 262144), _ids(rng, 5, 262144)
            fresh = b.eval(prefix + tail, 0, all_logits=True)
            b.eval(prefix + _ids(rng, 12, 262144), 0)
            reused = b.eval(tail, len(prefix), all_logits=True)
            expected = fresh[len(prefix):]
            assert (reused.argmax(axis=1) == expected.argmax(axis=1)).all()
            assert _kl_rows(expected, reused).max() < SPLIT_KL_MAX
        finally:
            b.close()


def _kl_rows(p_logits, q_logits):
    """KL(p || q) per row of two logit matrices, in float64."""
    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


def test_info_describes_the_backend(backend):
    info = backend.info()
    assert isinstance(info, BackendInfo)
    assert info.name == type(backend).name and info.n_ctx == N_CTX and info.n_vocab == backend.n_vocab
    assert info.threads == THREADS and info.kv_type == "f16"


@pytest.mark.parametrize("ids", [[], [5, 49152], [-1], [[1, 2]]])
def test_bad_ids_are_rejected_before_the_native_call(backend, ids):
    with pytest.raises(InvalidArgumentError):
        backend.eval(ids, 0)


def test_eval_past_the_context_raises_context_overflow(backend, rng):
    backend.eval(_ids(rng, 10), 0)
    with pytest.raises(ContextOverflowError, match=str(N_CTX)):
        backend.eval(_ids(rng, N_CTX - 5), 10)
    assert backend.n_past == 10          # nothing was dropped or evaluated


def test_start_beyond_the_cache_is_rejected(backend, rng):
    backend.eval(_ids(rng, 4), 0)
    with pytest.raises(InvalidArgumentError, match="start"):
        backend.eval(_ids(rng, 2), 7)


def test_state_that_does_not_fit_is_rejected_as_a_session_file_error(backend, rng):
    backend.eval(_ids(rng, 12), 0)
    blob = backend.save_state()
    with pytest.raises(SessionFileError):
        backend.load_state(blob, 11)
    with pytest.raises(SessionFileError):
        backend.load_state(blob[: len(blob) // 2], 12)
    with pytest.raises(InvalidArgumentError):
        backend.load_state(blob, -1)


def test_one_sequence_eval_batch_is_eval_and_other_sequences_are_refused(backend, rng):
    ids = _ids(rng, 11)
    expected = backend.eval(ids, 0)
    backend.eval(ids[:3], 0)
    (last,) = backend.eval_batch([SeqInput(0, ids[3:], 3)])
    np.testing.assert_allclose(last, expected, atol=REUSE_ATOL, rtol=REUSE_RTOL)
    assert backend.seq_n_past(0) == len(ids)
    for entries in ([], [SeqInput(backend.n_seq, ids, 0)], [SeqInput(0, ids, 0), SeqInput(0, ids, 0)]):
        with pytest.raises(InvalidArgumentError):
            backend.eval_batch(entries)
    with pytest.raises(InvalidArgumentError):
        backend.copy_seq(0, 0, len(ids) + 1)


N_SEQ = 4


@pytest.fixture(scope="module", params=[name for name in _installed() if backends.get(name).max_seqs >= N_SEQ])
def seqs_backend(request, smollm2_path):
    b = loading.prepare(smollm2_path, LoadConfig(backend=request.param, n_ctx=N_CTX, threads=THREADS,
                                                 n_seq=N_SEQ)).open()
    yield b
    b.close()


def test_sequences_stepped_together_match_each_evaluated_alone(seqs_backend, rng):
    b = seqs_backend
    assert b.n_seq == N_SEQ
    prompts, tokens = [_ids(rng, n) for n in (7, 12, 3, 9)], _ids(rng, N_SEQ)
    first = b.eval_batch([SeqInput(s, p, 0) for s, p in enumerate(prompts)])
    step = b.eval_batch([SeqInput(s, [t], len(p)) for s, (p, t) in enumerate(zip(prompts, tokens))])
    assert [b.seq_n_past(s) for s in range(N_SEQ)] == [len(p) + 1 for p in prompts]
    for s, (p, t) in enumerate(zip(prompts, tokens)):   # each alone, in sequence 0
        alone = b.eval(p + [t], 0, all_logits=True)
        np.testing.assert_allclose(first[s], alone[-2], atol=REUSE_ATOL, rtol=REUSE_RTOL)
        np.testing.assert_allclose(step[s], alone[-1], atol=REUSE_ATOL, rtol=REUSE_RTOL)


def test_a_prompt_shares_steps_with_the_decodes_of_another_sequence(seqs_backend, rng):
    b = seqs_backend
    running, arriving, (t1, t2) = _ids(rng, 10), _ids(rng, 15), _ids(rng, 2)
    b.eval_batch([SeqInput(2, running, 0)])
    got = b.eval_batch([SeqInput(2, [t1], 10), SeqInput(1, arriving[:6], 0)])
    got += b.eval_batch([SeqInput(1, arriving[6:], 6), SeqInput(2, [t2], 11)])
    assert b.seq_n_past(1) == 15 and b.seq_n_past(2) == 12
    decoded = b.eval(running + [t1, t2], 0, all_logits=True)
    prompt = b.eval(arriving, 0, all_logits=True)
    for row, expected in zip(got, (decoded[-2], prompt[5], prompt[-1], decoded[-1])):
        np.testing.assert_allclose(row, expected, atol=REUSE_ATOL, rtol=REUSE_RTOL)


def test_a_copied_prefix_continues_like_a_fresh_eval(seqs_backend, rng):
    b = seqs_backend
    shared, other, tail = _ids(rng, 20), _ids(rng, 7), _ids(rng, 5)
    b.eval_batch([SeqInput(2, shared + other, 0), SeqInput(3, _ids(rng, 30), 0)])
    b.copy_seq(2, 3, len(shared))
    assert b.seq_n_past(3) == len(shared) and b.seq_n_past(2) == len(shared) + len(other)
    (got,) = b.eval_batch([SeqInput(3, tail, len(shared))])
    np.testing.assert_allclose(got, b.eval(shared + tail, 0), atol=REUSE_ATOL, rtol=REUSE_RTOL)


def test_one_sequence_past_its_context_fails_the_step_before_anything_runs(seqs_backend, rng):
    b = seqs_backend
    b.eval_batch([SeqInput(1, _ids(rng, N_CTX - 2), 0), SeqInput(2, _ids(rng, 5), 0)])
    with pytest.raises(ContextOverflowError):
        b.eval_batch([SeqInput(2, _ids(rng, 3), 5), SeqInput(1, _ids(rng, 3), N_CTX - 2)])
    with pytest.raises(InvalidArgumentError, match="start"):
        b.eval_batch([SeqInput(1, _ids(rng, 1), N_CTX - 2), SeqInput(2, _ids(rng, 3), 6)])
    assert b.seq_n_past(1) == N_CTX - 2 and b.seq_n_past(2) == 5
    b.eval_batch([SeqInput(1, _ids(rng, 2), N_CTX - 2), SeqInput(2, _ids(rng, N_CTX - 5), 5)])
    assert b.seq_n_past(1) == b.seq_n_past(2) == N_CTX


@pytest.mark.parametrize("name", _installed())
def test_more_sequences_than_a_backend_holds_are_refused_before_loading(name, smollm2_path):
    cls = backends.get(name)
    with pytest.raises(InvalidArgumentError, match="n_seq"):
        loading.plan(smollm2_path, backend=name, n_ctx=N_CTX, threads=THREADS, n_seq=cls.max_seqs + 1)
