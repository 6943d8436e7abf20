"""The engine's f32 building blocks (native/src/ops.c) against float64 numpy written here.

Every op runs on every ISA path this CPU has (scalar reference and the vector
variants), on random shapes with tails (sizes not multiples of the vector width).
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from edgesdk import _native

lib = _native.lib
F16, Q8_0 = 1, 8

# f32 arithmetic against a float64 reference: a few ulps of accumulated rounding.
F32_RTOL = 2e-5
F32_ATOL = 2e-6
# The vectorized exp is a polynomial (relative error ~2e-7) inside a division.
ACT_RTOL = 2e-5
# Attention reads f16 keys/values: the reference uses the same rounded values,
# so only the f32 accumulation differs.
ATTN_ATOL = 2e-5
# q8_0 rows: values round to half a step (amax/127), and the step itself is stored as f16
# (relative error 2^-11, times up to 127 steps).
Q8_STEP_FRACTION = 0.5 / 127 + 2.0 ** -11


def fp(a: np.ndarray):
    return a.ctypes.data_as(_native.c_float_p)


@pytest.fixture(params=_native.isa_available(), autouse=True)
def isa(request):
    before = _native.isa_current()
    _native.isa_set(request.param)
    yield request.param
    _native.isa_set(before)


def test_rmsnorm_matches_numpy_with_and_without_weight(rng):
    for n in (1, 7, 64, 577, 2048 + 3):
        x = rng.standard_normal(n).astype(np.float32) * 3
        w = rng.standard_normal(n).astype(np.float32)
        eps = 1e-6
        ref = x.astype(np.float64) / np.sqrt(np.mean(x.astype(np.float64) ** 2) + eps)
        y = np.empty_like(x)
        lib.ek_rmsnorm(fp(x), fp(w), fp(y), n, eps)
        np.testing.assert_allclose(y, ref * w, rtol=F32_RTOL, atol=F32_ATOL)
        lib.ek_rmsnorm(fp(x), None, fp(y), n, eps)
        np.testing.assert_allclose(y, ref, rtol=F32_RTOL, atol=F32_ATOL)


def rope_reference(x, n_rot, pos, base, freq_scale, factors, neox):
    out = x.astype(np.float64).copy()
    half = n_rot // 2
    i = np.arange(half)
    theta = pos * freq_scale * base ** (-2.0 * i / n_rot)
    if factors is not None:
        theta = theta / factors
    c, s = np.cos(theta), np.sin(theta)
    a = i if neox else 2 * i
    b = i + half if neox else 2 * i + 1
    x0, x1 = out[:, a].copy(), out[:, b].copy()
    out[:, a] = x0 * c - x1 * s
    out[:, b] = x0 * s + x1 * c
    return out


@pytest.mark.parametrize("mode", [_native.EK_ROPE_NORM, _native.EK_ROPE_NEOX])
def test_rope_matches_numpy_for_both_layouts_partial_rotation_and_scaling(rng, mode):
    for n_heads, head_dim, n_rot, pos, base, scale, with_factors in (
        (3, 64, 64, 17, 10000.0, 1.0, False),
        (5, 256, 256, 4000, 1e6, 0.125, False),
        (2, 80, 48, 123, 500000.0, 1.0, True),
    ):
        x = rng.standard_normal((n_heads, head_dim)).astype(np.float32)
        factors = rng.uniform(1.0, 8.0, n_rot // 2).astype(np.float32) if with_factors else None
        ref = rope_reference(x, n_rot, pos, base, scale, factors, mode == _native.EK_ROPE_NEOX)
        y = x.copy()
        lib.ek_rope(fp(y), n_heads, head_dim, n_rot, pos, base, scale, fp(factors) if factors is not None else None,
                    mode)
        # Angles up to pos=4000 rad: f32 cos/sin of a double angle, error ~1e-6 relative to |x|.
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(y[:, n_rot:], x[:, n_rot:])  # dims past n_rot untouched


def test_softmax_matches_numpy_and_sums_to_one(rng):
    for n in (1, 9, 1000):
        x = (rng.standard_normal(n) * 10).astype(np.float32)
        ref = np.exp(x.astype(np.float64) - x.max())
        ref /= ref.sum()
        y = x.copy()
        lib.ek_softmax(fp(y), n)
        np.testing.assert_allclose(y, ref, rtol=F32_RTOL, atol=1e-9)


@pytest.mark.parametrize("name", ["silu", "gelu"])
def test_gated_activations_match_numpy(rng, name):
    for n in (1, 13, 1536 + 5):
        g = (rng.standard_normal(n) * 4).astype(np.float32)
        g[:3] = [-30.0, 30.0, 0.0][: min(3, n)]  # saturation and zero
        up = rng.standard_normal(n).astype(np.float32)
        gd = g.astype(np.float64)
        if name == "silu":
            act = gd / (1 + np.exp(-gd))
        else:
            act = 0.5 * gd * (1 + np.tanh(np.sqrt(2 / np.pi) * (gd + 0.044715 * gd ** 3)))
        fn = lib.ek_silu_mul if name == "silu" else lib.ek_gelu_mul
        out = np.empty_like(g)
        fn(fp(g), fp(up), fp(out), n)
        np.testing.assert_allclose(out, act * up, rtol=ACT_RTOL, atol=1e-6)
        fn(fp(g), None, fp(out), n)
        np.testing.assert_allclose(out, act, rtol=ACT_RTOL, atol=1e-6)


def test_kv_f16_rows_round_like_numpy_float16(rng):
    n = 256 + 40
    x = (rng.standard_normal(n) * 100).astype(np.float32)
    x[:4] = [1e-7, -6e-5, 70000.0, 0.0]  # subnormal, near-subnormal, overflow to inf, zero
    row = np.empty(n, dtype=np.uint16)
    lib.ek_kv_store(F16, fp(x), row.ctypes.data, n)
    with np.errstate(over="ignore"):  # 70000 -> inf is the behaviour under test
        expected = x.astype(np.float16)
    np.testing.assert_array_equal(row, expected.view(np.uint16))
    back = np.empty(n, dtype=np.float32)
    lib.ek_kv_load(F16, row.ctypes.data, fp(back), n)
    np.testing.assert_array_equal(back, expected.astype(np.float32))


def test_kv_q8_0_rows_are_within_half_a_step_of_the_input(rng):
    n = 32 * 9
    x = (rng.standard_normal(n) * 5).astype(np.float32)
    assert lib.ek_kv_row_bytes(Q8_0, n) == n // 32 * 34
    row = np.empty(n // 32 * 34, dtype=np.uint8)
    lib.ek_kv_store(Q8_0, fp(x), row.ctypes.data, n)
    back = np.empty(n, dtype=np.float32)
    lib.ek_kv_load(Q8_0, row.ctypes.data, fp(back), n)
    amax = np.abs(x.reshape(-1, 32)).max(1, keepdims=True)
    err = np.abs(back.reshape(-1, 32) - x.reshape(-1, 32))
    assert np.all(err <= amax * Q8_STEP_FRACTION + 1e-6)


def _kv_cache(rng, kv_type, n_pos, kv_dim):
    """Random K and V rows stored in kv_type, and what they decode to."""
    row_bytes = lib.ek_kv_row_bytes(kv_type, kv_dim)
    caches, decoded = [], []
    for _ in range(2):
        x = rng.standard_normal((n_pos, kv_dim)).astype(np.float32)
        c = np.empty((n_pos, row_bytes), dtype=np.uint8)
        d = np.empty_like(x)
        for j in range(n_pos):
            lib.ek_kv_store(kv_type, fp(x[j]), c[j].ctypes.data, kv_dim)
            lib.ek_kv_load(kv_type, c[j].ctypes.data, fp(d[j]), kv_dim)
        caches.append(c)
        decoded.append(d)
    return caches, decoded, row_bytes


def _attention(kv_type, q, kc, vc, h, head_dim, row_bytes, lo, hi, scale):
    """ek_attention of the rows of q over KV head h of the caches; the outputs as rows."""
    n_q = q.shape[0]
    out = np.full((n_q, head_dim), np.nan, dtype=np.float32)
    q_ptrs = (ctypes.c_void_p * n_q)(*[q[i].ctypes.data for i in range(n_q)])
    out_ptrs = (ctypes.c_void_p * n_q)(*[out[i].ctypes.data for i in range(n_q)])
    lo_a, hi_a = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    scratch = np.full(lib.ek_attention_scratch_floats(n_q, head_dim), np.nan, dtype=np.float32)
    head_bytes = lib.ek_kv_row_bytes(kv_type, head_dim)
    lib.ek_attention(q_ptrs, out_ptrs, lo_a.ctypes.data, hi_a.ctypes.data, n_q, kc.ctypes.data + h * head_bytes,
                     vc.ctypes.data + h * head_bytes, kv_type, row_bytes, head_dim, scale, fp(scratch))
    return out


# (head_dim, n_pos, n_kv_heads, queries per KV head, sliding window or 0): tails after every vector
# width and key block (16), GQA ratios 1..7, one query and tiles of dozens, windows shorter than the cache.
ATTN_SHAPES = ((64, 1, 1, 1, 0), (64, 37, 3, 3, 0), (256, 130, 1, 4, 0), (96, 7, 2, 2, 0), (13, 50, 2, 5, 0),
               (64, 300, 1, 7, 40), (128, 17, 1, 1, 16), (5, 33, 3, 2, 3))


@pytest.mark.parametrize("kv_type", [F16, Q8_0])
@pytest.mark.parametrize("shape", ATTN_SHAPES)
def test_attention_tile_matches_numpy_over_dequantized_cache(rng, kv_type, shape):
    head_dim, n_pos, n_kv_heads, group, window = shape
    if kv_type == Q8_0 and head_dim % 32:
        head_dim = 32 * (head_dim // 32 + 1)
    (kc, vc), (kd, vd), row_bytes = _kv_cache(rng, kv_type, n_pos, head_dim * n_kv_heads)
    # Causal rows of a batch that starts at a random offset: token t of n_tok sees positions
    # [lo, start + t + 1), every query of a token the same range; each token brings `group` queries.
    n_tok = int(rng.integers(1, min(n_pos, 9) + 1))
    start = n_pos - n_tok
    lo, hi = [], []
    for t in range(n_tok):
        pos = start + t
        for _ in range(group):
            lo.append(max(0, pos - window + 1) if window else 0)
            hi.append(pos + 1)
    q = (rng.standard_normal((len(lo), head_dim)) * 2).astype(np.float32)
    scale = 1 / np.sqrt(head_dim)
    h = n_kv_heads - 1  # the last head: exercises the head offset
    sl = slice(h * head_dim, (h + 1) * head_dim)
    out = _attention(kv_type, q, kc, vc, h, head_dim, row_bytes, lo, hi, scale)
    for i in range(len(lo)):
        keys, vals = kd[lo[i]:hi[i], sl].astype(np.float64), vd[lo[i]:hi[i], sl].astype(np.float64)
        s = keys @ q[i].astype(np.float64) * scale
        p = np.exp(s - s.max())
        ref = (p / p.sum()) @ vals
        np.testing.assert_allclose(out[i], ref, rtol=1e-4, atol=ATTN_ATOL, err_msg=f"query {i}, keys [{lo[i]}, {hi[i]})")


@pytest.mark.parametrize("kv_type", [F16, Q8_0])
def test_attention_tile_equals_one_query_at_a_time(rng, kv_type):
    """A query's output does not depend on the tile it is in (other queries' ranges, its place):
    the engine's tiling, which follows the thread count, never changes a bit."""
    head_dim, n_pos = 64, 90
    (kc, vc), _, row_bytes = _kv_cache(rng, kv_type, n_pos, head_dim)
    lo = [0, 10, 0, 33, 89, 5]
    hi = [90, 11, 17, 60, 90, 80]
    q = rng.standard_normal((len(lo), head_dim)).astype(np.float32)
    together = _attention(kv_type, q, kc, vc, 0, head_dim, row_bytes, lo, hi, 0.125)
    for i in range(len(lo)):
        alone = _attention(kv_type, q[i:i + 1].copy(), kc, vc, 0, head_dim, row_bytes, lo[i:i + 1], hi[i:i + 1], 0.125)
        np.testing.assert_array_equal(together[i], alone[0])
