"""Bad input to the kernel API raises InvalidArgumentError naming the problem,
before any native call (the C layer trusts its caller)."""
from __future__ import annotations

import numpy as np
import pytest

from edgesdk import _native, kernels
from edgesdk.errors import InvalidArgumentError
from kernel_reference import random_blocks


class NativeCallSpy:
    """Replaces _native.lib so any native call made during a rejected call fails the test."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        if name in ("ek_type_block_elems", "ek_type_block_bytes", "ek_status_str", "ek_isa_current"):
            return getattr(self.real, name)  # pure lookups used while validating
        raise AssertionError(f"native {name} called before validation finished")


@pytest.fixture
def no_native_calls(monkeypatch):
    monkeypatch.setattr(_native, "lib", NativeCallSpy(_native.lib))


@pytest.fixture
def q4_weight(rng):
    raw = random_blocks("Q4_0", 8 * 64, rng)
    return kernels.Weight("Q4_0", 8, 64, raw)


def test_weight_rejects_columns_not_a_multiple_of_the_block(rng, no_native_calls):
    with pytest.raises(InvalidArgumentError, match="n_cols 48 is not a multiple of Q4_0's block of 32"):
        kernels.Weight("Q4_0", 4, 48, np.zeros(4 * 2 * 18, dtype=np.uint8))


def test_weight_rejects_too_short_buffer(rng, no_native_calls):
    with pytest.raises(InvalidArgumentError, match="has 100 bytes; 4 rows x 64 Q4_0 values need 144"):
        kernels.Weight("Q4_0", 4, 64, np.zeros(100, dtype=np.uint8))


def test_weight_rejects_misaligned_buffer(no_native_calls):
    raw = np.zeros(4 * 36 + 1, dtype=np.uint8)[1:]
    with pytest.raises(InvalidArgumentError, match="2-byte aligned"):
        kernels.Weight("Q4_0", 4, 64, raw)


def test_weight_rejects_non_contiguous_data(no_native_calls):
    raw = np.zeros(2 * 4 * 36, dtype=np.uint8)[::2]
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        kernels.Weight("Q4_0", 4, 64, raw)


def test_weight_rejects_bad_row_count(no_native_calls):
    with pytest.raises(InvalidArgumentError, match="n_rows must be a positive integer, got 0"):
        kernels.Weight("Q4_0", 0, 64, np.zeros(0, dtype=np.uint8))


def test_matmul_rejects_shape_mismatch(q4_weight, no_native_calls):
    with pytest.raises(InvalidArgumentError, match=r"x has shape \(3, 32\); expected \(64,\) or \(m, 64\)"):
        q4_weight.matmul(np.ones((3, 32), dtype=np.float32))


def test_matmul_rejects_wrong_dtype(q4_weight, no_native_calls):
    with pytest.raises(InvalidArgumentError, match="dtype float32, not float64"):
        q4_weight.matmul(np.ones((2, 64)))


def test_matmul_rejects_non_contiguous_x(q4_weight, no_native_calls):
    x = np.ones((64, 2), dtype=np.float32).T
    with pytest.raises(InvalidArgumentError, match="C-contiguous"):
        q4_weight.matmul(x)


def test_matmul_rejects_misaligned_x(q4_weight, no_native_calls):
    x = np.ones(64 * 4 + 1, dtype=np.uint8)[1:].view(np.float32)  # numpy allocations are 16-aligned
    with pytest.raises(InvalidArgumentError, match="4-byte aligned"):
        q4_weight.matmul(x)


def test_matmul_rejects_out_of_wrong_shape(q4_weight, no_native_calls):
    with pytest.raises(InvalidArgumentError, match=r"out has shape \(2, 7\); expected \(2, 8\)"):
        q4_weight.matmul(np.ones((2, 64), dtype=np.float32), out=np.empty((2, 7), dtype=np.float32))


def test_matmul_rejects_empty_x(q4_weight, no_native_calls):
    with pytest.raises(InvalidArgumentError, match="no rows"):
        q4_weight.matmul(np.ones((0, 64), dtype=np.float32))


def test_get_rows_rejects_out_of_range_id(q4_weight, no_native_calls):
    with pytest.raises(InvalidArgumentError, match="row id 8 is out of range 0..7"):
        q4_weight.get_rows([1, 8])


def test_vec_dot_rejects_length_mismatch(no_native_calls):
    with pytest.raises(InvalidArgumentError, match="w has 18 bytes; 64 Q4_0 values need 36"):
        kernels.vec_dot("Q4_0", np.zeros(18, dtype=np.uint8), np.ones(64, dtype=np.float32))


def test_matmul_rejects_something_that_is_not_a_weight():
    with pytest.raises(InvalidArgumentError, match="must be an edgesdk.kernels.Weight"):
        kernels.matmul(np.ones((4, 4)), np.ones(4, dtype=np.float32))


def test_pool_rejects_negative_threads(no_native_calls):
    with pytest.raises(InvalidArgumentError, match="threads must be an integer in 0..256, got -1"):
        kernels.Pool(-1)
