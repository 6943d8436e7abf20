"""The engine's forward pass against independent references.

- Tiny random F32 models of every supported architecture against a float64 numpy
  forward pass written in tests/tiny_gguf.py (covers qwen2, which has no real model here,
  and gemma3's sliding window with a window smaller than the sequence).
- The real SmolLM2 and Gemma-3 files against llama.cpp on the same file in the same run.
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
