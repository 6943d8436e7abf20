"""edgesdk.shape: hyperparameters read once, every count bounded, every float checked; hostile values."""
from __future__ import annotations

import math
import subprocess
import sys
import time

import gguf as gguf_pkg
import numpy as np
import pytest

import edgesdk
from edgesdk import gguf
from edgesdk.errors import ModelFormatError, NumericError, UnsupportedModelError
from edgesdk.shape import read_shape
from tiny_gguf import TinyConfig, tiny_tensors, write_tiny

# A lying count must be refused before anything is sized from it: well under a second and a
# few MiB, where building per-layer tables first took 12 s and 2.2 GB for a count of 10^6.
HOSTILE_COUNT_SECONDS = 5.0


def _shape(path):
    with gguf.open(path) as f:
        return read_shape(f)


def test_the_tiny_model_s_shape_is_its_metadata(tmp_path):
    cfg = TinyConfig()
    write_tiny(tmp_path / "m.gguf", cfg)
    s = _shape(tmp_path / "m.gguf")
    assert (s.architecture, s.n_layer, s.n_embd, s.n_ff, s.n_head, s.n_head_kv, s.head_dim_k, s.n_vocab) == \
        ("llama", cfg.n_layer, cfg.n_embd, cfg.n_ff, cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_vocab)
    assert s.context_length == cfg.context_length and s.norm_eps == pytest.approx(cfg.eps)
    assert s.rope_style == "norm" and s.activation == "silu" and s.per_layer == {}


@pytest.mark.parametrize("count", [2**32 - 1, 10**6, 3])
def test_a_block_count_above_the_file_s_tensors_is_refused_at_once(tmp_path, count):
    path = tmp_path / "lying.gguf"
    cfg = TinyConfig(n_layer=1)
    write_tiny(path, cfg, override_meta={"llama.block_count": count})
    n_tensors = len(tiny_tensors(cfg))
    started = time.monotonic()
    if count > n_tensors:
        with pytest.raises(ModelFormatError, match=f"block_count'? is {count}.*only {n_tensors} tensors"):
            _shape(path)
    else:   # within the bound: the engine's tensor check names the first missing layer
        with pytest.raises(ModelFormatError, match="missing tensor 'blk.1."):
            edgesdk.load(str(path), backend="native", n_ctx=32, threads=1)
    assert time.monotonic() - started < HOSTILE_COUNT_SECONDS


def test_edgesdk_info_on_a_lying_block_count_is_one_error_line(tmp_path):
    path = tmp_path / "lying.gguf"
    write_tiny(path, TinyConfig(), override_meta={"llama.block_count": 2**32 - 1})
    out = subprocess.run([sys.executable, "-m", "edgesdk.cli", "info", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "block_count" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("key,value", [
    ("llama.rope.freq_base", math.nan), ("llama.rope.freq_base", 0.0), ("llama.rope.freq_base", -10000.0),
    ("llama.rope.freq_base", math.inf),
    ("llama.attention.layer_norm_rms_epsilon", -1.0), ("llama.attention.layer_norm_rms_epsilon", math.nan),
    ("llama.attention.layer_norm_rms_epsilon", 0.0),
])
def test_non_finite_or_out_of_range_floats_are_refused_naming_the_key(tmp_path, key, value):
    path = tmp_path / "bad.gguf"
    write_tiny(path, TinyConfig(), override_meta={key: value})
    with pytest.raises(ModelFormatError, match=key.replace(".", r"\.")):
        _shape(path)


@pytest.mark.parametrize("key,value,pattern", [
    ("llama.attention.head_count", 10**6, "head_count.*more than this file can hold"),
    ("llama.attention.head_count_kv", 3, "not a multiple"),
    ("llama.attention.key_length", 10**6, "key_length.*more than"),
    ("llama.embedding_length", 0, "embedding_length.*positive"),
    ("llama.context_length", 2**32 - 1, "context_length.*more than"),
    ("llama.feed_forward_length", ("96", gguf_pkg.GGUFValueType.STRING), "not an integer"),
])
def test_impossible_counts_are_refused_naming_the_key(tmp_path, key, value, pattern):
    path = tmp_path / "bad.gguf"
    write_tiny(path, TinyConfig(), override_meta={key: value})
    with pytest.raises(ModelFormatError, match=pattern):
        _shape(path)


def test_a_per_layer_array_keeps_its_maximum_and_the_native_engine_refuses_it(tmp_path):
    path = tmp_path / "per-layer.gguf"
    cfg = TinyConfig()
    write_tiny(path, cfg, override_meta={
        "llama.feed_forward_length": ([96, 64], gguf_pkg.GGUFValueType.ARRAY)})
    s = _shape(path)
    assert s.n_ff == 96 and s.per_layer == {"feed_forward_length": (96, 64)}
    with pytest.raises(UnsupportedModelError, match="feed_forward_length varies per layer"):
        edgesdk.load(str(path), backend="native", n_ctx=32, threads=1)


def test_a_per_layer_array_of_the_wrong_length_is_refused(tmp_path):
    path = tmp_path / "per-layer.gguf"
    write_tiny(path, TinyConfig(), override_meta={
        "llama.feed_forward_length": ([96, 96, 96], gguf_pkg.GGUFValueType.ARRAY)})
    with pytest.raises(ModelFormatError, match="3 entries, one per layer means 2"):
        _shape(path)


def test_weights_that_decode_to_nan_raise_a_numeric_error_instead_of_answering(tmp_path):
    path = tmp_path / "nan.gguf"
    cfg = TinyConfig()
    tensors = tiny_tensors(cfg)
    tensors["blk.0.ffn_down.weight"] = np.full_like(tensors["blk.0.ffn_down.weight"], np.nan)
    write_tiny(path, cfg, tensors, vocab=True)
    with edgesdk.load(str(path), backend="native", n_ctx=32, threads=1) as model:
        with pytest.raises(NumericError, match="non-finite logits"):
            model.generate([1, 5, 6, 7], max_tokens=4)
