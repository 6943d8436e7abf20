/* GGUF tensor formats: block sizes, fp16/bf16 conversion, dequantization of
 * every supported type, quantization to every supported type (with an optional
 * importance matrix, threaded over rows), our 8-bit activation
 * formats, and the lossless load-time repack. This file is the scalar truth
 * the kernels are tested against. Block layouts are described in kernels.h.
 */
#include "kernels.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ fp16, bf16 */

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float ek_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F;
    const uint32_t mant = h & 0x3FF;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (mant << 13)); /* inf / nan */
    if (exp != 0) return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
    /* zero or subnormal: mant * 2^-24 */
    const float v = (float)mant * 5.9604644775390625e-8f;
    return sign ? -v : v;
}

/* Round to nearest even, overflow to inf, subnormals kept. */
uint16_t ek_fp32_to_fp16(float f) {
    const uint32_t u = f32_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    const uint32_t absu = u & 0x7FFFFFFFu;
    if (absu >= 0x7F800000u) /* inf or nan (keep nan quiet) */
        return sign | 0x7C00 | (absu > 0x7F800000u ? 0x200 : 0);
    if (absu >= 0x477FF000u) return sign | 0x7C00; /* rounds to >= 65520: inf */
    if (absu < 0x38800000u) {                       /* below 2^-14: subnormal half */
        /* absu * 2^24 rounded to an integer is the half's mantissa. */
        const float scaled = bits_f32(absu) * 16777216.0f;
        return sign | (uint16_t)lrintf(scaled);
    }
    const uint32_t rounding = 0xFFFu + ((absu >> 13) & 1u);
    return sign | (uint16_t)((absu - 0x38000000u + rounding) >> 13);
}

float ek_bf16_to_fp32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* Round to nearest even; nan stays a quiet nan. */
static uint16_t ek_fp32_to_bf16(float f) {
    const uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* ---------------------------------------------------------- block sizes */

int64_t ek_type_block_elems(int type) {
    switch (type) {
    case EK_TYPE_F32: case EK_TYPE_F16: case EK_TYPE_BF16: return 1;
    case EK_TYPE_Q4_0: case EK_TYPE_Q4_1: case EK_TYPE_Q5_0: case EK_TYPE_Q8_0: return QK32;
    case EK_TYPE_Q4_K: case EK_TYPE_Q6_K: return QK_K;
    default: return 0;
    }
}

int64_t ek_type_block_bytes(int type) {
    switch (type) {
    case EK_TYPE_F32: return 4;
    case EK_TYPE_F16: case EK_TYPE_BF16: return 2;
    case EK_TYPE_Q4_0: return sizeof(block_q4_0);
    case EK_TYPE_Q4_1: return sizeof(block_q4_1);
    case EK_TYPE_Q5_0: return sizeof(block_q5_0);
    case EK_TYPE_Q8_0: return sizeof(block_q8_0);
    case EK_TYPE_Q4_K: return sizeof(block_q4_k);
    case EK_TYPE_Q6_K: return sizeof(block_q6_k);
    default: return 0;
    }
}

/* --------------------------------------------------------- dequantize */

static void dequant_q4_0(const block_q4_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK32) {
        const float d = ek_fp16_to_fp32(b[i].d);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((b[i].qs[j] & 0xF) - 8);
            y[j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void dequant_q4_1(const block_q4_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK32) {
        const float d = ek_fp16_to_fp32(b[i].d), m = ek_fp16_to_fp32(b[i].m);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(b[i].qs[j] & 0xF) + m;
            y[j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
        }
    }
}

static void dequant_q5_0(const block_q5_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK32) {
        const float d = ek_fp16_to_fp32(b[i].d);
        uint32_t qh;
        memcpy(&qh, b[i].qh, 4);
        for (int j = 0; j < 16; j++) {
            const int lo = (b[i].qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4);
            const int hi = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            y[j] = d * (float)(lo - 16);
            y[j + 16] = d * (float)(hi - 16);
        }
    }
}

static void dequant_q8_0(const block_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += QK32) {
        const float d = ek_fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK32; j++) y[j] = d * (float)b[i].qs[j];
    }
}

static void dequant_q4_k(const block_q4_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = ek_fp16_to_fp32(b[i].d), dmin = ek_fp16_to_fp32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int c = 0; c < 4; c++, q += 32) {
            uint8_t sc0, m0, sc1, m1;
            ek_q4_k_scale_min(2 * c, b[i].scales, &sc0, &m0);
            ek_q4_k_scale_min(2 * c + 1, b[i].scales, &sc1, &m1);
            const float d0 = d * sc0, min0 = dmin * m0, d1 = d * sc1, min1 = dmin * m1;
            for (int l = 0; l < 32; l++) *y++ = d0 * (float)(q[l] & 0xF) - min0;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] >> 4) - min1;
        }
    }
}

static void dequant_q6_k(const block_q6_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = ek_fp16_to_fp32(b[i].d);
        for (int h = 0; h < 2; h++, y += 128) {
            const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            const int8_t *sc = b[i].scales + 8 * h;
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

ek_status ek_dequantize(int type, const void *src, float *dst, int64_t n) {
    const int64_t be = ek_type_block_elems(type);
    if (be == 0) return EK_ERR_UNSUPPORTED;
    if (n < 0 || n % be != 0) return EK_ERR_INVALID_ARG;
    const int64_t nb = n / be;
    switch (type) {
    case EK_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case EK_TYPE_F16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = ek_fp16_to_fp32(h[i]);
        break;
    }
    case EK_TYPE_BF16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = ek_bf16_to_fp32(h[i]);
        break;
    }
    case EK_TYPE_Q4_0: dequant_q4_0(src, dst, nb); break;
    case EK_TYPE_Q4_1: dequant_q4_1(src, dst, nb); break;
    case EK_TYPE_Q5_0: dequant_q5_0(src, dst, nb); break;
    case EK_TYPE_Q8_0: dequant_q8_0(src, dst, nb); break;
    case EK_TYPE_Q4_K: dequant_q4_k(src, dst, nb); break;
    case EK_TYPE_Q6_K: dequant_q6_k(src, dst, nb); break;
    default: return EK_ERR_UNSUPPORTED;
    }
    return EK_OK;
}

/* ----------------------------------------------------------- quantize */

/* The value of largest magnitude, with its sign (the first of equal ones). */
static float largest_magnitude(const float *x, int n) {
    float amax = 0.0f, vmax = 0.0f;
    for (int j = 0; j < n; j++)
        if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); vmax = x[j]; }
    return vmax;
}

/* The legacy quantizers below truncate sums that are >= 0 (x * id lies in [-8, 8] for Q4_0):
   truncation is floor there, and is one instruction where floorf is a libm call. */
static void quant_q4_0(const float *x, block_q4_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK32) {
        /* The value of largest magnitude maps to q = 0 (-8 * d), keeping its sign. */
        const float d = largest_magnitude(x, QK32) / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = ek_fp32_to_fp16(d);
        for (int j = 0; j < 16; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + 16] * id + 8.5f);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q4_1(const float *x, block_q4_1 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK32) {
        float lo = x[0], hi = x[0];
        for (int j = 1; j < QK32; j++) {
            lo = x[j] < lo ? x[j] : lo;
            hi = x[j] > hi ? x[j] : hi;
        }
        const float d = (hi - lo) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = ek_fp32_to_fp16(d);
        b[i].m = ek_fp32_to_fp16(lo);
        for (int j = 0; j < 16; j++) {
            int q0 = (int)((x[j] - lo) * id + 0.5f), q1 = (int)((x[j + 16] - lo) * id + 0.5f);
            q0 = q0 < 0 ? 0 : q0 > 15 ? 15 : q0;
            q1 = q1 < 0 ? 0 : q1 > 15 ? 15 : q1;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q8_0(const float *x, block_q8_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK32) {
        float amax = 0.0f;
        for (int j = 0; j < QK32; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = ek_fp32_to_fp16(d);
        /* Halves round away from zero, as llama.cpp's reference quantizer does. */
        for (int j = 0; j < QK32; j++) b[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* Q5_0 without an importance matrix: as Q4_0, with 5-bit q = 0..31 and d = vmax / -16. */
static void quant_q5_0(const float *x, block_q5_0 *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += QK32) {
        const float d = largest_magnitude(x, QK32) / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = ek_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = (int)(x[j] * id + 16.5f), q1 = (int)(x[j + 16] * id + 16.5f);
            q0 = q0 < 0 ? 0 : q0 > 31 ? 31 : q0;
            q1 = q1 < 0 ? 0 : q1 > 31 ? 31 : q1;
            b[i].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)(q0 >> 4) << j | (uint32_t)(q1 >> 4) << (j + 16);
        }
        memcpy(b[i].qh, &qh, 4);
    }
}

static void q4_k_pack_scales(const uint8_t *sc, const uint8_t *m, uint8_t *q);

/* ------------------------------------------------ fitting block scales */
/* The fits' sums may be reassociated (GCC then vectorizes them): their results only choose
   among candidate encodings, each of which is exact. The 32-value quantizers without
   importance above stay strict, because they give llama.cpp's bytes. */
#if defined(__GNUC__) && !defined(__clang__)
#define EK_SUMS_REASSOCIATE __attribute__((optimize("associative-math", "no-signed-zeros", "no-trapping-math")))
#else
#define EK_SUMS_REASSOCIATE
#endif

/* Round to nearest, halves to even, as lrintf in the default rounding mode, without a
   libm call: adding 1.5 * 2^23 leaves the integer in the low mantissa bits (|x| < 2^22;
   larger values, which every caller clamps to a few levels anyway, saturate). */
EK_SUMS_REASSOCIATE static inline int nearest_int(float x) {
    x = x < -4194303.0f ? -4194303.0f : x > 4194303.0f ? 4194303.0f : x;
    const float shifted = x + 12582912.0f;
    return (int)(f32_bits(shifted) & 0x007FFFFFu) - 0x00400000;
}

/* The fits choose a block's scale (and offset) and integer levels L to minimize
   the weighted squared error sum w[i] * (x[i] - x'[i])^2. Without an importance
   matrix the weights are what llama.cpp's quantizers use (x^2 for the symmetric
   fits, |x| + rms for the affine ones); with one, each column's mean squared
   activation times sqrt(sigma2 + x^2). */

/* The symmetric fit's sums run in FIT_LANES fixed partial sums combined in a fixed order, in
   strict float arithmetic, written on GCC's vector types (lane-wise operations the compiler maps to
   whatever registers the target has, never reassociated), so the bytes are the same on every CPU
   and ISA. On x86-64 the fit is also compiled for AVX2, chosen at load
   (GCC's target_clones), because the portable build targets SSE2 only. */
#define FIT_LANES 8
typedef float fit_vf __attribute__((vector_size(4 * FIT_LANES))); /* GCC's generic vectors: lane-wise */
typedef int32_t fit_vi __attribute__((vector_size(4 * FIT_LANES)));
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EK_FIT_CLONES __attribute__((noinline, target_clones("avx2", "default")))
#else
#define EK_FIT_CLONES __attribute__((noinline))
#endif

_Static_assert(FIT_LANES == 8, "lanes_sum adds exactly 8 lanes in a fixed tree");
static inline float lanes_sum(const float *p) {
    return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

/* Vectors go by pointer: passing them by value would tie the portable build to the AVX ABI. */
static inline float vf_sum(const fit_vf *v) {
    float lanes[FIT_LANES];
    memcpy(lanes, v, sizeof lanes);
    return lanes_sum(lanes);
}

/* The integers nearest to v (halves to even), clamped to [lo, hi], lane-wise as nearest_int:
   v is first clamped to |v| < 2^22 so that adding 1.5 * 2^23 leaves the integer in the low
   mantissa bits, which an integer subtraction reads out. */
static inline void fit_levels(const fit_vf *v, int lo, int hi, fit_vi *out) {
    const float limit = 4194303.0f, neg_limit = -4194303.0f;
    int32_t limit_bits, neg_limit_bits;
    memcpy(&limit_bits, &limit, 4), memcpy(&neg_limit_bits, &neg_limit, 4);
    const fit_vi too_big = *v > limit, too_small = *v < neg_limit; /* lanes all ones where true */
    fit_vi bits;
    memcpy(&bits, v, sizeof bits);
    bits = (bits & ~(too_big | too_small)) | (too_big & limit_bits) | (too_small & neg_limit_bits);
    fit_vf shifted;
    memcpy(&shifted, &bits, sizeof shifted);
    shifted += 12582912.0f;
    fit_vi q;
    memcpy(&q, &shifted, sizeof q);
    q -= 0x4B400000;
    const fit_vi below = q < lo, above = q > hi;
    *out = (q & ~(below | above)) | (below & lo) | (above & hi);
}

/* A sub-block's values and error weights (imp NULL: 1) as nvec vectors. */
static inline void load_sub_block(int nvec, const float *x, const float *imp, fit_vf *xv, fit_vf *ev) {
    for (int v = 0; v < nvec; v++) {
        memcpy(&xv[v], x + FIT_LANES * v, sizeof xv[v]);
        if (imp) memcpy(&ev[v], imp + FIT_LANES * v, sizeof ev[v]);
        else ev[v] = (fit_vf){0} + 1.0f;
    }
}

/* Levels q + bias as bytes. */
static inline void store_levels(int nvec, const fit_vi *q, int bias, uint8_t *L) {
    for (int v = 0; v < nvec; v++)
        for (int l = 0; l < FIT_LANES; l++) L[FIT_LANES * v + l] = (uint8_t)(q[v][l] + bias);
}

/* x ~= d * (L - nmax) with L in [0, 2 nmax): tries 19 scales around the one mapping the
   value of largest magnitude to -nmax and keeps the best; w NULL, or all zero, means w = x^2
   (an importance matrix may hold zeros for columns its text never used; those weights still
   matter for other inputs, and a zero scale would erase the block). Returns d; L (NULL when
   only d is wanted) gets the levels of the best scale. */
EK_FIT_CLONES static float fit_symmetric(int n, int nmax, const float *x, const float *w, uint8_t *L) {
    const float vmax = largest_magnitude(x, n);
    if (fabsf(vmax) < 1e-30f) {
        if (L)
            for (int i = 0; i < n; i++) L[i] = (uint8_t)nmax;
        return 0.0f;
    }
    if (w) {
        int any_weight = 0;
        for (int i = 0; i < n; i++) any_weight |= w[i] > 0.0f;
        if (!any_weight) w = NULL;
    }
    float wt[QK32], wx[QK32]; /* n <= QK32, a multiple of FIT_LANES */
    for (int i = 0; i < n; i++) {
        wt[i] = w ? w[i] : x[i] * x[i];
        wx[i] = wt[i] * x[i];
    }
    float best_gain = -1.0f, best_d = 0.0f, best_iscale = 0.0f;
    for (int step = -9; step <= 9; step++) {
        const float iscale = -((float)nmax + 0.1f * (float)step) / vmax;
        fit_vf acc_xq = {0}, acc_q2 = {0};
        for (int i0 = 0; i0 < n; i0 += FIT_LANES) {
            fit_vf xv, wxv, wtv;
            memcpy(&xv, x + i0, sizeof xv), memcpy(&wxv, wx + i0, sizeof wxv), memcpy(&wtv, wt + i0, sizeof wtv);
            const fit_vf scaled = xv * iscale;
            fit_vi qi;
            fit_levels(&scaled, -nmax, nmax - 1, &qi);
            const fit_vf q = __builtin_convertvector(qi, fit_vf);
            acc_xq += wxv * q;
            acc_q2 += wtv * q * q;
        }
        const float sum_xq = vf_sum(&acc_xq), sum_q2 = vf_sum(&acc_q2);
        /* With d = sum_xq / sum_q2 the error is sum w x^2 - sum_xq^2 / sum_q2. */
        if (sum_q2 > 0.0f && sum_xq * sum_xq > best_gain * sum_q2) {
            best_gain = sum_xq * sum_xq / sum_q2;
            best_d = sum_xq / sum_q2;
            best_iscale = iscale;
        }
    }
    if (L) /* lane-wise too: the scalar nearest_int is not inlined into this clone */
        for (int i0 = 0; i0 < n; i0 += FIT_LANES) {
            fit_vf scaled;
            memcpy(&scaled, x + i0, sizeof scaled);
            scaled *= best_iscale;
            fit_vi q;
            fit_levels(&scaled, -nmax, nmax - 1, &q);
            for (int l = 0; l < FIT_LANES; l++) L[i0 + l] = (uint8_t)(q[l] + nmax);
        }
    return best_d;
}

/* x ~= d * L - m with L in [0, nmax] and m >= 0: starts from the min/max fit, then for
   nstep + 1 trial scales (nmax + rmin + rdelta * k) / (max - min) solves the weighted
   least squares for d and m given L. Returns d; *m_out = m. Its sums run lane-wise like
   fit_symmetric's. */
EK_FIT_CLONES static float fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L, float *m_out,
                                      float rmin, float rdelta, int nstep) {
    enum { MAX_VECS = QK32 / FIT_LANES };
    const int nvec = n / FIT_LANES; /* n <= QK32, a multiple of FIT_LANES */
    fit_vf xv[MAX_VECS], wv[MAX_VECS], acc_w = {0}, acc_x = {0};
    float lo = x[0], hi = x[0];
    for (int i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    for (int v = 0; v < nvec; v++) {
        memcpy(&xv[v], x + FIT_LANES * v, sizeof xv[v]), memcpy(&wv[v], w + FIT_LANES * v, sizeof wv[v]);
        acc_w += wv[v];
        acc_x += wv[v] * xv[v];
    }
    const float sum_w = vf_sum(&acc_w), sum_x = vf_sum(&acc_x);
    if (lo > 0.0f) lo = 0.0f;
    if (hi == lo) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *m_out = -lo;
        return 0.0f;
    }
    float d = (hi - lo) / (float)nmax, offset = lo;
    const float iscale0 = (float)nmax / (hi - lo);
    fit_vi best[MAX_VECS];
    fit_vf acc_err = {0};
    for (int v = 0; v < nvec; v++) {
        const fit_vf scaled = (xv[v] - lo) * iscale0;
        fit_levels(&scaled, 0, nmax, &best[v]);
        const fit_vf e = __builtin_convertvector(best[v], fit_vf) * d + lo - xv[v];
        acc_err += wv[v] * e * e;
    }
    float best_err = vf_sum(&acc_err);
    for (int k = 0; k <= nstep; k++) {
        const float iscale = ((float)nmax + rmin + rdelta * (float)k) / (hi - lo);
        fit_vi trial[MAX_VECS];
        fit_vf acc_l = {0}, acc_l2 = {0}, acc_xl = {0};
        for (int v = 0; v < nvec; v++) {
            const fit_vf scaled = (xv[v] - lo) * iscale;
            fit_levels(&scaled, 0, nmax, &trial[v]);
            const fit_vf q = __builtin_convertvector(trial[v], fit_vf), wq = wv[v] * q;
            acc_l += wq;
            acc_l2 += wq * q;
            acc_xl += wq * xv[v];
        }
        const float sum_l = vf_sum(&acc_l), sum_l2 = vf_sum(&acc_l2), sum_xl = vf_sum(&acc_xl);
        const float det = sum_w * sum_l2 - sum_l * sum_l;
        if (det <= 0.0f) continue;
        float trial_d = (sum_w * sum_xl - sum_x * sum_l) / det;
        float trial_offset = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (trial_offset > 0.0f) { /* the offset may only move values down */
            trial_offset = 0.0f;
            trial_d = sum_xl / sum_l2;
        }
        acc_err = (fit_vf){0};
        for (int v = 0; v < nvec; v++) {
            const fit_vf e = __builtin_convertvector(trial[v], fit_vf) * trial_d + trial_offset - xv[v];
            acc_err += wv[v] * e * e;
        }
        const float err = vf_sum(&acc_err);
        if (err < best_err) {
            best_err = err;
            d = trial_d;
            offset = trial_offset;
            memcpy(best, trial, sizeof(fit_vi) * (size_t)nvec);
        }
    }
    store_levels(nvec, best, 0, L);
    *m_out = -offset;
    return d;
}

/* Weights for the fits from an importance matrix (imp, one per value) and the values. */
EK_SUMS_REASSOCIATE static void importance_weights(int n, const float *x, const float *imp, float sigma2, float *w) {
    for (int i = 0; i < n; i++) w[i] = imp[i] * sqrtf(sigma2 + x[i] * x[i]);
}

EK_SUMS_REASSOCIATE static float mean_square(const float *x, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return (float)(s / (double)n);
}

/* ------------------------------------------------------------ K-quants */
/* Each super-block is encoded twice: with the super-scales the sub-block fits suggest, then
   with the least-squares super-scales for the codes the first encoding chose; the one with
   the smaller error is kept. Within an encoding, rounding the sub-block scales to their
   6-bit (Q4_K) or 8-bit (Q6_K) codes moves the best levels, so each sub-block tries the
   neighbouring codes and keeps the one with the least error after the final rounding of its
   levels; the plain nearest codes are among the candidates. */

/* One 32-value Q4_K sub-block: of the scale codes s near sc0 and offset codes m near mn0 (within
   one, in 0..63), the pair whose levels q (0..15) for x ~= d s q - dmin m give the least error
   weighted by imp (NULL: 1). Sets *sc, *mn and L; returns the error. */
EK_FIT_CLONES static float q4_k_sub_codes(const float *xs, const float *imp, float d, float dmin, int sc0, int mn0,
                                          uint8_t *sc, uint8_t *mn, uint8_t *L) {
    enum { VECS = 32 / FIT_LANES };
    fit_vf xv[VECS], ev[VECS];
    load_sub_block(VECS, xs, imp, xv, ev);
    fit_vi best[VECS] = {{0}};
    float best_err = FLT_MAX;
    *sc = 0, *mn = 0;
    for (int s = sc0 - 1; s <= sc0 + 1; s++) {
        if (s < 0 || s > 63) continue;
        for (int m = mn0 - 1; m <= mn0 + 1; m++) {
            if (m < 0 || m > 63) continue;
            const float ds = d * (float)s, dm = dmin * (float)m, inv_ds = ds != 0.0f ? 1.0f / ds : 0.0f;
            fit_vi q[VECS];
            fit_vf acc_err = {0};
            for (int v = 0; v < VECS; v++) {
                const fit_vf scaled = (xv[v] + dm) * inv_ds;
                fit_levels(&scaled, 0, 15, &q[v]);
                const fit_vf e = __builtin_convertvector(q[v], fit_vf) * ds - dm - xv[v];
                acc_err += ev[v] * e * e;
            }
            const float err = vf_sum(&acc_err);
            if (err < best_err) {
                best_err = err;
                *sc = (uint8_t)s, *mn = (uint8_t)m;
                memcpy(best, q, sizeof best);
            }
        }
    }
    store_levels(VECS, best, 0, L);
    return best_err;
}

/* Q4_K codes for x given f16 d and dmin: sub-block j's float scale[j] and offset[j] round to
   codes near scale[j] / d and offset[j] / dmin. Fills sc, mn, L; returns the error. */
EK_SUMS_REASSOCIATE static float encode_q4_k(const float *x, const float *imp, const float *scale,
                                             const float *offset, float d, float dmin, uint8_t *sc,
                                             uint8_t *mn, uint8_t *L) {
    const float inv_d = d > 0.0f ? 1.0f / d : 0.0f, inv_dmin = dmin > 0.0f ? 1.0f / dmin : 0.0f;
    float total = 0.0f;
    for (int j = 0; j < 8; j++)
        total += q4_k_sub_codes(x + 32 * j, imp ? imp + 32 * j : NULL, d, dmin, nearest_int(inv_d * scale[j]),
                                nearest_int(inv_dmin * offset[j]), &sc[j], &mn[j], L + 32 * j);
    return total;
}

/* The (d, dmin) minimizing sum e (d a - dmin c - x)^2 for a = sc q and c = mn; 0 when singular. */
EK_SUMS_REASSOCIATE static int refit_q4_k(const float *x, const float *imp, const uint8_t *sc,
                                          const uint8_t *mn, const uint8_t *L, float *d, float *dmin) {
    double saa = 0, sac = 0, scc = 0, sax = 0, scx = 0;
    for (int i = 0; i < QK_K; i++) {
        const double e = imp ? imp[i] : 1.0, a = (double)sc[i / 32] * L[i], c = mn[i / 32];
        saa += e * a * a, sac += e * a * c, scc += e * c * c, sax += e * a * x[i], scx += e * c * x[i];
    }
    const double det = saa * scc - sac * sac;
    if (!(det > 1e-12 * saa * scc)) return 0;
    /* d saa - dmin sac = sax, d sac - dmin scc = scx */
    *d = (float)((sax * scc - sac * scx) / det);
    *dmin = (float)((sax * sac - saa * scx) / det);
    return *d > 0.0f && *dmin >= 0.0f;
}

static void pack_q4_k(const uint8_t *sc, const uint8_t *mn, const uint8_t *L, block_q4_k *b) {
    q4_k_pack_scales(sc, mn, b->scales);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            b->qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

/* One Q4_K super-block: 8 sub-blocks of 32 fitted as x ~= d_j q - m_j, q in 0..15, with
   d_j and m_j stored as 6-bit multiples of the f16 d and dmin. */
EK_SUMS_REASSOCIATE static void quant_q4_k_block(const float *x, const float *imp, block_q4_k *b) {
    uint8_t L[QK_K], sc[8], mn[8];
    float scale[8], offset[8], w[32];
    const float sigma2 = 2.0f * mean_square(x, QK_K);
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        if (imp) {
            importance_weights(32, xs, imp + 32 * j, sigma2, w);
            scale[j] = fit_affine(32, 15, xs, w, L + 32 * j, &offset[j], -0.9f, 0.05f, 36);
        } else {
            const float rms = sqrtf(mean_square(xs, 32));
            for (int l = 0; l < 32; l++) w[l] = rms + fabsf(xs[l]);
            scale[j] = fit_affine(32, 15, xs, w, L + 32 * j, &offset[j], -1.0f, 0.1f, 20);
        }
    }
    float max_scale = 0.0f, max_offset = 0.0f;
    for (int j = 0; j < 8; j++) {
        max_scale = scale[j] > max_scale ? scale[j] : max_scale;
        max_offset = offset[j] > max_offset ? offset[j] : max_offset;
    }
    b->d = ek_fp32_to_fp16(max_scale / 63.0f);
    b->dmin = ek_fp32_to_fp16(max_offset / 63.0f);
    const float err = encode_q4_k(x, imp, scale, offset, ek_fp16_to_fp32(b->d), ek_fp16_to_fp32(b->dmin),
                                  sc, mn, L);
    float d2, dmin2;
    if (refit_q4_k(x, imp, sc, mn, L, &d2, &dmin2)) {
        const uint16_t h_d = ek_fp32_to_fp16(d2), h_dmin = ek_fp32_to_fp16(dmin2);
        uint8_t L2[QK_K], sc2[8], mn2[8];
        if (encode_q4_k(x, imp, scale, offset, ek_fp16_to_fp32(h_d), ek_fp16_to_fp32(h_dmin), sc2, mn2, L2) < err) {
            b->d = h_d, b->dmin = h_dmin;
            pack_q4_k(sc2, mn2, L2, b);
            return;
        }
    }
    pack_q4_k(sc, mn, L, b);
}

/* One 16-value Q6_K sub-block: of the scale codes s near s0 (within one, in -128..127), the one
   whose levels q (-32..31) for x ~= d s q give the least error weighted by imp (NULL: 1). Sets
   *sc and L (q + 32); returns the error. */
EK_FIT_CLONES static float q6_k_sub_codes(const float *xs, const float *imp, float d, int s0, int8_t *sc,
                                          uint8_t *L) {
    enum { VECS = 16 / FIT_LANES };
    fit_vf xv[VECS], ev[VECS];
    load_sub_block(VECS, xs, imp, xv, ev);
    fit_vi best[VECS] = {{0}};
    float best_err = FLT_MAX;
    *sc = 0;
    for (int s = s0 - 1; s <= s0 + 1; s++) {
        if (s < -128 || s > 127) continue;
        const float ds = d * (float)s, inv_ds = ds != 0.0f ? 1.0f / ds : 0.0f;
        fit_vi q[VECS];
        fit_vf acc_err = {0};
        for (int v = 0; v < VECS; v++) {
            const fit_vf scaled = xv[v] * inv_ds;
            fit_levels(&scaled, -32, 31, &q[v]);
            const fit_vf e = __builtin_convertvector(q[v], fit_vf) * ds - xv[v];
            acc_err += ev[v] * e * e;
        }
        const float err = vf_sum(&acc_err);
        if (err < best_err) {
            best_err = err;
            *sc = (int8_t)s;
            memcpy(best, q, sizeof best);
        }
    }
    store_levels(VECS, best, 32, L);
    return best_err;
}

/* Q6_K codes for x given the f16 d: sub-block j's float scale[j] rounds to a code near
   scale[j] / d. Fills sc and L (q + 32); returns the error. */
EK_SUMS_REASSOCIATE static float encode_q6_k(const float *x, const float *imp, const float *scale, float d,
                                             int8_t *sc, uint8_t *L) {
    const float inv_d = d != 0.0f ? 1.0f / d : 0.0f;
    float total = 0.0f;
    for (int j = 0; j < 16; j++)
        total += q6_k_sub_codes(x + 16 * j, imp ? imp + 16 * j : NULL, d, nearest_int(inv_d * scale[j]), &sc[j],
                                L + 16 * j);
    return total;
}

static void pack_q6_k(const int8_t *sc, const uint8_t *L, block_q6_k *b) {
    memcpy(b->scales, sc, 16);
    for (int h = 0; h < 2; h++) {
        const uint8_t *Lh = L + 128 * h;
        uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        for (int l = 0; l < 32; l++) {
            ql[l] = (uint8_t)((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
            ql[l + 32] = (uint8_t)((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
            qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                              ((Lh[l + 96] >> 4) << 6));
        }
    }
}

/* One Q6_K super-block: 16 sub-blocks of 16 fitted symmetrically with q in -32..31, their
   scales stored as int8 multiples of the f16 d. */
EK_SUMS_REASSOCIATE static void quant_q6_k_block(const float *x, const float *imp, block_q6_k *b) {
    uint8_t L[QK_K];
    int8_t sc[16];
    float scale[16], w[16];
    const float sigma2 = 2.0f * mean_square(x, QK_K);
    float max_scale = 0.0f, max_abs = 0.0f;
    for (int j = 0; j < 16; j++) {
        if (imp) importance_weights(16, x + 16 * j, imp + 16 * j, sigma2, w);
        scale[j] = fit_symmetric(16, 32, x + 16 * j, imp ? w : NULL, NULL); /* encode_q6_k sets the levels */
        if (fabsf(scale[j]) > max_abs) { max_abs = fabsf(scale[j]); max_scale = scale[j]; }
    }
    if (max_abs < 1e-30f) {
        memset(b, 0, sizeof(*b));
        return;
    }
    b->d = ek_fp32_to_fp16(max_scale / -128.0f);
    const float err = encode_q6_k(x, imp, scale, ek_fp16_to_fp32(b->d), sc, L);
    /* least-squares d for the codes chosen: sum e x (sc q) / sum e (sc q)^2 */
    double sxt = 0.0, stt = 0.0;
    for (int i = 0; i < QK_K; i++) {
        const double e = imp ? imp[i] : 1.0, t = (double)sc[i / 16] * ((int)L[i] - 32);
        sxt += e * x[i] * t, stt += e * t * t;
    }
    if (stt > 0.0) {
        const uint16_t h_d = ek_fp32_to_fp16((float)(sxt / stt));
        uint8_t L2[QK_K];
        int8_t sc2[16];
        if (encode_q6_k(x, imp, scale, ek_fp16_to_fp32(h_d), sc2, L2) < err) {
            b->d = h_d;
            pack_q6_k(sc2, L2, b);
            return;
        }
    }
    pack_q6_k(sc, L, b);
}

/* ------------------------------------- 32-value types with importance */

EK_SUMS_REASSOCIATE static void quant_legacy_weighted(int type, const float *x, const float *imp, void *dst, int64_t n) {
    const float sigma2 = mean_square(x, n);
    float w[QK32];
    uint8_t L[QK32];
    for (int64_t i = 0; i < n / QK32; i++, x += QK32, imp += QK32) {
        importance_weights(QK32, x, imp, sigma2, w);
        if (type == EK_TYPE_Q4_1) {
            block_q4_1 *b = (block_q4_1 *)dst + i;
            float offset;
            const float d = fit_affine(QK32, 15, x, w, L, &offset, -0.9f, 0.05f, 36);
            b->d = ek_fp32_to_fp16(d);
            b->m = ek_fp32_to_fp16(-offset);
            for (int j = 0; j < 16; j++) b->qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
        } else if (type == EK_TYPE_Q4_0) {
            block_q4_0 *b = (block_q4_0 *)dst + i;
            b->d = ek_fp32_to_fp16(fit_symmetric(QK32, 8, x, w, L));
            for (int j = 0; j < 16; j++) b->qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
        } else { /* Q5_0 */
            block_q5_0 *b = (block_q5_0 *)dst + i;
            b->d = ek_fp32_to_fp16(fit_symmetric(QK32, 16, x, w, L));
            uint32_t qh = 0;
            for (int j = 0; j < 16; j++) {
                b->qs[j] = (uint8_t)((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4));
                qh |= (uint32_t)(L[j] >> 4) << j | (uint32_t)(L[j + 16] >> 4) << (j + 16);
            }
            memcpy(b->qh, &qh, 4);
        }
    }
}

/* n values of one row; imp (n weights) NULL: no importance matrix. */
static ek_status quantize_row(int type, const float *src, void *dst, int64_t n, const float *imp) {
    const int64_t be = ek_type_block_elems(type);
    if (be == 0) return EK_ERR_UNSUPPORTED;
    if (n < 0 || n % be != 0) return EK_ERR_INVALID_ARG;
    switch (type) {
    case EK_TYPE_F32: memcpy(dst, src, (size_t)n * 4); return EK_OK;
    case EK_TYPE_F16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = ek_fp32_to_fp16(src[i]);
        return EK_OK;
    }
    case EK_TYPE_BF16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = ek_fp32_to_bf16(src[i]);
        return EK_OK;
    }
    case EK_TYPE_Q8_0: quant_q8_0(src, dst, n / be); return EK_OK; /* 8 bits need no importance */
    case EK_TYPE_Q4_0: case EK_TYPE_Q4_1: case EK_TYPE_Q5_0:
        if (imp) quant_legacy_weighted(type, src, imp, dst, n);
        else if (type == EK_TYPE_Q4_0) quant_q4_0(src, dst, n / be);
        else if (type == EK_TYPE_Q4_1) quant_q4_1(src, dst, n / be);
        else quant_q5_0(src, dst, n / be);
        return EK_OK;
    case EK_TYPE_Q4_K:
        for (int64_t i = 0; i < n / be; i++) quant_q4_k_block(src + i * be, imp ? imp + i * be : NULL, (block_q4_k *)dst + i);
        return EK_OK;
    case EK_TYPE_Q6_K:
        for (int64_t i = 0; i < n / be; i++) quant_q6_k_block(src + i * be, imp ? imp + i * be : NULL, (block_q6_k *)dst + i);
        return EK_OK;
    default: return EK_ERR_UNSUPPORTED;
    }
}

ek_status ek_quantize(int type, const float *src, void *dst, int64_t n) {
    return quantize_row(type, src, dst, n, NULL);
}

/* ------------------------------------------------- quantizing many rows */

/* Each task widens its F16 or BF16 rows one at a time into its own float row (F16 with the
   active ISA's conversion: the hot loop when quantizing an F16 model), checks the row is
   finite and quantizes it; F32 rows are read in place. So no float copy of the matrix is
   made, and a row is quantized while it is still in cache. */
typedef struct {
    int type, src_type;
    const uint8_t *src;   /* n_rows rows of n_cols src_type values, src_row_bytes apart */
    size_t src_row_bytes;
    uint8_t *dst;         /* n_rows rows of row_bytes */
    size_t row_bytes;
    const float *imp;     /* (n_cols) or NULL */
    int64_t n_rows, n_cols;
    float *rows;          /* (nth, n_cols): task ith's widened row; NULL for an F32 source */
    int64_t *first_bad;   /* (nth): task ith's first row holding NaN or infinity, else n_rows */
    void (*f16_to_f32)(const uint16_t *h, float *y, int64_t n);
} quantize_job;

/* 1 when no value is NaN or infinite (an all-ones exponent); no early exit, so it vectorizes. */
static int row_is_finite(const float *x, int64_t n) {
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad |= (f32_bits(x[i]) & 0x7F800000u) == 0x7F800000u;
    return !bad;
}

static void bf16_to_f32_row(const uint16_t *h, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = bits_f32((uint32_t)h[i] << 16);
}

static void quantize_rows_task(void *ctx, int ith, int nth) {
    const quantize_job *job = ctx;
    const int64_t r0 = job->n_rows * ith / nth, r1 = job->n_rows * (ith + 1) / nth, n = job->n_cols;
    float *widened = job->rows ? job->rows + (size_t)ith * (size_t)n : NULL;
    job->first_bad[ith] = job->n_rows;
    for (int64_t r = r0; r < r1; r++) {
        const void *src = job->src + (size_t)r * job->src_row_bytes;
        const float *x = src;
        if (job->src_type == EK_TYPE_F16) job->f16_to_f32(src, widened, n);
        if (job->src_type == EK_TYPE_BF16) bf16_to_f32_row(src, widened, n);
        if (widened) x = widened;
        if (!row_is_finite(x, n)) {
            job->first_bad[ith] = r; /* the rows are in order: the task's first bad row */
            return;
        }
        quantize_row(job->type, x, job->dst + (size_t)r * job->row_bytes, n, job->imp);
    }
}

ek_status ek_quantize_rows(int type, int src_type, const void *src, void *dst, int64_t n_rows, int64_t n_cols,
                           const float *importance, ek_pool *pool, int64_t *bad_row) {
    const int64_t be = ek_type_block_elems(type);
    if (bad_row) *bad_row = -1;
    if (be == 0) return EK_ERR_UNSUPPORTED;
    if (src_type != EK_TYPE_F32 && src_type != EK_TYPE_F16 && src_type != EK_TYPE_BF16) return EK_ERR_UNSUPPORTED;
    if (n_rows < 0 || n_cols <= 0 || n_cols % be != 0) return EK_ERR_INVALID_ARG;
    const int nth = ek_pool_threads(pool);
    int64_t *first_bad = malloc((size_t)nth * sizeof *first_bad);
    float *rows = src_type == EK_TYPE_F32 ? NULL : malloc((size_t)nth * (size_t)n_cols * sizeof *rows);
    if (!first_bad || (src_type != EK_TYPE_F32 && !rows)) {
        free(first_bad);
        free(rows);
        return EK_ERR_NO_MEMORY;
    }
    const quantize_job job = {type, src_type, src, (size_t)n_cols * (size_t)ek_type_block_bytes(src_type), dst,
                              (size_t)(n_cols / be * ek_type_block_bytes(type)), importance, n_rows, n_cols,
                              rows, first_bad, ek_kernels_active()->f16_to_f32};
    ek_pool_run(pool, quantize_rows_task, (void *)&job);
    int64_t bad = n_rows;
    for (int i = 0; i < nth; i++) bad = first_bad[i] < bad ? first_bad[i] : bad;
    free(first_bad);
    free(rows);
    if (bad == n_rows) return EK_OK;
    if (bad_row) *bad_row = bad;
    return EK_ERR_NON_FINITE;
}

/* ------------------------------------------------- activation formats */

ek_act_format ek_act_format_for(int type) {
    switch (type) {
    case EK_TYPE_Q4_0: case EK_TYPE_Q4_1: case EK_TYPE_Q5_0: case EK_TYPE_Q8_0: return EK_ACT_Q8_32;
    case EK_TYPE_Q4_K: case EK_TYPE_Q6_K: return EK_ACT_Q8_K;
    default: return EK_ACT_F32;
    }
}

size_t ek_act_row_bytes(int type, int64_t n_cols) {
    switch (ek_act_format_for(type)) {
    case EK_ACT_Q8_32: return (size_t)(n_cols / QK32) * sizeof(block_q8_32);
    case EK_ACT_Q8_K: return (size_t)(n_cols / QK_K) * sizeof(block_q8_k);
    default: return (size_t)n_cols * sizeof(float);
    }
}

/* x ~= d * q with d = max|x| / 127; q = round-half-even(x / d), computed as
   x * (1 / d) so that SIMD versions can reproduce it bit for bit. */
void ek_quantize_q8_32_scalar(const float *x, void *xq, int64_t n) {
    block_q8_32 *b = xq;
    for (int64_t i = 0; i < n / QK32; i++, x += QK32) {
        float amax = 0.0f;
        for (int j = 0; j < QK32; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < QK32; j++) {
            const int32_t q = (int32_t)nearbyintf(x[j] * id);
            b[i].qs[j] = (int8_t)q;
            sum += q;
        }
        b[i].d = d;
        b[i].s = d * (float)sum;
    }
}

void ek_quantize_q8_k_scalar(const float *x, void *xq, int64_t n) {
    block_q8_k *b = xq;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float amax = 0.0f;
        for (int j = 0; j < QK_K; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        for (int j = 0; j < QK_K; j++) b[i].qs[j] = (int8_t)nearbyintf(x[j] * id);
        for (int k = 0; k < 16; k++) {
            int32_t s = 0;
            for (int j = 0; j < 16; j++) s += b[i].qs[16 * k + j];
            b[i].bsums[k] = (int16_t)s;
        }
        b[i].d = amax / 127.0f;
    }
}

/* ------------------------------------------------------------- repack */

int ek_repack_supported(int type) {
    switch (type) {
    case EK_TYPE_Q4_0: case EK_TYPE_Q4_1: case EK_TYPE_Q8_0:
    case EK_TYPE_Q5_0: case EK_TYPE_Q4_K: case EK_TYPE_Q6_K: return 1;
    default: return 0;
    }
}

size_t ek_repack_slice_bytes(int type) {
    switch (type) {
    case EK_TYPE_Q4_0: return sizeof(block_q4_0x8);
    case EK_TYPE_Q4_1: return sizeof(block_q4_1x8);
    case EK_TYPE_Q8_0: return sizeof(block_q8_0x8);
    case EK_TYPE_Q5_0: return sizeof(block_q5_0x8);
    case EK_TYPE_Q4_K: return sizeof(block_q4_kx8);
    case EK_TYPE_Q6_K: return sizeof(block_q6_kx8);
    default: return 0;
    }
}

/* Interleave (or, unpack, de-interleave) n bytes of one row's block into a slice's quant bytes. */
static void interleave_bytes(uint8_t *slice_qs, int lane, uint8_t *block_qs, int n, int unpack) {
    for (int j = 0; j < n; j++) {
        if (unpack) block_qs[j] = slice_qs[ek_repack_index(lane, j)];
        else slice_qs[ek_repack_index(lane, j)] = block_qs[j];
    }
}

/* Q5_0's qh: bit e of the block is the 5th bit of element e. In the slice, byte i of
   row r's 32-bit word holds at bit k the 5th bit of element ek_q5_0x8_element(k, i). */
static inline int q5_0x8_element(int k, int i) { return k < 4 ? 4 * k + i : 16 + 4 * (k - 4) + i; }

static void q5_0x8_high_bits(uint8_t *slice_qh, int lane, uint8_t *block_qh, int unpack) {
    uint32_t src, dst = 0;
    memcpy(&src, unpack ? slice_qh + 4 * lane : block_qh, 4);
    for (int k = 0; k < 8; k++)
        for (int i = 0; i < 4; i++) {
            const int e = q5_0x8_element(k, i), s = 8 * i + k;
            if (unpack) dst |= ((src >> s) & 1u) << e;
            else dst |= ((src >> e) & 1u) << s;
        }
    memcpy(unpack ? block_qh : slice_qh + 4 * lane, &dst, 4);
}

/* Q4_K's 12 packed bytes <-> 8 scales and 8 mins, each 6 bits. */
static void q4_k_unpack_scales(const uint8_t *q, uint8_t *sc, uint8_t *m) {
    for (int j = 0; j < 8; j++) ek_q4_k_scale_min(j, q, &sc[j], &m[j]);
}

static void q4_k_pack_scales(const uint8_t *sc, const uint8_t *m, uint8_t *q) {
    for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        q[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
    }
}

/* Copy one GGUF block of row `lane` into a slice, or (unpack) back out of it. */
static void slice_copy(int type, void *slice, int lane, void *block, int unpack) {
    switch (type) {
    case EK_TYPE_Q4_0: {
        block_q4_0x8 *s = slice;
        block_q4_0 *q = block;
        if (unpack) q->d = s->d[lane]; else s->d[lane] = q->d;
        interleave_bytes(s->qs, lane, q->qs, 16, unpack);
        break;
    }
    case EK_TYPE_Q4_1: {
        block_q4_1x8 *s = slice;
        block_q4_1 *q = block;
        if (unpack) q->d = s->d[lane], q->m = s->m[lane]; else s->d[lane] = q->d, s->m[lane] = q->m;
        interleave_bytes(s->qs, lane, q->qs, 16, unpack);
        break;
    }
    case EK_TYPE_Q8_0: {
        block_q8_0x8 *s = slice;
        block_q8_0 *q = block;
        if (unpack) q->d = s->d[lane]; else s->d[lane] = q->d;
        interleave_bytes((uint8_t *)s->qs, lane, (uint8_t *)q->qs, 32, unpack);
        break;
    }
    case EK_TYPE_Q5_0: {
        block_q5_0x8 *s = slice;
        block_q5_0 *q = block;
        if (unpack) q->d = s->d[lane]; else s->d[lane] = q->d;
        q5_0x8_high_bits(s->qh, lane, q->qh, unpack);
        interleave_bytes(s->qs, lane, q->qs, 16, unpack);
        break;
    }
    case EK_TYPE_Q4_K: {
        block_q4_kx8 *s = slice;
        block_q4_k *q = block;
        uint8_t sc[8], m[8];
        if (unpack) {
            q->d = s->d[lane], q->dmin = s->dmin[lane];
            for (int j = 0; j < 8; j++) {
                sc[j] = s->sc[ek_repack_pair_index(lane, j)];
                m[j] = s->m[ek_repack_pair_index(lane, j)];
            }
            q4_k_pack_scales(sc, m, q->scales);
        } else {
            s->d[lane] = q->d, s->dmin[lane] = q->dmin;
            q4_k_unpack_scales(q->scales, sc, m);
            for (int j = 0; j < 8; j++) {
                s->sc[ek_repack_pair_index(lane, j)] = sc[j];
                s->m[ek_repack_pair_index(lane, j)] = m[j];
            }
        }
        interleave_bytes(s->qs, lane, q->qs, 128, unpack);
        break;
    }
    case EK_TYPE_Q6_K: {
        block_q6_kx8 *s = slice;
        block_q6_k *q = block;
        if (unpack) q->d = s->d[lane]; else s->d[lane] = q->d;
        for (int k = 0; k < 16; k++) {
            if (unpack) q->scales[k] = s->sc[ek_repack_pair_index(lane, k)];
            else s->sc[ek_repack_pair_index(lane, k)] = q->scales[k];
        }
        for (int j = 0; j < 128; j++) {
            if (unpack) q->ql[j] = s->q[ek_q6_kx8_index(lane, j, 0)];
            else s->q[ek_q6_kx8_index(lane, j, 0)] = q->ql[j];
        }
        for (int j = 0; j < 64; j++) {
            if (unpack) q->qh[j] = s->q[ek_q6_kx8_index(lane, j, 1)];
            else s->q[ek_q6_kx8_index(lane, j, 1)] = q->qh[j];
        }
        break;
    }
    default: return;
    }
}

void ek_repack(int type, const void *src, int64_t n_rows, int64_t n_cols, void *dst) {
    const int64_t nb = n_cols / ek_type_block_elems(type);
    const size_t bb = (size_t)ek_type_block_bytes(type), sb = ek_repack_slice_bytes(type);
    const int64_t n_groups = (n_rows + EK_REPACK_ROWS - 1) / EK_REPACK_ROWS;
    memset(dst, 0, (size_t)n_groups * (size_t)nb * sb); /* rows past n_rows: zero blocks */
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = (const uint8_t *)src + (size_t)r * (size_t)nb * bb;
        uint8_t *group = (uint8_t *)dst + (size_t)(r / EK_REPACK_ROWS) * (size_t)nb * sb;
        for (int64_t b = 0; b < nb; b++)
            slice_copy(type, group + (size_t)b * sb, (int)(r % EK_REPACK_ROWS), (void *)(row + (size_t)b * bb), 0);
    }
}

void ek_unpack_row(int type, const void *packed, int64_t row, int64_t n_cols, void *dst_row) {
    const int64_t nb = n_cols / ek_type_block_elems(type);
    const size_t bb = (size_t)ek_type_block_bytes(type), sb = ek_repack_slice_bytes(type);
    const uint8_t *group = (const uint8_t *)packed + (size_t)(row / EK_REPACK_ROWS) * (size_t)nb * sb;
    for (int64_t b = 0; b < nb; b++)
        slice_copy(type, (void *)(group + (size_t)b * sb), (int)(row % EK_REPACK_ROWS), (uint8_t *)dst_row + (size_t)b * bb, 1);
}
