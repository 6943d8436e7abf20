"""The engine's forward pass against independent references.

- Tiny random F32 models of every supported architecture against a float64 numpy
  forward pass written in tests/tiny_gguf.py (covers qwen2, which has no real model here,
  and gemma3's sliding window with a window smaller than the sequence).
- The real SmolLM2 and Gemma-3 files' greedy text against llama.cpp on the same file in the
  same run, and against our own scalar path on every ISA path.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgesdk import _native
from edgesdk.backends.native import NativeBackend
from tiny_gguf import TinyConfig, reference_logits, write_tiny

# f32 engine with an f16 KV cache against float64: f16 rounding of K/V (2^-11 relative)
# through a few layers of unit-scale activations.
TINY_F16_ATOL = 1.5e-2
# q8_0 cache: 1/254 relative rounding per value.
TINY_Q8_ATOL = 1.5e-1

TINY_CONFIGS = {
    "llama": TinyConfig(arch="llama"),
    "llama-untied": TinyConfig(arch="llama", tied=False, n_head_kv=4),
    "qwen2": TinyConfig(arch="qwen2", tied=False),
    "gemma3": TinyConfig(arch="gemma3", n_layer=6, n_head_kv=1, head_dim=64, rope_base=1e6, n_swa=5),
}


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_tiny_model_logits_match_numpy_forward_pass(tmp_path, name, kv_type):
    cfg = TINY_CONFIGS[name]
    path = tmp_path / f"{name}.gguf"
    tensors = write_tiny(path, cfg)
    ids = list(np.random.default_rng(3).integers(0, cfg.n_vocab, 13))
    ref = reference_logits(cfg, tensors, ids)
    with NativeBackend(path, n_ctx=32, threads=2, kv_type=kv_type, n_batch=4) as be:
        batched = be.eval(ids, 0, all_logits=True)
        # token by token (the GEMV path) after a 6-token prompt
        be.eval(ids[:6], 0)
        stepped = np.array([be.eval([t], 6 + i) for i, t in enumerate(ids[6:])])
    atol = TINY_F16_ATOL if kv_type == "f16" else TINY_Q8_ATOL
    np.testing.assert_allclose(batched, ref, atol=atol)
    np.testing.assert_allclose(stepped, ref[6:], atol=atol)


# ------------------------------------------------------- real models vs llama.cpp
# (Their teacher-forced logits and perplexity are held to the exact math, not to llama.cpp:
# tests/test_fidelity.py.)

N_CTX = 512
GREEDY_TOKENS = 32
# One greedy flip ends the comparison; it must be where llama.cpp's own top two are closer than
# its own rounding noise moves them. Measured, llama.cpp batched vs token-by-token on 256
# tokens of prose and code per model, the change of the top-two margin: p99 0.32 / 0.49 /
# 0.45 / 0.89, max 0.42 / 0.57 / 0.79 / 2.05 (ours against llama.cpp batched: p99 0.41 / 0.52
# / 0.61 / 1.25). A flip where llama.cpp leads by more than this is a failure.
GREEDY_TIE_MARGIN = 1.0


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def engines(request, smollm2_path, gemma3_path):
    from llamacpp_ref import load_llama

    path = smollm2_path if request.param == "smollm2" else gemma3_path
    ref = load_llama(path, n_ctx=N_CTX)
    ours = NativeBackend(path, n_ctx=N_CTX, threads=2)
    yield request.param, ref, ours
    ours.close()
    ref.close()


def greedy(step, prompt_ids, n) -> tuple[list, list]:
    """n greedy tokens; step(ids, start) returns the last position's logits. Also the logits seen."""
    out, seen = [], []
    logits = step(prompt_ids, 0)
    pos = len(prompt_ids)
    for _ in range(n):
        seen.append(logits)
        token = int(np.argmax(logits))
        out.append(token)
        logits = step([token], pos)
        pos += 1
    return out, seen


def llama_step(llm):
    def step(ids, start):
        if start == 0:
            llm.reset()
        llm.eval(list(ids))
        return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    return step


PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "Once upon a time, a little robot"]


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_generation_equals_llama_cpp_until_a_tie(engines, prompt):
    name, ref, ours = engines
    ids = ref.tokenize(prompt.encode())
    expected, ref_logits = greedy(llama_step(ref), ids, GREEDY_TOKENS)
    got, _ = greedy(lambda t, s: ours.eval(t, s), ids, GREEDY_TOKENS)
    for i, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            margin = ref_logits[i][a] - ref_logits[i][b]
            assert margin < GREEDY_TIE_MARGIN, (
                f"{name}: token {i} differs ({a} vs {b}) with a llama.cpp margin of {margin:.3f}")
            break
    print(f"{name} {prompt!r}: {next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), GREEDY_TOKENS)}"
          f" leading tokens equal")


# Same engine, different float rounding (kernels' SIMD accumulation order, the vector exp):
# each matmul re-quantizes its input to 8 bits, so an ulp-level difference flips an int8 here
# and there and the flips grow layer by layer; a greedy flip can happen where
# scalar's top two are as close as llama.cpp's own noise (measured: Gemma-3, "The weather
# today is", token 4, AVX2 and AVX-512 with repacked weights, scalar margin 0.28).
ISA_TIE_MARGIN = GREEDY_TIE_MARGIN


@pytest.mark.slow
def test_every_isa_path_gives_the_scalar_greedy_text(smollm2_path, gemma3_path):
    from llamacpp_ref import load_llama

    before = _native.isa_current()
    try:
        for path in (smollm2_path, gemma3_path):
            ids = load_llama(path, n_ctx=64, vocab_only=True).tokenize(b"The weather today is")
            runs = {}
            for isa in _native.isa_available():
                _native.isa_set(isa)
                with NativeBackend(path, n_ctx=64, threads=2) as be:
                    runs[isa] = greedy(lambda t, s: be.eval(t, s), ids, 8)
            scalar_tokens, scalar_logits = runs["scalar"]
            for isa, (tokens, _) in runs.items():
                for i, (a, b) in enumerate(zip(scalar_tokens, tokens)):
                    if a != b:
                        margin = scalar_logits[i][a] - scalar_logits[i][b]
                        print(f"{path.name if hasattr(path, 'name') else path} {isa}: token {i} differs "
                              f"({a} vs {b}), scalar margin {margin:.4f}")
                        assert margin < ISA_TIE_MARGIN, (isa, i, a, b, margin)
                        break
    finally:
        _native.isa_set(before)
