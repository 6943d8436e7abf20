"""Dequantization of every GGUF type against numpy written from the format
definitions, quantization round trips, and gguf's own numpy quantizers."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from edgesdk import kernels
from edgesdk.errors import InvalidArgumentError
from kernel_reference import BLOCKS, dequantize as ref_dequantize, random_blocks

ALL_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"]


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_dequantize_matches_numpy_reference_exactly(type_name, rng):
    block_elems = BLOCKS[type_name][0]
    raw = random_blocks(type_name, 7 * block_elems if block_elems > 1 else 259, rng)  # 7 blocks / odd length
    ours = kernels.dequantize(type_name, raw)
    expected = ref_dequantize(type_name, raw)
    # f32 arithmetic in C vs float64 here: one rounding of each product.
    np.testing.assert_allclose(ours, expected, rtol=2e-7, atol=1e-12)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K", "F16", "BF16"])
def test_dequantize_agrees_with_gguf_package(type_name, rng):
    raw = random_blocks(type_name, 512, rng)
    expected = quants.dequantize(raw, getattr(GGMLQuantizationType, type_name)).reshape(-1)
    np.testing.assert_array_equal(kernels.dequantize(type_name, raw), expected.astype(np.float32))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0", "F16"])
def test_quantize_is_byte_identical_to_gguf_package(type_name, rng):
    x = rng.normal(size=32 * 45).astype(np.float32)
    expected = quants.quantize(x.reshape(1, -1), getattr(GGMLQuantizationType, type_name)).reshape(-1).view(np.uint8)
    np.testing.assert_array_equal(kernels.quantize(type_name, x), expected)


@pytest.mark.parametrize("type_name, max_error_steps", [("Q8_0", 0.5), ("Q4_0", 1.0), ("Q4_1", 0.5)])
def test_quantize_then_dequantize_is_within_half_a_step(type_name, max_error_steps, rng):
    x = rng.normal(size=32 * 33).astype(np.float32)
    back = ref_dequantize(type_name, kernels.quantize(type_name, x))
    blocks = x.reshape(-1, 32).astype(np.float64)
    levels = {"Q8_0": 254.0, "Q4_0": 15.0, "Q4_1": 15.0}[type_name]
    step = (np.abs(blocks).max(axis=1) * 2 if type_name != "Q4_1" else np.ptp(blocks, axis=1)) / levels
    # + f16 rounding of the scale and min (2^-11 relative each) carried by the largest value
    f16_rounding = np.abs(blocks).max(axis=1, keepdims=True) * 2.0 ** -10
    assert np.all(np.abs(back.reshape(-1, 32) - blocks) <= max_error_steps * step[:, None] + f16_rounding)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_f16_conversion_round_trips_special_values():
    values = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 5.96e-8, 1e-9, 7e4, np.inf, -np.inf], dtype=np.float32)
    ours = kernels.quantize("F16", values).view(np.float16)
    np.testing.assert_array_equal(ours, values.astype(np.float16))
    assert np.isnan(kernels.dequantize("F16", np.array([np.nan], dtype=np.float16).view(np.uint8)))[0]


def test_dequantize_rejects_partial_block():
    with pytest.raises(InvalidArgumentError, match="multiple of 18 bytes, got 20"):
        kernels.dequantize("Q4_0", np.zeros(20, dtype=np.uint8))


def test_dequantize_rejects_unknown_type():
    with pytest.raises(InvalidArgumentError, match="Q5_1"):
        kernels.dequantize("Q5_1", np.zeros(24, dtype=np.uint8))


def test_dequantize_rejects_misaligned_buffer(rng):
    raw = np.zeros(18 * 2 + 1, dtype=np.uint8)[1:]
    with pytest.raises(InvalidArgumentError, match="aligned"):
        kernels.dequantize("Q4_0", raw)


def test_quantize_rejects_wrong_dtype_and_count():
    with pytest.raises(InvalidArgumentError, match="float32, not float64"):
        kernels.quantize("Q8_0", np.ones(32))
    with pytest.raises(InvalidArgumentError, match="multiple of 32 values, got 33"):
        kernels.quantize("Q8_0", np.ones(33, dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="'Q5_1' is not supported"):   # every kernel type quantizes
        kernels.quantize("Q5_1", np.ones(256, dtype=np.float32))
