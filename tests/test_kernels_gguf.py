"""Kernels read weights straight from the real models' GGUF data (zero-copy)
and agree with numpy dequantize-then-matmul, on every ISA path available."""
from __future__ import annotations

import numpy as np
import pytest

from edgesdk import _native, gguf, kernels
from kernel_reference import dequantize as ref_dequantize, matmul_error_bound

N_ROWS_CHECKED = 40  # a slice of rows keeps the float64 reference fast; 40 is not a multiple of any tile
N_ACT_ROWS = 5

SMOLLM2_TENSORS = ["blk.0.ffn_down.weight", "blk.3.attn_q.weight", "token_embd.weight"]


def first_tensor_of_type(model: gguf.GGUFFile, type_name: str) -> str:
    return next(name for name, info in model.tensors.items() if info.type_name == type_name and len(info.shape) == 2)


def check_tensor(model: gguf.GGUFFile, name: str, isa: str, rng) -> None:
    info = model.tensors[name]
    n_cols = info.shape[0]
    row_bytes = kernels.layout(info.type_name).row_bytes(n_cols)
    data = model.tensor_data(name)[: N_ROWS_CHECKED * row_bytes]  # zero-copy view of the mmap
    w64 = ref_dequantize(info.type_name, data).reshape(N_ROWS_CHECKED, n_cols)
    x = rng.normal(size=(N_ACT_ROWS, n_cols)).astype(np.float32)
    previous = _native.isa_current()
    _native.isa_set(isa)
    try:
        for repack in (False, True):
            weight = kernels.Weight(info.type_name, N_ROWS_CHECKED, n_cols, data, repack=repack)
            for xs in (x, x[:1]):
                y = weight.matmul(xs)
                error = np.abs(y - xs.astype(np.float64) @ w64.T)
                assert np.all(error <= matmul_error_bound(info.type_name, w64, xs)), (name, isa, repack)
            np.testing.assert_allclose(weight.get_rows([3, 0]), w64[[3, 0]], rtol=2e-7, atol=1e-12)
    finally:
        _native.isa_set(previous)


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    with gguf.open(smollm2_path) as model:
        yield model


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    with gguf.open(gemma3_path) as model:
        yield model


@pytest.mark.parametrize("isa", _native.isa_available())
@pytest.mark.parametrize("name", SMOLLM2_TENSORS)
def test_smollm2_weights_q4_1_and_q8_0_match_numpy(smollm2, name, isa, rng):
    assert smollm2.tensors[name].type_name in ("Q4_1", "Q8_0")
    check_tensor(smollm2, name, isa, rng)


@pytest.mark.parametrize("isa", _native.isa_available())
@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_0", "Q6_K", "Q8_0"])
def test_gemma3_weights_of_each_type_match_numpy(gemma3, type_name, isa, rng):
    check_tensor(gemma3, first_tensor_of_type(gemma3, type_name), isa, rng)


def test_weight_from_gguf_wraps_the_whole_tensor_without_copying(smollm2, rng):
    weight = kernels.Weight.from_gguf(smollm2, "blk.0.ffn_down.weight")
    assert (weight.n_rows, weight.n_cols) == (576, 1536)
    assert weight.owned_bytes == 0
    x = rng.normal(size=1536).astype(np.float32)
    w64 = ref_dequantize("Q4_1", smollm2.tensor_data("blk.0.ffn_down.weight")).reshape(576, 1536)
    error = np.abs(weight.matmul(x) - w64 @ x.astype(np.float64))
    assert np.all(error <= matmul_error_bound("Q4_1", w64, x[None])[0])
