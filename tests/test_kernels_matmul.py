"""GEMV, GEMM, dots and row lookup on every ISA path this CPU has, against
float64 numpy of dequantize-then-matmul; fast paths against the scalar path;
results independent of the thread count; the repacked layout."""
from __future__ import annotations

import os

import numpy as np
import pytest

from edgesdk import _native, kernels
from kernel_reference import BLOCKS, dequantize as ref_dequantize, matmul_error_bound, random_blocks
import proc_maps

WEIGHT_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"]
AVAILABLE_ISAS = _native.isa_available()
# Fast paths quantize activations exactly like the scalar path and sum in a different order:
# differences are float32 re-association only, relative to the magnitude of the terms.
FAST_VS_SCALAR_RTOL = 2e-5


@pytest.fixture(scope="module")
def pool2():
    with kernels.Pool(2) as pool:
        yield pool


def make_weight_data(type_name, n_rows, n_cols, rng):
    raw = random_blocks(type_name, n_rows * n_cols, rng)
    return raw, ref_dequantize(type_name, raw).reshape(n_rows, n_cols)


def assert_matmul_close(type_name, y, w64, x):
    expected = x.astype(np.float64) @ w64.T
    bound = matmul_error_bound(type_name, w64, np.atleast_2d(x))
    error = np.abs(np.atleast_2d(y) - np.atleast_2d(expected))
    assert np.all(error <= bound), f"max error/bound {np.max(error / bound):.3f}"


def cols_for(type_name):
    """An odd number of blocks, so no kernel can assume pairs or quads of blocks."""
    block_elems = BLOCKS[type_name][0]
    if block_elems > 1:
        return block_elems * (5 if block_elems == 256 else 7)
    return 227  # plain floats: not a multiple of any vector width


@pytest.mark.parametrize("isa", AVAILABLE_ISAS, indirect=True)
@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
@pytest.mark.parametrize("m", [1, 3, 70])
@pytest.mark.parametrize("repack", [False, True])
def test_matmul_matches_float64_numpy_on_odd_shapes(isa, type_name, m, repack, rng, pool2):
    n_rows, n_cols = 37, cols_for(type_name)  # 37 rows: not a multiple of any tile, more than threads
    raw, w64 = make_weight_data(type_name, n_rows, n_cols, rng)
    x = rng.normal(size=(m, n_cols)).astype(np.float32)
    weight = kernels.Weight(type_name, n_rows, n_cols, raw, repack=repack)
    assert weight.isa == isa
    assert_matmul_close(type_name, weight.matmul(x, pool=pool2), w64, x)
    assert_matmul_close(type_name, weight.matmul(x[0]), w64, x[:1])


# Where each type's quant bytes sit in its block, and the byte that makes every weight's magnitude
# the largest the type holds (nibble 15, Q5_0's fifth bit set, Q8_0's -128).
EXTREME_QUANTS = {"Q4_0": (slice(2, 18), 0xFF), "Q4_1": (slice(4, 20), 0xFF),
                  "Q5_0": (slice(2, 22), 0xFF), "Q8_0": (slice(2, 34), 0x80)}


@pytest.mark.parametrize("isa", AVAILABLE_ISAS, indirect=True)
@pytest.mark.parametrize("type_name", sorted(EXTREME_QUANTS))
@pytest.mark.parametrize("repack", [False, True])
def test_largest_weights_times_largest_activations_do_not_overflow(isa, type_name, repack, rng, pool2):
    """Every weight at its type's largest magnitude and every activation quantized to +-127: the
    kernels' narrow integer sums (int16 pairs before widening) are at their worst here."""
    n_rows, n_cols = 16, BLOCKS[type_name][0] * 8
    block_bytes = BLOCKS[type_name][1]
    raw = random_blocks(type_name, n_rows * n_cols, rng).reshape(-1, block_bytes)
    where, byte = EXTREME_QUANTS[type_name]
    raw[:, where] = byte
    raw = raw.reshape(-1)
    w64 = ref_dequantize(type_name, raw).reshape(n_rows, n_cols)
    x = np.stack([np.ones(n_cols), -np.ones(n_cols), np.where(np.arange(n_cols) % 2, 1.0, -1.0),
                  np.full(n_cols, 0.5), np.ones(n_cols)]).astype(np.float32)
    weight = kernels.Weight(type_name, n_rows, n_cols, raw, repack=repack)
    assert_matmul_close(type_name, weight.matmul(x, pool=pool2), w64, x)
    assert_matmul_close(type_name, weight.matmul(x[0]), w64, x[:1])


@pytest.mark.parametrize("isa", AVAILABLE_ISAS, indirect=True)
@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
def test_vec_dot_matches_float64_numpy(isa, type_name, rng):
    n_cols = cols_for(type_name)
    raw, w64 = make_weight_data(type_name, 1, n_cols, rng)
    x = rng.normal(size=n_cols).astype(np.float32)
    assert_matmul_close(type_name, np.array([kernels.vec_dot(type_name, raw, x)]), w64, x[None])


@pytest.mark.parametrize("isa", [i for i in AVAILABLE_ISAS if i != "scalar"], indirect=True)
@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
@pytest.mark.parametrize("repack", [False, True])
def test_fast_path_matches_scalar_within_float_reassociation(isa, type_name, repack, rng, pool2):
    n_rows, n_cols, m = 45, cols_for(type_name), 9
    raw, w64 = make_weight_data(type_name, n_rows, n_cols, rng)
    x = rng.normal(size=(m, n_cols)).astype(np.float32)
    fast = kernels.Weight(type_name, n_rows, n_cols, raw, repack=repack).matmul(x, pool=pool2)
    _native.isa_set("scalar")
    try:
        scalar = kernels.Weight(type_name, n_rows, n_cols, raw).matmul(x)
    finally:
        _native.isa_set(isa)
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w64).T
    assert np.all(np.abs(fast - scalar) <= FAST_VS_SCALAR_RTOL * magnitude + 1e-6)


@pytest.mark.parametrize("isa", AVAILABLE_ISAS, indirect=True)
@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q4_K", "Q6_K", "F16"])
@pytest.mark.parametrize("m", [1, 67])
def test_result_is_bit_identical_for_1_and_2_threads(isa, type_name, m, rng, pool2):
    n_rows, n_cols = 83, cols_for(type_name)
    raw, _ = make_weight_data(type_name, n_rows, n_cols, rng)
    x = rng.normal(size=(m, n_cols)).astype(np.float32)
    for repack in (False, True):
        weight = kernels.Weight(type_name, n_rows, n_cols, raw, repack=repack)
        with kernels.Pool(1) as pool1:
            one = weight.matmul(x, pool=pool1)
        np.testing.assert_array_equal(one, weight.matmul(x, pool=pool2))


# Bytes of one repacked slice (8 rows x 1 block) over 8 GGUF blocks: Q4_K's scales and
# mins are unpacked from 12 bytes to 16 per block; the other layouts only reorder bytes.
REPACK_GROWTH = {"Q4_0": 1.0, "Q4_1": 1.0, "Q8_0": 1.0, "Q5_0": 1.0, "Q4_K": 1184 / 1152, "Q6_K": 1.0}


@pytest.mark.parametrize("isa", AVAILABLE_ISAS, indirect=True)
@pytest.mark.parametrize("type_name", list(REPACK_GROWTH))
def test_repacked_weight_gives_the_plain_result_and_owns_its_copy(isa, type_name, rng, pool2):
    n_rows, n_cols = 29, BLOCKS[type_name][0] * 9
    raw, w64 = make_weight_data(type_name, n_rows, n_cols, rng)
    x = rng.normal(size=(11, n_cols)).astype(np.float32)
    plain = kernels.Weight(type_name, n_rows, n_cols, raw)
    packed = kernels.Weight(type_name, n_rows, n_cols, raw, repack=True)
    assert plain.owned_bytes == 0
    if isa != "scalar":  # the x86 families repack these types into 8-row slices
        assert packed.owned_bytes == round(32 * raw.size // 29 * REPACK_GROWTH[type_name])  # 29 rows padded to 32
    y = packed.matmul(x, pool=pool2)
    assert_matmul_close(type_name, y, w64, x)
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w64).T
    assert np.all(np.abs(y - plain.matmul(x, pool=pool2)) <= FAST_VS_SCALAR_RTOL * magnitude + 1e-6)
    np.testing.assert_array_equal(packed.get_rows([0, 28, 7]), w64[[0, 28, 7]].astype(np.float32))


# A thread's rows come in items of 16 to 64 (native/src/matmul.c), and the AVX-512 GEMV
# reads up to four 16-row group pairs of an item side by side (GEMV_PAIRS in
# kernels_avx512.c). 605 rows make items of 64 rows for 1 thread, 48 for 2 and 32 for 3
# (four, three and two pairs), then a last item of one pair and a lone group of 13 rows.
@pytest.mark.parametrize("isa", AVAILABLE_ISAS, indirect=True)
@pytest.mark.parametrize("type_name", list(REPACK_GROWTH))
def test_repacked_gemv_over_many_row_groups_equals_the_gemm_rows(isa, type_name, rng, pool2):
    n_rows, n_cols = 605, BLOCKS[type_name][0] * 3
    raw, w64 = make_weight_data(type_name, n_rows, n_cols, rng)
    x = rng.normal(size=(3, n_cols)).astype(np.float32)
    weight = kernels.Weight(type_name, n_rows, n_cols, raw, repack=True)
    gemm = weight.matmul(x, pool=pool2)
    assert_matmul_close(type_name, gemm, w64, x)
    with kernels.Pool(1) as pool1, kernels.Pool(3) as pool3:
        for pool in (pool1, pool2, pool3):
            np.testing.assert_array_equal(weight.matmul(x[0], pool=pool), gemm[0])


def huge_page_advised_mappings() -> dict:
    """start -> size of this process's mappings advised into transparent huge pages ("hg")."""
    return {lo: hi - lo for lo, hi, fields in proc_maps.mappings() if "hg" in fields.get("VmFlags", [])}


# The repacked weights are streamed once per token; on Linux they get their own 2 MiB aligned
# mapping advised into huge pages (alloc_streamed in native/src/matmul.c), unmapped on free.
@pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/transparent_hugepage"),
                    reason="this kernel has no transparent huge pages")
def test_a_large_repacked_weight_lies_on_huge_pages_and_is_unmapped_on_free(rng, pool2):
    n_rows, n_cols = 4104, 1024  # 4.2 MiB of Q4_0: whole huge pages and a tail, rows past a group
    raw, w64 = make_weight_data("Q4_0", n_rows, n_cols, rng)
    before = huge_page_advised_mappings()
    weight = kernels.Weight("Q4_0", n_rows, n_cols, raw, repack=True)
    new = {start: size for start, size in huge_page_advised_mappings().items() if start not in before}
    assert any(start % (2 << 20) == 0 and size >= weight.owned_bytes for start, size in new.items()), new
    x = rng.normal(size=(3, n_cols)).astype(np.float32)
    y = weight.matmul(x, pool=pool2)
    assert_matmul_close("Q4_0", y, w64, x)
    np.testing.assert_array_equal(weight.matmul(x[2], pool=pool2), y[2])
    weight.close()
    assert not set(new) & set(huge_page_advised_mappings())


@pytest.mark.parametrize("type_name", WEIGHT_TYPES)
def test_get_rows_returns_dequantized_rows(type_name, rng):
    n_rows, n_cols = 19, cols_for(type_name)
    raw, w64 = make_weight_data(type_name, n_rows, n_cols, rng)
    ids = [18, 0, 5, 5]
    rows = kernels.Weight(type_name, n_rows, n_cols, raw).get_rows(ids)
    np.testing.assert_allclose(rows, w64[ids], rtol=2e-7, atol=1e-12)


def test_weight_keeps_the_isa_it_was_prepared_for(rng):
    raw, w64 = make_weight_data("Q4_0", 16, 64, rng)
    previous = _native.isa_current()
    weight = kernels.Weight("Q4_0", 16, 64, raw, repack=True)
    try:
        _native.isa_set("scalar")
        x = rng.normal(size=(2, 64)).astype(np.float32)
        assert weight.isa == previous
        assert_matmul_close("Q4_0", weight.matmul(x), w64, x)
    finally:
        _native.isa_set(previous)


def test_pool_reports_its_threads():
    with kernels.Pool(2) as pool:
        assert pool.threads == 2
    with kernels.Pool(0) as pool:
        assert pool.threads == kernels.default_threads() >= 1


def test_python_threads_sharing_a_pool_get_correct_results(rng, pool2):
    import concurrent.futures

    raw, w64 = make_weight_data("Q4_0", 64, 256, rng)
    weight = kernels.Weight("Q4_0", 64, 256, raw, repack=True)
    xs = [rng.normal(size=(3, 256)).astype(np.float32) for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        results = list(executor.map(lambda x: weight.matmul(x, pool=pool2), xs))
    for x, y in zip(xs, results):
        assert_matmul_close("Q4_0", y, w64, x)


def test_read_bandwidth_is_positive_and_plausible():
    with kernels.Pool(2) as pool:
        bandwidth = kernels.measure_read_bandwidth(16 << 20, 3, pool)
    assert 1e8 < bandwidth < 1e13
