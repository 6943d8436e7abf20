"""RoPE scaling read from GGUF metadata: YaRN on tiny random F32 models, against llama.cpp on
the same file and against the float64 forward pass of tests/tiny_gguf.py (which applies YaRN
as Hugging Face transformers defines it), over sequences well past the original context so
that every part of YaRN's ramp matters; and bad YaRN metadata rejected with the key named.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgesdk.backends.native import NativeBackend, memory_requirements
from edgesdk.errors import ModelFormatError
from tiny_gguf import TinyConfig, YarnConfig, reference_logits, write_tiny

ORIG_CTX = 32      # original_context_length: small, so that most of the sequence lies beyond it
N_CTX = 128
N_TOKENS = 120
N_BATCH = 48       # the batched pass crosses batch boundaries
STEP_FROM = 40     # token-by-token (GEMV path) from here on
GGML_TYPE_F32 = 0  # llama.cpp's KV cache type for the reference: f32, nothing rounded

# Our K/V cache is f16 (llama.cpp's is f32 here and matches the float64 reference to 1e-5):
# rounding K and V to f16 moves these tiny models' logits by up to ~6e-3 (measured, with
# or without scaling); scaling RoPE wrongly (linear instead of YaRN, or none) moves them by
# more than 1 (measured: 6.4 and 8.2), so the bar sits well between the two.
YARN_ATOL = 1.5e-2
# llama.cpp with an f32 cache against float64 numpy: measured 3e-6 (qwen2) to 9e-6 (llama).
REFERENCES_ATOL = 1e-4
# A scaling other than YaRN must miss llama.cpp's YaRN logits by this much, or the
# comparison above could not tell them apart.
WRONG_SCALING_MIN_DIFF = 100 * YARN_ATOL

YARN = YarnConfig(factor=4.0, original_context_length=ORIG_CTX)
CONFIGS = {
    "llama": TinyConfig(arch="llama", yarn=YARN),
    # llama.cpp's qwen2 needs n_head * head_dim == n_embd
    "qwen2": TinyConfig(arch="qwen2", tied=False, head_dim=16, yarn=YARN),
}


def token_ids(cfg: TinyConfig, n: int = N_TOKENS) -> list:
    return [int(t) for t in np.random.default_rng(3).integers(0, cfg.n_vocab, n)]


def llama_cpp_logits(path, ids, **context_params) -> np.ndarray:
    from llamacpp_ref import load_llama

    llm = load_llama(path, n_ctx=N_CTX, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, **context_params)
    try:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)], dtype=np.float64)
    finally:
        llm.close()


def native_logits(path, ids) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the whole sequence in batches, and of positions STEP_FROM.. token by token."""
    with NativeBackend(path, n_ctx=N_CTX, threads=2, n_batch=N_BATCH) as be:
        batched = be.eval(ids, 0, all_logits=True).astype(np.float64)
        be.eval(ids[:STEP_FROM], 0)
        stepped = np.array([be.eval([t], STEP_FROM + i) for i, t in enumerate(ids[STEP_FROM:])], dtype=np.float64)
    return batched, stepped


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_yarn_logits_match_llama_cpp_beyond_the_original_context(tmp_path, arch):
    cfg = CONFIGS[arch]
    path = tmp_path / f"{arch}-yarn.gguf"
    tensors = write_tiny(path, cfg, vocab=True)
    ids = token_ids(cfg)
    expected = llama_cpp_logits(path, ids)
    batched, stepped = native_logits(path, ids)
    numpy_ref = reference_logits(cfg, tensors, ids)
    print(f"{arch} yarn: max |native - llama.cpp| {np.abs(batched - expected).max():.2e} (batched), "
          f"{np.abs(stepped - expected[STEP_FROM:]).max():.2e} (token by token); "
          f"|llama.cpp - float64 numpy| {np.abs(expected - numpy_ref).max():.2e}")
    np.testing.assert_allclose(expected, numpy_ref, atol=REFERENCES_ATOL)
    np.testing.assert_allclose(batched, expected, atol=YARN_ATOL)
    np.testing.assert_allclose(stepped, expected[STEP_FROM:], atol=YARN_ATOL)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_linear_or_no_scaling_would_miss_llama_cpp_yarn_logits(tmp_path, arch):
    # The same weights with YaRN's ramp off (ext_factor 0: linear interpolation by the same
    # factor) and with no scaling at all: the engine follows the file, and both land far
    # from llama.cpp's YaRN logits, so the test above checks YaRN itself.
    cfg = CONFIGS[arch]
    yarn_path = tmp_path / "yarn.gguf"
    tensors = write_tiny(yarn_path, cfg, vocab=True)
    ids = token_ids(cfg)
    expected = llama_cpp_logits(yarn_path, ids)
    variants = {"linear": TinyConfig(**{**cfg.__dict__, "yarn": YarnConfig(factor=YARN.factor,
                                                                          original_context_length=ORIG_CTX,
                                                                          ext_factor=0.0)}),
                "none": TinyConfig(**{**cfg.__dict__, "yarn": None})}
    for name, other in variants.items():
        path = tmp_path / f"{name}.gguf"
        write_tiny(path, other, tensors)
        got, _ = native_logits(path, ids)
        np.testing.assert_allclose(got, reference_logits(other, tensors, ids), atol=YARN_ATOL)
        miss = np.abs(got - expected).max()
        print(f"{arch} {name} scaling vs llama.cpp yarn: max diff {miss:.3f}")
        assert miss > WRONG_SCALING_MIN_DIFF, name


def test_yarn_ramp_settings_from_metadata_match_llama_cpp(tmp_path):
    yarn = YarnConfig(factor=6.0, original_context_length=24, ext_factor=0.5, beta_fast=16.0, beta_slow=2.0)
    cfg = TinyConfig(arch="llama", yarn=yarn)
    path = tmp_path / "yarn-settings.gguf"
    tensors = write_tiny(path, cfg, vocab=True)
    ids = token_ids(cfg)
    # llama.cpp reads yarn_* metadata only for grok; for llama they are context parameters.
    expected = llama_cpp_logits(path, ids, yarn_ext_factor=yarn.ext_factor, yarn_beta_fast=yarn.beta_fast,
                                yarn_beta_slow=yarn.beta_slow)
    np.testing.assert_allclose(expected, reference_logits(cfg, tensors, ids), atol=REFERENCES_ATOL)
    batched, stepped = native_logits(path, ids)
    np.testing.assert_allclose(batched, expected, atol=YARN_ATOL)
    np.testing.assert_allclose(stepped, expected[STEP_FROM:], atol=YARN_ATOL)


@pytest.mark.parametrize("name, cfg", [
    # transformers' attention_factor (converted to yarn_attn_factor) replaces 0.1 ln(s) + 1;
    # llama.cpp 0.3.36 ignores the key for llama, so numpy is the reference here.
    ("attn-factor", TinyConfig(arch="llama", yarn=YarnConfig(factor=4.0, original_context_length=ORIG_CTX,
                                                             attn_factor=1.2))),
    ("old-orig-ctx-key", TinyConfig(arch="llama", yarn=YarnConfig(factor=3.0, original_context_length=20,
                                                                  orig_ctx_key="orig_ctx_len"))),
    ("no-orig-ctx", TinyConfig(arch="llama", context_length=40,  # falls back to context_length
                               yarn=YarnConfig(factor=3.0, original_context_length=None))),
    # gemma3: only the global layers (every 6th) are scaled
    ("gemma3", TinyConfig(arch="gemma3", n_layer=6, n_head_kv=1, head_dim=64, rope_base=1e6, n_swa=5, yarn=YARN)),
])
def test_yarn_metadata_variants_match_numpy_forward_pass(tmp_path, name, cfg):
    path = tmp_path / f"{name}.gguf"
    tensors = write_tiny(path, cfg)
    ids = token_ids(cfg, 80)
    batched, stepped = native_logits(path, ids)
    ref = reference_logits(cfg, tensors, ids)
    np.testing.assert_allclose(batched, ref, atol=YARN_ATOL)
    np.testing.assert_allclose(stepped, ref[STEP_FROM:], atol=YARN_ATOL)


@pytest.mark.parametrize("field, value, key", [
    ("factor", 0.0, "rope.scaling.factor"),
    ("factor", -2.0, "rope.scaling.factor"),
    ("factor", math.nan, "rope.scaling.factor"),
    ("factor", math.inf, "rope.scaling.factor"),
    ("original_context_length", 0, "rope.scaling.original_context_length"),
    ("ext_factor", -1.0, "rope.scaling.yarn_ext_factor"),
    ("ext_factor", math.nan, "rope.scaling.yarn_ext_factor"),
    ("attn_factor", 0.0, "rope.scaling.yarn_attn_factor"),
    ("beta_fast", math.nan, "rope.scaling.yarn_beta_fast"),
    ("beta_slow", -1.0, "rope.scaling.yarn_beta_slow"),
])
def test_bad_yarn_metadata_is_rejected_naming_the_key(tmp_path, field, value, key):
    path = tmp_path / "bad.gguf"
    write_tiny(path, TinyConfig(yarn=YarnConfig(**{**YARN.__dict__, field: value})))
    with pytest.raises(ModelFormatError, match=key):
        NativeBackend(path, n_ctx=N_CTX, threads=1)
    with pytest.raises(ModelFormatError, match=key):
        memory_requirements(path, n_ctx=N_CTX)


def test_yarn_without_a_factor_is_rejected(tmp_path):
    path = tmp_path / "no-factor.gguf"
    write_tiny(path, TinyConfig(yarn=YARN), skip_meta=("llama.rope.scaling.factor",))
    with pytest.raises(ModelFormatError, match="rope.scaling.factor"):
        NativeBackend(path, n_ctx=N_CTX, threads=1)


def test_yarn_needs_no_memory_beyond_plain_rope(tmp_path):
    plain, yarn = tmp_path / "plain.gguf", tmp_path / "yarn.gguf"
    tensors = write_tiny(plain, TinyConfig())
    write_tiny(yarn, TinyConfig(yarn=YARN), tensors)
    assert memory_requirements(yarn, n_ctx=N_CTX) == memory_requirements(plain, n_ctx=N_CTX)
