"""Dequantization of every GGUF type against numpy written from the format
definitions, quantization round trips, and gguf's own numpy quantizers; quantize_rows
from F16 and BF16 rows (widened natively, on every ISA) against the same rows widened
by numpy, and its NaN/infinity check."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType, quants

from edgesdk import _native, kernels
from edgesdk.errors import InvalidArgumentError, NonFiniteRowError
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


# --------------------------------------------------- quantize_rows from F16 and BF16 rows

@pytest.fixture(scope="module")
def pool3():
    with kernels.Pool(3) as pool:
        yield pool


def stored_as(x: np.ndarray, source: str) -> tuple:
    """x in `source` storage (F16 as float16, BF16 as its uint16 bits) and those values widened
    to float32 by numpy (exact: every half is a float)."""
    if source == "F32":
        return x, x
    if source == "F16":
        halves = x.astype(np.float16)
        return halves, halves.astype(np.float32)
    bits = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


def spread_matrix(rng, n_rows: int, n_cols: int) -> np.ndarray:
    """Values over many magnitudes (F16 subnormals among them), so that every exponent path of
    the widening is used."""
    magnitudes = np.exp(rng.uniform(-14.0, 4.0, (n_rows, n_cols)))
    return (rng.standard_normal((n_rows, n_cols)) * magnitudes).astype(np.float32)


@pytest.mark.parametrize("source", ["F16", "BF16"])
@pytest.mark.parametrize("type_name", kernels.QUANTIZABLE)
def test_quantize_rows_from_f16_and_bf16_gives_the_bytes_of_the_rows_widened(type_name, source, rng, pool3):
    x = spread_matrix(rng, 37, 512)   # 37 rows: the 3 threads' shares differ
    stored, widened = stored_as(x, source)
    importance = rng.random(512).astype(np.float32)
    for imp in (None, importance):
        expected = kernels.quantize_rows(type_name, widened, imp)
        assert np.array_equal(kernels.quantize_rows(type_name, stored, imp, source_type=source), expected)
        assert np.array_equal(kernels.quantize_rows(type_name, stored, imp, pool3, source_type=source), expected)


@pytest.mark.parametrize("isa", _native.isa_available(), indirect=True)
@pytest.mark.parametrize("n_cols", [31, 1024])   # 31: the 8-wide loop and a 7-value tail
def test_every_finite_half_widens_exactly_on_every_isa(isa, n_cols, pool3):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    halves = bits.view(np.float16)[np.isfinite(bits.view(np.float16))]   # 63,488 = 2048 x 31 = 62 x 1024
    rows = np.ascontiguousarray(halves.reshape(-1, n_cols))
    widened = kernels.quantize_rows("F32", rows, pool=pool3).view(np.float32)
    np.testing.assert_array_equal(widened.view(np.uint32), rows.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("source", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("bad_rows, first", [((11, 29, 35), 11), ((29, 35), 29), ((39,), 39)])
def test_quantize_rows_names_the_first_row_holding_nan_or_infinity(source, bad_rows, first, rng, pool3):
    x = rng.standard_normal((40, 64)).astype(np.float32)   # 3 threads: rows 0-12, 13-25, 26-39
    for row, value in zip(bad_rows, (np.nan, np.inf, -np.inf)):
        x[row, row % 64] = value
    stored, _ = stored_as(x, source)
    for pool in (None, pool3):
        with pytest.raises(NonFiniteRowError, match=f"row {first} holds NaN or infinite") as caught:
            kernels.quantize_rows("Q4_0", stored, pool=pool, source_type=source)
        assert caught.value.row == first


def test_quantize_rows_rejects_a_source_its_dtype_does_not_match():
    with pytest.raises(InvalidArgumentError, match="dtype float64"):
        kernels.quantize_rows("Q8_0", np.ones((2, 32)))
    with pytest.raises(InvalidArgumentError, match="source_type='BF16'"):
        kernels.quantize_rows("Q8_0", np.ones((2, 32), dtype=np.uint16))
    with pytest.raises(InvalidArgumentError, match="source_type F16 needs x of dtype float16, not float32"):
        kernels.quantize_rows("Q8_0", np.ones((2, 32), dtype=np.float32), source_type="F16")
    with pytest.raises(InvalidArgumentError, match="source_type 'Q8_0'"):
        kernels.quantize_rows("Q8_0", np.ones((2, 32), dtype=np.float32), source_type="Q8_0")
    with pytest.raises(InvalidArgumentError, match="aligned"):
        kernels.quantize_rows("Q8_0", np.zeros(2 * 32 * 2 + 1, dtype=np.uint8)[1:].view(np.float16).reshape(2, 32))
