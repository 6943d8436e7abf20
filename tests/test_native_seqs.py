"""Several sequences in the native engine: eval_batch against each sequence alone and against
the float64 forward pass of tests/tiny_gguf.py, mixed prompt + decode steps, passes that split
a step, prefix copies, per-sequence state, bad input, and the memory plan of slots x context.
(The contract every backend keeps is in tests/test_backend_contract.py.)
"""
from __future__ import annotations

import numpy as np
import pytest

from edgesdk import loading
from edgesdk.backends.base import SeqInput
from edgesdk.backends.native import NativeBackend, memory_requirements
from edgesdk.errors import ContextOverflowError, InvalidArgumentError, MemoryBudgetError
from tiny_gguf import TinyConfig, reference_logits, write_tiny

# The same row evaluated in a step of N sequences (GEMM, m = N) and alone (GEMV, m = 1): both
# quantize each activation row by itself and every output is one thread's dot product, so they
# agree to summation order at most (measured equal to the bit on AVX-512 and AVX2).
BATCH_VS_ALONE_ATOL = 1e-4
# f32 engine with an f16 KV cache against float64 (as tests/test_engine_parity.py).
TINY_F16_ATOL = 1.5e-2

LLAMA = TinyConfig(arch="llama")
# Window 5 with sequences of 9-14 tokens: every sequence crosses its own window.
GEMMA3 = TinyConfig(arch="gemma3", n_layer=6, n_head_kv=1, head_dim=64, rope_base=1e6, n_swa=5)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request, tmp_path_factory):
    cfg = {"llama": LLAMA, "gemma3": GEMMA3}[request.param]
    path = tmp_path_factory.mktemp("seqs") / f"{request.param}.gguf"
    return cfg, write_tiny(path, cfg), path


def _prompts(cfg, lengths, seed=5):
    rng = np.random.default_rng(seed)
    return [[int(i) for i in rng.integers(0, cfg.n_vocab, n)] for n in lengths]


def test_sequences_in_one_step_match_the_float64_forward_of_each(tiny):
    cfg, tensors, path = tiny
    prompts = _prompts(cfg, (9, 14, 3, 11))
    # n_batch 8: the 37 prompt rows go through in five passes that cut sequences apart
    with NativeBackend(path, n_ctx=32, threads=2, n_batch=8, n_seq=4) as be:
        first = be.eval_batch([SeqInput(s, p, 0) for s, p in enumerate(prompts)])
        nexts = [int(np.argmax(row)) for row in first]
        step = be.eval_batch([SeqInput(s, [t], len(p)) for s, (t, p) in enumerate(zip(nexts, prompts))])
        assert [be.seq_n_past(s) for s in range(4)] == [len(p) + 1 for p in prompts]
    for s, p in enumerate(prompts):
        ref = reference_logits(cfg, tensors, p + [nexts[s]])
        np.testing.assert_allclose(first[s], ref[len(p) - 1], atol=TINY_F16_ATOL)
        np.testing.assert_allclose(step[s], ref[-1], atol=TINY_F16_ATOL)


def test_a_decode_step_of_n_sequences_equals_each_sequence_decoded_alone(tiny):
    cfg, _, path = tiny
    prompts = _prompts(cfg, (7, 12, 5, 9, 10), seed=8)
    tokens = [int(t) for t in np.random.default_rng(9).integers(0, cfg.n_vocab, len(prompts))]
    with NativeBackend(path, n_ctx=32, threads=2, n_seq=5) as be:
        alone = []
        for p, t in zip(prompts, tokens):   # sequence 0 alone: a prompt, then one token (m = 1)
            be.eval(p, 0)
            alone.append(be.eval([t], len(p)))
        for s, p in enumerate(prompts):
            be.eval_batch([SeqInput(s, p, 0)])
        together = be.eval_batch([SeqInput(s, [t], len(p)) for s, (p, t) in enumerate(zip(prompts, tokens))])
    np.testing.assert_allclose(np.array(together), np.array(alone), atol=BATCH_VS_ALONE_ATOL)


def test_a_prompt_chunk_shares_a_step_with_decodes_of_other_sequences(tiny):
    cfg, tensors, path = tiny
    (running,) = _prompts(cfg, (10,), seed=11)
    (arriving,) = _prompts(cfg, (13,), seed=12)
    with NativeBackend(path, n_ctx=32, threads=2, n_batch=6, n_seq=3) as be:
        be.eval_batch([SeqInput(0, running, 0), SeqInput(2, arriving[:5], 0)])
        # seq 0 decodes one token, seq 1 arrives with its whole prompt, seq 2 sends its next chunk
        got = be.eval_batch([SeqInput(0, [7], 10), SeqInput(1, arriving[:4], 0), SeqInput(2, arriving[5:], 5)])
        assert [be.seq_n_past(s) for s in range(3)] == [11, 4, 13]
    np.testing.assert_allclose(got[0], reference_logits(cfg, tensors, running + [7])[-1], atol=TINY_F16_ATOL)
    np.testing.assert_allclose(got[1], reference_logits(cfg, tensors, arriving[:4])[-1], atol=TINY_F16_ATOL)
    np.testing.assert_allclose(got[2], reference_logits(cfg, tensors, arriving)[-1], atol=TINY_F16_ATOL)


def test_a_copied_prefix_continues_as_a_fresh_evaluation_would(tiny):
    cfg, tensors, path = tiny
    (shared,) = _prompts(cfg, (9,), seed=13)
    tails = _prompts(cfg, (4, 6), seed=14)
    with NativeBackend(path, n_ctx=32, threads=2, n_seq=3) as be:
        be.eval(shared + [1, 2, 3], 0)          # sequence 0 holds more than the prefix
        be.copy_seq(0, 1, len(shared))
        be.copy_seq(0, 2, len(shared))
        assert be.seq_n_past(1) == be.seq_n_past(2) == len(shared)
        got = be.eval_batch([SeqInput(1, tails[0], len(shared)), SeqInput(2, tails[1], len(shared))])
        fresh = be.eval(shared + tails[1], 0)
    np.testing.assert_allclose(got[1], fresh, atol=BATCH_VS_ALONE_ATOL)
    np.testing.assert_allclose(got[0], reference_logits(cfg, tensors, shared + tails[0])[-1], atol=TINY_F16_ATOL)


def test_one_sequence_evaluating_leaves_the_others_untouched(tiny):
    cfg, _, path = tiny
    a, b = _prompts(cfg, (8, 12), seed=15)
    with NativeBackend(path, n_ctx=32, threads=2, n_seq=2) as be:
        be.eval_batch([SeqInput(0, a, 0), SeqInput(1, b, 0)])
        expected = be.eval_batch([SeqInput(0, [3], 8)])[0]
        for start in (0, 5, 12):                # rewrite sequence 1 from several points
            be.eval_batch([SeqInput(1, b[start:] or [4], start)])
        assert be.seq_n_past(0) == 9
        np.testing.assert_allclose(be.eval_batch([SeqInput(0, [3], 8)])[0], expected, atol=0)


def test_a_sequence_state_restores_into_another_sequence(tiny):
    cfg, _, path = tiny
    (p,) = _prompts(cfg, (10,), seed=16)
    with NativeBackend(path, n_ctx=32, threads=2, n_seq=3) as be:
        be.eval_batch([SeqInput(2, p, 0)])
        blob = be.save_state(seq=2)
        expected = be.eval_batch([SeqInput(2, [5], 10)])[0]
        be.load_state(blob, 10, seq=1)
        assert be.seq_n_past(1) == 10 and be.n_past == 0
        np.testing.assert_allclose(be.eval_batch([SeqInput(1, [5], 10)])[0], expected, atol=0)
        with pytest.raises(InvalidArgumentError, match="outside"):
            be.save_state(seq=3)


@pytest.fixture
def four(tmp_path):
    path = tmp_path / "llama.gguf"
    write_tiny(path, LLAMA)
    with NativeBackend(path, n_ctx=16, threads=1, n_seq=4) as be:
        yield be


@pytest.mark.parametrize("entries, pattern", [
    ([], "at least one"),
    ([SeqInput(4, [1], 0)], r"outside \[0, 4\)"),
    ([SeqInput(-1, [1], 0)], "outside"),
    ([SeqInput(True, [1], 0)], "outside"),
    ([SeqInput(1, [1], 0), SeqInput(1, [2], 0)], "twice"),
    ([SeqInput(0, [], 0)], "non-empty"),
    ([SeqInput(0, [97], 0)], "out of range"),
    ([SeqInput(1, [1], 1)], "past the 0 cached positions of sequence 1"),
    ([(0, [1], 0)], "SeqInput"),
])
def test_bad_steps_are_refused_before_the_engine_and_change_nothing(four, entries, pattern):
    four.eval_batch([SeqInput(0, [1, 2, 3], 0)])
    with pytest.raises(InvalidArgumentError, match=pattern):
        four.eval_batch(entries)
    assert [four.seq_n_past(s) for s in range(4)] == [3, 0, 0, 0]


def test_a_sequence_past_its_context_is_refused_while_others_have_room(four):
    four.eval_batch([SeqInput(0, list(range(14)), 0), SeqInput(1, [1], 0)])
    with pytest.raises(ContextOverflowError, match="context of 16 of sequence 0"):
        four.eval_batch([SeqInput(1, [2], 1), SeqInput(0, [1, 2, 3], 14)])
    assert [four.seq_n_past(s) for s in range(2)] == [14, 1]
    four.eval_batch([SeqInput(0, [1, 2], 14), SeqInput(1, list(range(15)), 1)])  # each fills its own 16
    assert [four.seq_n_past(s) for s in range(2)] == [16, 16]


@pytest.mark.parametrize("src, dst, n, pattern", [(0, 4, 1, "outside"), (0, 1, 4, "holds 3 positions, not 4"),
                                                  (0, 1, -1, "non-negative"), (0, 1, 1.5, "non-negative")])
def test_bad_copies_are_refused(four, src, dst, n, pattern):
    four.eval_batch([SeqInput(0, [1, 2, 3], 0)])
    with pytest.raises(InvalidArgumentError, match=pattern):
        four.copy_seq(src, dst, n)
    assert four.seq_n_past(dst if 0 <= dst < 4 else 1) == 0


# ------------------------------------------------------------------ memory


def test_kv_memory_counts_every_sequence_and_the_loaded_engine_agrees(tmp_path):
    path = tmp_path / "llama.gguf"
    write_tiny(path, LLAMA)
    one = memory_requirements(path, n_ctx=64, n_seq=1)
    five = memory_requirements(path, n_ctx=64, n_seq=5)
    assert five["kv_cache"] == 5 * one["kv_cache"]
    assert five["weights_owned"] == one["weights_owned"]
    with NativeBackend(path, n_ctx=64, threads=1, n_seq=5) as be:
        assert be.memory_used() == five


def test_the_planner_refuses_slots_times_context_that_do_not_fit(smollm2_path):
    one = loading.plan(smollm2_path, backend="native", n_ctx=2048, threads=1)
    eight = loading.plan(smollm2_path, backend="native", n_ctx=2048, threads=1, n_seq=8)
    assert eight.kv_cache == 8 * one.kv_cache
    budget = one.total + 2 * one.kv_cache     # room for three slots, not eight
    with pytest.raises(MemoryBudgetError, match="8 sequences"):
        loading.fit(smollm2_path, backend="native", n_ctx=2048, threads=1, n_seq=8, max_memory=budget)
    assert loading.fit(smollm2_path, backend="native", n_ctx=2048, threads=1, n_seq=2,
                       max_memory=budget).n_ctx == 2048
