/* x86 AVX2 + FMA + F16C kernels. Compiled for those instructions by a target
 * pragma, so one build runs on every x86-64; dispatch.c fills this table only
 * when the CPU and OS support them. The matmul kernels are kernels_x86_body.h's
 * bodies with the int8 dot product done by maddubs (u8 x s8 -> pairs of int16)
 * + madd; the f32 building blocks are below them. */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <math.h>

/* maddubs' int16 lanes each take two products of at most (u_limit - 1) * 127 per call. */
static inline __m256i dot_pairs(__m256i p, __m256i u, __m256i s) {
    return _mm256_add_epi16(p, _mm256_maddubs_epi16(u, s));
}
static inline __m256i widen_pairs(__m256i acc, __m256i p) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
    return widen_pairs(acc, _mm256_maddubs_epi16(u, s));
}
static inline int dot_pairs_per_widen(int u_limit) {
    const int n = 32767 / (2 * 127 * (u_limit - 1));
    return n > 0 ? n : 1;
}

/* int16 lanes 0..7 (32-bit lanes 0..3 after madd) get a, 8..15 get b. */
static inline __m256i make_scales(int a, int b) {
    return _mm256_set_m128i(_mm_set1_epi16((int16_t)b), _mm_set1_epi16((int16_t)a));
}

static inline __m256i dot_u8s8_scaled(__m256i acc, __m256i u, __m256i s, __m256i scales) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scales));
}

/* Per-row scales as int16 pairs (sc, sc), so madd applies them to both halves of a lane. */
static inline __m256i lane_scales(__m256i sc32) {
    return _mm256_or_si256(_mm256_and_si256(sc32, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(sc32, 16));
}

static inline __m256i widen_pairs_scaled(__m256i acc, __m256i p, __m256i lsc) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, lsc));
}

#include "kernels_x86_body.h"

/* ------------------------------------------------------ matmul kernels */

static void quantize_q8_32_avx2(const float *x, void *xq, int64_t n) { x86_quantize_q8_32(x, xq, n); }
static void quantize_q8_k_avx2(const float *x, void *xq, int64_t n) { x86_quantize_q8_k(x, xq, n); }

static void gemm_f32_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y, int64_t ldy,
                          int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_float(WEIGHT_F32, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_f16_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y, int64_t ldy,
                          int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_float(WEIGHT_F16, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_bf16_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y, int64_t ldy,
                           int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_float(WEIGHT_BF16, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_0_q8_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                              int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32(FAM_Q4_0, sizeof(block_q4_0), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_1_q8_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                              int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32(FAM_Q4_1, sizeof(block_q4_1), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q5_0_q8_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                              int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32(FAM_Q5_0, sizeof(block_q5_0), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q8_0_q8_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                              int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32(FAM_Q8_0, sizeof(block_q8_0), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_k_q8k_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                               int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_kquant(KQ_Q4_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q6_k_q8k_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                               int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_kquant(KQ_Q6_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_0x8_q8_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32_x8(FAM_Q4_0, sizeof(block_q4_0x8), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_1x8_q8_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32_x8(FAM_Q4_1, sizeof(block_q4_1x8), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q5_0x8_q8_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32_x8(FAM_Q5_0, sizeof(block_q5_0x8), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q8_0x8_q8_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32_x8(FAM_Q8_0, sizeof(block_q8_0x8), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

/* The repacked K-quants: one 8-row group at a time, activation rows in tiles of ACT_TILE,
   each tile size a compile-time constant of the inlined tile. The loop is written in each
   kernel rather than in a body taking the type: GCC optimizes an always-inline body before
   inlining it, and a body holding both types' tiles came out scheduled differently and
   measurably slower (the Q6_K GEMV). */
static void gemm_q4_kx8_q8k_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                 int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK_K;
    for (int64_t g0 = r0; g0 < r1; g0 += EK_REPACK_ROWS) {
        const block_q4_kx8 *group = (const block_q4_kx8 *)((const uint8_t *)w + (size_t)g0 * w_row_bytes);
        const int n_valid = (int)(r1 - g0 < EK_REPACK_ROWS ? r1 - g0 : EK_REPACK_ROWS);
        for (int64_t i0 = 0; i0 < m; i0 += ACT_TILE) {
            const int tile = (int)(m - i0 < ACT_TILE ? m - i0 : ACT_TILE);
            if (tile == ACT_TILE) q4_kx8_tile(group, n_valid, g0, nb, x, x_row_bytes, i0, ACT_TILE, y, ldy);
            else if (tile == 1) q4_kx8_tile(group, n_valid, g0, nb, x, x_row_bytes, i0, 1, y, ldy);
            else q4_kx8_tile(group, n_valid, g0, nb, x, x_row_bytes, i0, tile, y, ldy);
        }
    }
}

static void gemm_q6_kx8_q8k_avx2(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                 int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK_K;
    for (int64_t g0 = r0; g0 < r1; g0 += EK_REPACK_ROWS) {
        const block_q6_kx8 *group = (const block_q6_kx8 *)((const uint8_t *)w + (size_t)g0 * w_row_bytes);
        const int n_valid = (int)(r1 - g0 < EK_REPACK_ROWS ? r1 - g0 : EK_REPACK_ROWS);
        for (int64_t i0 = 0; i0 < m; i0 += ACT_TILE) {
            const int tile = (int)(m - i0 < ACT_TILE ? m - i0 : ACT_TILE);
            if (tile == ACT_TILE) q6_kx8_tile(group, n_valid, g0, nb, x, x_row_bytes, i0, ACT_TILE, y, ldy);
            else if (tile == 1) q6_kx8_tile(group, n_valid, g0, nb, x, x_row_bytes, i0, 1, y, ldy);
            else q6_kx8_tile(group, n_valid, g0, nb, x, x_row_bytes, i0, tile, y, ldy);
        }
    }
}

static uint64_t read_sum_avx2(const uint8_t *const *streams, int n_streams, size_t n) {
    return x86_read_sum(streams, n_streams, n);
}

/* ------------------------------------------------- f32 building blocks
 * The AVX-512 tables start from this one and keep these. */

/* Lanes [0, n) set, n in 0..8: the last, partial vector of a row. */
static inline __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static void rmsnorm_avx2(const float *x, const float *w, float *y, int64_t n, float eps) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    double sum = 0.0;
    for (int k = 0; k < 8; k++) sum += lanes[k];
    for (; i < n; i++) sum += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(sum / (double)n + eps));
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
        if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; i++) y[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

/* e^x for 8 lanes: x = k ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial
   (relative error ~2e-7, below f32 rounding of the products that use it). Inputs
   below -87.3 give e^-87.3, the smallest normal result, not 0. */
static inline __m256 exp_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* Sum of the 8 lanes of v, added in double to *acc (4 + 4 lanes). */
static inline __m256d add_f64x4(__m256d acc, __m256 v) {
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

/* The weights sum in double lanes, as the scalar reference sums them: over thousands of
   positions float lanes would lose the small ones. */
static void softmax_avx2(float *x, int64_t n) {
    __m256 max8 = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) max8 = _mm256_max_ps(max8, _mm256_loadu_ps(x + i));
    float lanes[8], maxv = -INFINITY;
    _mm256_storeu_ps(lanes, max8);
    for (int k = 0; k < 8; k++) maxv = lanes[k] > maxv ? lanes[k] : maxv;
    for (; i < n; i++) maxv = x[i] > maxv ? x[i] : maxv;
    const __m256 vmax = _mm256_set1_ps(maxv);
    __m256d sum4 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(x + i, e);
        sum4 = add_f64x4(sum4, e);
    }
    if (i < n) {
        const __m256i mask = tail_mask(n - i);
        const __m256 e = _mm256_and_ps(exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vmax)),
                                       _mm256_castsi256_ps(mask));
        _mm256_maskstore_ps(x + i, mask, e);
        sum4 = add_f64x4(sum4, e);
    }
    double sums[4];
    _mm256_storeu_pd(sums, sum4);
    const __m256 inv = _mm256_set1_ps((float)(1.0 / (sums[0] + sums[1] + sums[2] + sums[3])));
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    if (i < n) {
        const __m256i mask = tail_mask(n - i);
        _mm256_maskstore_ps(x + i, mask, _mm256_mul_ps(_mm256_maskload_ps(x + i, mask), inv));
    }
}

enum { ACT_SILU, ACT_GELU };

static inline __attribute__((always_inline)) __m256 gate_act_avx2(int act, __m256 g) {
    const __m256 one = _mm256_set1_ps(1.0f);
    if (act == ACT_SILU) return _mm256_div_ps(g, _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    const __m256 c = _mm256_set1_ps(0.7978845608028654f), c3 = _mm256_set1_ps(0.044715f);
    const __m256 y = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(c3, g), _mm256_mul_ps(g, g), g));
    /* tanh(y) = 1 - 2 / (e^{2y} + 1), exact at both saturations. */
    const __m256 t = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(exp_avx2(_mm256_add_ps(y, y)), one)));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), g), _mm256_add_ps(one, t));
}

/* The tail goes through the same lanes (masked), so every element is computed alike. */
static inline __attribute__((always_inline)) void
gated_act_avx2(int act, const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 s = gate_act_avx2(act, _mm256_loadu_ps(gate + i));
        if (up) s = _mm256_mul_ps(s, _mm256_loadu_ps(up + i));
        _mm256_storeu_ps(out + i, s);
    }
    if (i < n) {
        const __m256i mask = tail_mask(n - i);
        __m256 s = gate_act_avx2(act, _mm256_maskload_ps(gate + i, mask));
        if (up) s = _mm256_mul_ps(s, _mm256_maskload_ps(up + i, mask));
        _mm256_maskstore_ps(out + i, mask, s);
    }
}

static void silu_mul_avx2(const float *gate, const float *up, float *out, int64_t n) {
    gated_act_avx2(ACT_SILU, gate, up, out, n);
}

static void gelu_mul_avx2(const float *gate, const float *up, float *out, int64_t n) {
    gated_act_avx2(ACT_GELU, gate, up, out, n);
}

static inline __m256 load_q8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* n halves as floats, 8 at a time by F16C (exact, as the scalar conversion), the tail one by one. */
static void f16_to_f32_avx2(const uint16_t *h, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(h[i]);
}

/* n values of an F16 or Q8_0 KV row as floats. */
static inline void kv_row_to_f32_avx2(int kv_type, const void *row, float *dst, int64_t n) {
    if (kv_type == EK_TYPE_Q8_0) {
        const block_q8_0 *b = row;
        for (int64_t blk = 0; blk < n / QK32; blk++) {
            const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[blk].d));
            for (int r = 0; r < 4; r++) _mm256_storeu_ps(dst + blk * QK32 + 8 * r, _mm256_mul_ps(d, load_q8x8(b[blk].qs + 8 * r)));
        }
        return;
    }
    f16_to_f32_avx2(row, dst, n);
}

typedef __m256 vf;
#define VF_LANES 8
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vf_exp(vf x) { return exp_avx2(x); }
#define kv_row_to_f32 kv_row_to_f32_avx2
#include "attention_tile_body.h"
#undef kv_row_to_f32
#undef VF_LANES

static void attention_f16_avx2(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi,
                               int64_t n_q, const void *k, const void *v, size_t row_bytes, int64_t head_dim,
                               float scale, float *scratch) {
    attention_tile(EK_TYPE_F16, q, out, lo, hi, n_q, k, v, row_bytes, head_dim, scale, scratch);
}

static void attention_q8_0_avx2(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi,
                                int64_t n_q, const void *k, const void *v, size_t row_bytes, int64_t head_dim,
                                float scale, float *scratch) {
    attention_tile(EK_TYPE_Q8_0, q, out, lo, hi, n_q, k, v, row_bytes, head_dim, scale, scratch);
}

void ek_fill_kernels_avx2(ek_kernels *k) {
    ek_fill_kernels_scalar(k); /* nothing is left unset, but every slot is overridden below */
    k->isa = EK_ISA_AVX2;
    k->quantize_q8_32 = quantize_q8_32_avx2;
    k->quantize_q8_k = quantize_q8_k_avx2;
    k->gemm[EK_TYPE_F32] = gemm_f32_avx2;
    k->gemm[EK_TYPE_F16] = gemm_f16_avx2;
    k->gemm[EK_TYPE_BF16] = gemm_bf16_avx2;
    k->gemm[EK_TYPE_Q4_0] = gemm_q4_0_q8_avx2;
    k->gemm[EK_TYPE_Q4_1] = gemm_q4_1_q8_avx2;
    k->gemm[EK_TYPE_Q5_0] = gemm_q5_0_q8_avx2;
    k->gemm[EK_TYPE_Q8_0] = gemm_q8_0_q8_avx2;
    k->gemm[EK_TYPE_Q4_K] = gemm_q4_k_q8k_avx2;
    k->gemm[EK_TYPE_Q6_K] = gemm_q6_k_q8k_avx2;
    k->gemm_repacked[EK_TYPE_Q4_0] = gemm_q4_0x8_q8_avx2;
    k->gemm_repacked[EK_TYPE_Q4_1] = gemm_q4_1x8_q8_avx2;
    k->gemm_repacked[EK_TYPE_Q8_0] = gemm_q8_0x8_q8_avx2;
    k->gemm_repacked[EK_TYPE_Q5_0] = gemm_q5_0x8_q8_avx2;
    k->gemm_repacked[EK_TYPE_Q4_K] = gemm_q4_kx8_q8k_avx2;
    k->gemm_repacked[EK_TYPE_Q6_K] = gemm_q6_kx8_q8k_avx2;
    k->read_sum = read_sum_avx2;
    k->rmsnorm = rmsnorm_avx2;
    k->silu_mul = silu_mul_avx2;
    k->gelu_mul = gelu_mul_avx2;
    k->softmax = softmax_avx2;
    k->attention_f16 = attention_f16_avx2;
    k->attention_q8_0 = attention_q8_0_avx2;
    k->f16_to_f32 = f16_to_f32_avx2;
}
#pragma GCC pop_options
#endif
