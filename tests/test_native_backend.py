"""NativeBackend's contract: bad files and bad arguments are typed errors raised before
native code runs; the cache semantics (prefix reuse, save/load) hold; memory figures are exact."""
from __future__ import annotations

import numpy as np
import pytest

from edgesdk.backends.native import NativeBackend, memory_requirements
from edgesdk.errors import (
    ContextOverflowError,
    InvalidArgumentError,
    ModelFormatError,
    SessionFileError,
    UnsupportedModelError,
)
from tiny_gguf import TinyConfig, tiny_tensors, write_tiny

# Same f32 engine, same inputs, different batching: only summation order differs.
BATCHING_ATOL = 1e-4


@pytest.fixture
def tiny_path(tmp_path):
    path = tmp_path / "tiny-llama.gguf"
    write_tiny(path, TinyConfig())
    return path


def test_unsupported_architecture_is_named_with_the_supported_list(tmp_path):
    path = tmp_path / "falcon.gguf"
    write_tiny(path, TinyConfig(), arch_name="falcon")
    with pytest.raises(UnsupportedModelError, match=r"'falcon'.*llama, qwen2, gemma3"):
        NativeBackend(path, n_ctx=32, threads=1)


def test_missing_tensor_is_named(tmp_path):
    cfg = TinyConfig()
    tensors = tiny_tensors(cfg)
    del tensors["blk.1.ffn_up.weight"]
    path = tmp_path / "missing.gguf"
    write_tiny(path, cfg, tensors)
    with pytest.raises(ModelFormatError, match=r"missing tensor 'blk.1.ffn_up.weight'"):
        NativeBackend(path, n_ctx=32, threads=1)


def test_tensor_shape_disagreeing_with_metadata_is_rejected_with_both_shapes(tmp_path):
    cfg = TinyConfig()
    tensors = tiny_tensors(cfg)
    tensors["blk.0.attn_k.weight"] = tensors["blk.0.attn_k.weight"][:32]  # 32 rows, metadata implies 64
    path = tmp_path / "bad-shape.gguf"
    write_tiny(path, cfg, tensors)
    with pytest.raises(ModelFormatError, match=r"blk.0.attn_k.weight.*\(64, 32\).*\(64, 64\)"):
        NativeBackend(path, n_ctx=32, threads=1)


def test_unsupported_tensor_type_is_rejected(tmp_path):
    cfg = TinyConfig()
    tensors = tiny_tensors(cfg)
    tensors["blk.0.ffn_gate.weight"] = tensors["blk.0.ffn_gate.weight"].astype(np.float64)
    path = tmp_path / "f64.gguf"
    write_tiny(path, cfg, tensors)
    with pytest.raises(UnsupportedModelError, match=r"blk.0.ffn_gate.weight.*F64"):
        NativeBackend(path, n_ctx=32, threads=1)


def test_missing_hyperparameter_is_named(tmp_path):
    path = tmp_path / "no-heads.gguf"
    write_tiny(path, TinyConfig(), skip_meta=("llama.attention.head_count",))
    with pytest.raises(ModelFormatError, match=r"llama.attention.head_count"):
        NativeBackend(path, n_ctx=32, threads=1)


@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"n_ctx": 0}, InvalidArgumentError, "n_ctx"),
    ({"threads": 0}, InvalidArgumentError, "threads"),
    ({"kv_type": "q4_0"}, InvalidArgumentError, "kv_type"),
    ({"n_batch": -1}, InvalidArgumentError, "n_batch"),
])
def test_bad_settings_are_rejected(tiny_path, kwargs, error, pattern):
    args = {"n_ctx": 32, "threads": 1} | kwargs
    with pytest.raises(error, match=pattern):
        NativeBackend(tiny_path, **args)


def test_bad_ids_and_positions_are_rejected_before_the_engine_runs(tiny_path):
    with NativeBackend(tiny_path, n_ctx=16, threads=1) as be:
        with pytest.raises(InvalidArgumentError, match="non-empty"):
            be.eval([], 0)
        with pytest.raises(InvalidArgumentError, match=r"token id 97 at index 1 is out of range \[0, 97\)"):
            be.eval([1, 97], 0)
        with pytest.raises(InvalidArgumentError, match="token id -1"):
            be.eval([-1], 0)
        with pytest.raises(ContextOverflowError, match="17 exceeds the context of 16"):
            be.eval(list(range(17)), 0)
        be.eval([1, 2, 3], 0)
        with pytest.raises(InvalidArgumentError, match="start 5 is past the 3 cached"):
            be.eval([4], 5)
        with pytest.raises(ContextOverflowError):
            be.eval(list(range(14)), 3)
        assert be.n_past == 3  # rejected calls leave the cache alone
    with pytest.raises(InvalidArgumentError, match="closed"):
        be.eval([1], 0)


def test_prefix_reuse_equals_a_fresh_evaluation(tiny_path):
    ids = [5, 17, 3, 88, 41, 2, 60, 9]
    with NativeBackend(tiny_path, n_ctx=32, threads=2, n_batch=3) as be:
        full = be.eval(ids, 0, all_logits=True)
        be.eval([70, 71, 72], 2)  # diverge after 2 tokens, then come back
        again = be.eval(ids[2:], 2, all_logits=True)
        assert be.n_past == len(ids)
    np.testing.assert_allclose(again, full[2:], atol=BATCHING_ATOL)


def test_saved_state_restores_the_same_next_logits(tiny_path):
    with NativeBackend(tiny_path, n_ctx=32, threads=1) as be:
        be.eval([5, 6, 7, 8], 0)
        blob = be.save_state()
        expected = be.eval([9], 4)
        be.eval([1, 1, 1, 1, 1, 1], 0)
        be.load_state(blob, 4)
        assert be.n_past == 4
        np.testing.assert_array_equal(be.eval([9], 4), expected)
        with pytest.raises(SessionFileError, match="n_past=5"):
            be.load_state(blob, 5)
        with pytest.raises(SessionFileError, match="shorter"):
            be.load_state(blob[:8], 4)
        with pytest.raises(SessionFileError):
            be.load_state(blob[:-1], 4)


@pytest.mark.parametrize("kv_type, bytes_per_value", [("f16", 2.0), ("q8_0", 34 / 32)])
def test_memory_requirements_match_the_kv_layout_and_the_loaded_engine(tiny_path, kv_type, bytes_per_value):
    cfg = TinyConfig()
    req = memory_requirements(tiny_path, n_ctx=64, kv_type=kv_type, n_batch=8, threads=2)
    kv_dim = cfg.n_head_kv * cfg.head_dim
    assert req["kv_cache"] == int(2 * cfg.n_layer * 64 * kv_dim * bytes_per_value)
    assert req["weights_owned"] >= 0 and req["scratch"] > 8 * cfg.n_embd * 4
    tensors = tiny_tensors(cfg).values()
    # F32 file: every matrix read from the map; the vectors are copies (a read in the map during a
    # pass would map the released pages around it again).
    assert req["weights_mapped"] == sum(a.size for a in tensors if a.ndim == 2) * 4
    assert req["weights_owned"] == sum(a.size for a in tensors if a.ndim == 1) * 4
    with NativeBackend(tiny_path, n_ctx=64, threads=2, kv_type=kv_type, n_batch=8) as be:
        assert be.memory_used() == req
