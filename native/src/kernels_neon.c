/* ARMv8 NEON kernels, and the ARMv8.2 dot-product (SDOT) variants of the 8-bit ones.
 *
 * One aarch64 build serves a Raspberry Pi 4 (Cortex-A72: ASIMD only) and a Pi 5
 * (Cortex-A76: ASIMD + dotprod): this file is compiled for baseline ARMv8-A, and only the
 * 8-bit kernels of the second table are compiled for armv8.2-a+dotprod (a pragma around them;
 * the float kernels, the f32 building blocks and the activation quantizers are shared by both
 * tables).
 * dispatch.c calls ek_fill_kernels_neon_dotprod only when getauxval reports ASIMDDP, so an
 * SDOT instruction never reaches a CPU without it.
 *
 * The integer kernel bodies are written once in kernels_neon_int8.h, which is included twice:
 * with DOT_I8 / DOT_I8X2_SMALL as widening multiplies + a pairwise add (plain NEON) and as
 * vdotq_s32 (SDOT); after each inclusion this file defines the named kernels of that table
 * (gemm_q4_0_q8_neon, gemm_q4_0_q8_neon_dotprod, ...) as calls of the bodies with the weight
 * type fixed.
 * Layouts and the kernel contract are in kernels.h; the scalar kernels are the reference.
 * On other architectures this file compiles to nothing but the header.
 */
#include "kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#include <string.h>

/* GGUF data is little-endian and the loads below read it in place. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the NEON kernels need little-endian aarch64");

/* ------------------------------------------------------------- conversions */

static inline float fp16_to_f32(uint16_t h) {
    __fp16 v; /* FCVT: ARMv8 converts half to single in hardware */
    memcpy(&v, &h, sizeof v);
    return (float)v;
}

static inline float32x4_t fp16x4_to_f32(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

static inline float32x4_t bf16x4_to_f32(uint16x4_t v) { return vreinterpretq_f32_u32(vshll_n_u16(v, 16)); }

/* --------------------------------------------------- activation quantizers
 * Bit for bit what ek_quantize_q8_32_scalar / ek_quantize_q8_k_scalar produce:
 * the same float products x * (127 / amax), rounded half to even (FCVTNS = nearbyintf). */

static inline float32x4_t abs_max_f32x4(const float *x, int n) {
    float32x4_t m = vdupq_n_f32(0.0f);
    for (int j = 0; j < n; j += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + j)));
    return m;
}

/* qs[0..16) = round(x[0..16) * id); returns the 16 values as int8. */
static inline int8x16_t quantize_16(const float *x, float id) {
    const int32x4_t q0 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x), id));
    const int32x4_t q1 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4), id));
    const int32x4_t q2 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 8), id));
    const int32x4_t q3 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 12), id));
    const int16x8_t h0 = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1)); /* |q| <= 127: narrowing is exact */
    const int16x8_t h1 = vcombine_s16(vmovn_s32(q2), vmovn_s32(q3));
    return vcombine_s8(vmovn_s16(h0), vmovn_s16(h1));
}

static void quantize_q8_32_neon(const float *x, void *xq, int64_t n) {
    block_q8_32 *b = xq;
    for (int64_t i = 0; i < n / QK32; i++, x += QK32) {
        const float amax = vmaxvq_f32(abs_max_f32x4(x, QK32));
        const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        const int8x16_t q0 = quantize_16(x, id), q1 = quantize_16(x + 16, id);
        vst1q_s8(b[i].qs, q0);
        vst1q_s8(b[i].qs + 16, q1);
        const int32_t sum = vaddlvq_s16(vaddq_s16(vpaddlq_s8(q0), vpaddlq_s8(q1)));
        b[i].d = d;
        b[i].s = d * (float)sum;
    }
}

static void quantize_q8_k_neon(const float *x, void *xq, int64_t n) {
    block_q8_k *b = xq;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        const float amax = vmaxvq_f32(abs_max_f32x4(x, QK_K));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        for (int k = 0; k < 16; k++) {
            const int8x16_t q = quantize_16(x + 16 * k, id);
            vst1q_s8(b[i].qs + 16 * k, q);
            b[i].bsums[k] = vaddlvq_s8(q);
        }
        b[i].d = amax / 127.0f;
    }
}

/* ------------------------------------------------------- float weights
 * y[i, r] = dot(W[r], x[i]) with f32 activations. Each (i, r) is summed the same way whatever
 * the tile (two vector accumulators over 8-wide steps, one 4-wide step, a scalar tail), so the
 * result never depends on how rows or activation rows were split. */

/* Up to 4 activation rows share each load of the weight row. */
#define FLOAT_TILE 4

static inline __attribute__((always_inline)) void gemm_f32_tile(const float *w, const float *const *x, float *const *y,
                                                               int mt, int64_t n) {
    float32x4_t acc0[FLOAT_TILE], acc1[FLOAT_TILE];
    for (int i = 0; i < mt; i++) acc0[i] = acc1[i] = vdupq_n_f32(0.0f);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const float32x4_t w0 = vld1q_f32(w + j), w1 = vld1q_f32(w + j + 4);
        for (int i = 0; i < mt; i++) {
            acc0[i] = vfmaq_f32(acc0[i], w0, vld1q_f32(x[i] + j));
            acc1[i] = vfmaq_f32(acc1[i], w1, vld1q_f32(x[i] + j + 4));
        }
    }
    if (j + 4 <= n) {
        const float32x4_t w0 = vld1q_f32(w + j);
        for (int i = 0; i < mt; i++) acc0[i] = vfmaq_f32(acc0[i], w0, vld1q_f32(x[i] + j));
        j += 4;
    }
    for (int i = 0; i < mt; i++) {
        float s = vaddvq_f32(vaddq_f32(acc0[i], acc1[i]));
        for (int64_t k = j; k < n; k++) s += w[k] * x[i][k];
        *y[i] = s;
    }
}

/* The f16 and bf16 versions widen 8 weights at a time to f32 and then do what the f32 one does. */
static inline __attribute__((always_inline)) void gemm_half_tile(const uint16_t *w, int is_bf16, const float *const *x,
                                                                float *const *y, int mt, int64_t n) {
    float32x4_t acc0[FLOAT_TILE], acc1[FLOAT_TILE];
    for (int i = 0; i < mt; i++) acc0[i] = acc1[i] = vdupq_n_f32(0.0f);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const uint16x8_t h = vld1q_u16(w + j);
        float32x4_t w0, w1;
        if (is_bf16) {
            w0 = bf16x4_to_f32(vget_low_u16(h));
            w1 = bf16x4_to_f32(vget_high_u16(h));
        } else {
            w0 = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
            w1 = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
        }
        for (int i = 0; i < mt; i++) {
            acc0[i] = vfmaq_f32(acc0[i], w0, vld1q_f32(x[i] + j));
            acc1[i] = vfmaq_f32(acc1[i], w1, vld1q_f32(x[i] + j + 4));
        }
    }
    if (j + 4 <= n) {
        const float32x4_t w0 = is_bf16 ? bf16x4_to_f32(vld1_u16(w + j)) : fp16x4_to_f32(w + j);
        for (int i = 0; i < mt; i++) acc0[i] = vfmaq_f32(acc0[i], w0, vld1q_f32(x[i] + j));
        j += 4;
    }
    for (int i = 0; i < mt; i++) {
        float s = vaddvq_f32(vaddq_f32(acc0[i], acc1[i]));
        for (int64_t k = j; k < n; k++) s += (is_bf16 ? ek_bf16_to_fp32(w[k]) : fp16_to_f32(w[k])) * x[i][k];
        *y[i] = s;
    }
}

enum { WEIGHT_F32, WEIGHT_F16, WEIGHT_BF16 };

/* Rows [r0, r1) of a float weight against m activation rows: for each chunk of FLOAT_ROW_CHUNK
   weight rows, FLOAT_TILE activation rows at a time, so the tile's activations (4 x 2048 floats
   are 32 KiB) stay cached while the chunk's rows stream past them. */
#define FLOAT_ROW_CHUNK 16

static inline __attribute__((always_inline)) void gemm_float(int kind, const void *w, size_t w_row_bytes, const void *x,
                                                            size_t x_row_bytes, float *y, int64_t ldy, int64_t r0,
                                                            int64_t r1, int64_t m, int64_t n) {
    for (int64_t rc = r0; rc < r1; rc += FLOAT_ROW_CHUNK) {
        const int64_t rc_end = rc + FLOAT_ROW_CHUNK < r1 ? rc + FLOAT_ROW_CHUNK : r1;
        for (int64_t i0 = 0; i0 < m; i0 += FLOAT_TILE) {
            const int mt = m - i0 < FLOAT_TILE ? (int)(m - i0) : FLOAT_TILE;
            const float *xs[FLOAT_TILE];
            for (int i = 0; i < mt; i++) xs[i] = (const float *)((const char *)x + (i0 + i) * x_row_bytes);
            for (int64_t r = rc; r < rc_end; r++) {
                const void *wr = (const char *)w + r * w_row_bytes;
                float *ys[FLOAT_TILE];
                for (int i = 0; i < mt; i++) ys[i] = y + (i0 + i) * ldy + r;
                if (kind == WEIGHT_F32) gemm_f32_tile(wr, xs, ys, mt, n);
                else gemm_half_tile(wr, kind == WEIGHT_BF16, xs, ys, mt, n);
            }
        }
    }
}

static void gemm_f32_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y, int64_t ldy,
                          int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_float(WEIGHT_F32, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_f16_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y, int64_t ldy,
                          int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_float(WEIGHT_F16, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_bf16_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                           int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_float(WEIGHT_BF16, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

/* ------------------------------------------------- f32 building blocks
 * Shared by both tables (no 8-bit dots here). The tails of the elementwise ops go through
 * the same vector code on a zero-padded copy, so every element is computed alike. */

static void rmsnorm_neon(const float *x, const float *w, float *y, int64_t n, float eps) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t v0 = vld1q_f32(x + i), v1 = vld1q_f32(x + i + 4);
        acc0 = vfmaq_f32(acc0, v0, v0);
        acc1 = vfmaq_f32(acc1, v1, v1);
    }
    float lanes[8];
    vst1q_f32(lanes, acc0);
    vst1q_f32(lanes + 4, acc1);
    double sum = 0.0;
    for (int k = 0; k < 8; k++) sum += lanes[k];
    for (; i < n; i++) sum += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(sum / (double)n + eps));
    for (i = 0; i + 4 <= n; i += 4) {
        float32x4_t v = vmulq_n_f32(vld1q_f32(x + i), scale);
        if (w) v = vmulq_f32(v, vld1q_f32(w + i));
        vst1q_f32(y + i, v);
    }
    for (; i < n; i++) y[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

/* e^x for 4 lanes: the AVX2 kernels' range reduction and degree-6 polynomial (relative error
   ~2e-7). Inputs below -87.3 give e^-87.3, the smallest normal result, not 0. */
static inline float32x4_t exp_neon(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.3f));
    const float32x4_t k = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_f32(x, k, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, k, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.0f / 720.0f);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(k), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

/* The weights sum in double lanes, as the scalar reference sums them: over thousands of
   positions float lanes would lose the small ones. */
static void softmax_neon(float *x, int64_t n) {
    float32x4_t max4 = vdupq_n_f32(-INFINITY);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) max4 = vmaxq_f32(max4, vld1q_f32(x + i));
    float maxv = vmaxvq_f32(max4);
    for (; i < n; i++) maxv = x[i] > maxv ? x[i] : maxv;
    float64x2_t sum2 = vdupq_n_f64(0.0);
    for (i = 0; i + 4 <= n; i += 4) {
        const float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(x + i), vdupq_n_f32(maxv)));
        vst1q_f32(x + i, e);
        sum2 = vaddq_f64(sum2, vcvt_f64_f32(vget_low_f32(e)));
        sum2 = vaddq_f64(sum2, vcvt_high_f64_f32(e));
    }
    double sum = vaddvq_f64(sum2);
    if (i < n) {
        float pad[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        memcpy(pad, x + i, (size_t)(n - i) * sizeof(float));
        vst1q_f32(pad, exp_neon(vsubq_f32(vld1q_f32(pad), vdupq_n_f32(maxv))));
        for (int64_t t = 0; t < n - i; t++) sum += pad[t];
        memcpy(x + i, pad, (size_t)(n - i) * sizeof(float));
    }
    const float inv = (float)(1.0 / sum);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_n_f32(vld1q_f32(x + i), inv));
    for (; i < n; i++) x[i] *= inv;
}

enum { ACT_SILU, ACT_GELU };

static inline __attribute__((always_inline)) float32x4_t gate_act_neon(int act, float32x4_t g) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    if (act == ACT_SILU) return vdivq_f32(g, vaddq_f32(one, exp_neon(vnegq_f32(g))));
    const float32x4_t y = vmulq_n_f32(vfmaq_f32(g, vmulq_n_f32(g, 0.044715f), vmulq_f32(g, g)), 0.7978845608028654f);
    /* tanh(y) = 1 - 2 / (e^{2y} + 1), exact at both saturations. */
    const float32x4_t t = vsubq_f32(one, vdivq_f32(vdupq_n_f32(2.0f), vaddq_f32(exp_neon(vaddq_f32(y, y)), one)));
    return vmulq_f32(vmulq_n_f32(g, 0.5f), vaddq_f32(one, t));
}

static inline __attribute__((always_inline)) void
gated_act_neon(int act, const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t s = gate_act_neon(act, vld1q_f32(gate + i));
        if (up) s = vmulq_f32(s, vld1q_f32(up + i));
        vst1q_f32(out + i, s);
    }
    if (i < n) {
        const size_t tail = (size_t)(n - i) * sizeof(float);
        float g4[4] = {0.0f, 0.0f, 0.0f, 0.0f}, u4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        memcpy(g4, gate + i, tail);
        float32x4_t s = gate_act_neon(act, vld1q_f32(g4));
        if (up) {
            memcpy(u4, up + i, tail);
            s = vmulq_f32(s, vld1q_f32(u4));
        }
        vst1q_f32(g4, s);
        memcpy(out + i, g4, tail);
    }
}

static void silu_mul_neon(const float *gate, const float *up, float *out, int64_t n) {
    gated_act_neon(ACT_SILU, gate, up, out, n);
}

static void gelu_mul_neon(const float *gate, const float *up, float *out, int64_t n) {
    gated_act_neon(ACT_GELU, gate, up, out, n);
}

/* 16 int8 as 4 x 4 floats. */
static inline void q8x16_to_f32(const int8_t *p, float32x4_t out[4]) {
    const int8x16_t v = vld1q_s8(p);
    const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
    out[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
    out[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
    out[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
    out[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
}

/* n halves as floats, 8 at a time (FCVTL: exact, as the scalar conversion), the tail one by one. */
static void f16_to_f32_neon(const uint16_t *h, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        vst1q_f32(dst + i, fp16x4_to_f32(h + i));
        vst1q_f32(dst + i + 4, fp16x4_to_f32(h + i + 4));
    }
    for (; i < n; i++) dst[i] = fp16_to_f32(h[i]);
}

/* n values of an F16 or Q8_0 KV row as floats. */
static inline void kv_row_to_f32_neon(int kv_type, const void *row, float *dst, int64_t n) {
    if (kv_type == EK_TYPE_Q8_0) {
        const block_q8_0 *b = row;
        for (int64_t blk = 0; blk < n / QK32; blk++) {
            const float d = fp16_to_f32(b[blk].d);
            float32x4_t kv[8];
            q8x16_to_f32(b[blk].qs, kv);
            q8x16_to_f32(b[blk].qs + 16, kv + 4);
            for (int r = 0; r < 8; r++) vst1q_f32(dst + blk * QK32 + 4 * r, vmulq_n_f32(kv[r], d));
        }
        return;
    }
    f16_to_f32_neon(row, dst, n);
}

typedef float32x4_t vf;
#define VF_LANES 4
static inline vf vf_zero(void) { return vdupq_n_f32(0.0f); }
static inline vf vf_set1(float x) { return vdupq_n_f32(x); }
static inline vf vf_load(const float *p) { return vld1q_f32(p); }
static inline void vf_store(float *p, vf v) { vst1q_f32(p, v); }
static inline vf vf_add(vf a, vf b) { return vaddq_f32(a, b); }
static inline vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
static inline vf vf_max(vf a, vf b) { return vmaxq_f32(a, b); }
static inline vf vf_exp(vf x) { return exp_neon(x); }
#define kv_row_to_f32 kv_row_to_f32_neon
#include "attention_tile_body.h"
#undef kv_row_to_f32
#undef VF_LANES

static void attention_f16_neon(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi,
                               int64_t n_q, const void *k, const void *v, size_t row_bytes, int64_t head_dim,
                               float scale, float *scratch) {
    attention_tile(EK_TYPE_F16, q, out, lo, hi, n_q, k, v, row_bytes, head_dim, scale, scratch);
}

static void attention_q8_0_neon(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi,
                                int64_t n_q, const void *k, const void *v, size_t row_bytes, int64_t head_dim,
                                float scale, float *scratch) {
    attention_tile(EK_TYPE_Q8_0, q, out, lo, hi, n_q, k, v, row_bytes, head_dim, scale, scratch);
}

/* ---------------------------------------------------- bandwidth probe */

static uint64_t read_sum_neon(const uint8_t *const *streams, int n_streams, size_t n) {
    uint64x2_t a0 = vdupq_n_u64(0), a1 = a0, a2 = a0, a3 = a0;
    for (size_t off = 0; off < n; off += 64)
        for (int k = 0; k < n_streams; k++) {
            const uint64_t *q = (const uint64_t *)(streams[k] + off);
            a0 = vaddq_u64(a0, vld1q_u64(q));
            a1 = vaddq_u64(a1, vld1q_u64(q + 2));
            a2 = vaddq_u64(a2, vld1q_u64(q + 4));
            a3 = vaddq_u64(a3, vld1q_u64(q + 6));
        }
    return vaddvq_u64(vaddq_u64(vaddq_u64(a0, a1), vaddq_u64(a2, a3)));
}

/* ----------------------------------------------------- weight decoders
 * Each turns a block's packed integers into signed int8 lanes for the dot product. */

/* Q4_0: 16 bytes -> q - 8 for elements 0..15 (low nibbles) and 16..31 (high nibbles). */
static inline int8x16x2_t decode_q4_0(const uint8_t *qs) {
    const uint8x16_t v = vld1q_u8(qs);
    const int8x16_t eight = vdupq_n_s8(8);
    int8x16x2_t r;
    r.val[0] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))), eight);
    r.val[1] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), eight);
    return r;
}

/* Q4_1: the unsigned nibbles 0..15; the block minimum is added outside. */
static inline int8x16x2_t decode_q4_1(const uint8_t *qs) {
    const uint8x16_t v = vld1q_u8(qs);
    int8x16x2_t r;
    r.val[0] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
    r.val[1] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    return r;
}

/* Q5_0: q - 16, bit 4 of element j from bit j of the little-endian 32-bit qh.
   Each qh byte is spread over 8 lanes and tested against that lane's bit. */
static inline int8x16x2_t decode_q5_0(const uint8_t *qh, const uint8_t *qs) {
    static const uint8_t lane_bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bits = vld1q_u8(lane_bit), b4 = vdupq_n_u8(0x10);
    const uint8x16_t h0 = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1])); /* elements 0..15 */
    const uint8x16_t h1 = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3])); /* elements 16..31 */
    const uint8x16_t v = vld1q_u8(qs);
    const uint8x16_t lo = vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0f)), vandq_u8(vtstq_u8(h0, bits), b4));
    const uint8x16_t hi = vorrq_u8(vshrq_n_u8(v, 4), vandq_u8(vtstq_u8(h1, bits), b4));
    int8x16x2_t r;
    r.val[0] = vsubq_s8(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(b4));
    r.val[1] = vsubq_s8(vreinterpretq_s8_u8(hi), vreinterpretq_s8_u8(b4));
    return r;
}

static inline int8x16x2_t load_q8_0(const int8_t *qs) {
    int8x16x2_t r;
    r.val[0] = vld1q_s8(qs);
    r.val[1] = vld1q_s8(qs + 16);
    return r;
}

/* Q6_K, one half of 128 weights: the 8 groups of 16 values q - 32, in element order
   (group g covers elements 16g..16g+16 of the half and has scale scales[g]).
   Element l + 32s (l < 32) takes nibble (s >> 1) of ql[l + 32 (s & 1)] and bits 2s..2s+1 of qh[l]. */
static inline void decode_q6_k_half(const uint8_t *ql, const uint8_t *qh, int8x16_t q[8]) {
    const uint8x16_t m4 = vdupq_n_u8(0x0f), m2 = vdupq_n_u8(0x30);
    const int8x16_t thirty_two = vdupq_n_s8(32);
    for (int half16 = 0; half16 < 2; half16++) { /* l in [16 half16, 16 half16 + 16) */
        const uint8x16_t h = vld1q_u8(qh + 16 * half16);
        const uint8x16_t l0 = vld1q_u8(ql + 16 * half16), l1 = vld1q_u8(ql + 32 + 16 * half16);
        const uint8x16_t s0 = vorrq_u8(vandq_u8(l0, m4), vandq_u8(vshlq_n_u8(h, 4), m2));
        const uint8x16_t s1 = vorrq_u8(vandq_u8(l1, m4), vandq_u8(vshlq_n_u8(h, 2), m2));
        const uint8x16_t s2 = vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(h, m2));
        const uint8x16_t s3 = vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(h, 2), m2));
        q[0 + half16] = vsubq_s8(vreinterpretq_s8_u8(s0), thirty_two);
        q[2 + half16] = vsubq_s8(vreinterpretq_s8_u8(s1), thirty_two);
        q[4 + half16] = vsubq_s8(vreinterpretq_s8_u8(s2), thirty_two);
        q[6 + half16] = vsubq_s8(vreinterpretq_s8_u8(s3), thirty_two);
    }
}

/* Q4_K's 8 six-bit scales and 8 six-bit mins (layout in kernels.h), four at a time in 32-bit
   words: bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; bytes 8-11 hold the
   low 4 bits of scales 4-7 (low nibbles) and mins 4-7 (high nibbles), whose top 2 bits are the
   top 2 bits of bytes 0-3 (scales) and 4-7 (mins). */
static inline void unpack_q4_k_scales(const uint8_t *packed, uint8_t sc[8], uint8_t mn[8]) {
    uint32_t w[3], out[4];
    memcpy(w, packed, sizeof w);
    out[0] = w[0] & 0x3f3f3f3fu;                                                  /* scales 0-3 */
    out[1] = (w[2] & 0x0f0f0f0fu) | (((w[0] >> 6) & 0x03030303u) << 4);           /* scales 4-7 */
    out[2] = w[1] & 0x3f3f3f3fu;                                                  /* mins 0-3 */
    out[3] = ((w[2] >> 4) & 0x0f0f0f0fu) | (((w[1] >> 6) & 0x03030303u) << 4);    /* mins 4-7 */
    memcpy(sc, out, 8);
    memcpy(mn, out + 2, 8);
}

/* Sums of 4 int32x4 vectors as one vector: lane k = horizontal sum of a[k]. */
static inline int32x4_t hsum4_s32(int32x4_t a0, int32x4_t a1, int32x4_t a2, int32x4_t a3) {
    return vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3));
}

/* ------------------------------------------ the 8-bit kernels, twice */

/* Plain ARMv8 stand-ins for SDOT, built from widening multiplies (SMULL/SMLAL into int16 lanes)
 * and one pairwise add into int32 (SADALP). They put partial sums in different int32 lanes
 * than SDOT would; every caller only uses the sum of the 4 lanes. Activations come from our
 * quantizers, so |b| <= 127. */

/* acc += a . b over 16 lanes, any int8 weights: each int16 lane takes 2 products,
   |2 * 128 * 127| = 32512 fits. */
static inline int32x4_t dot_i8_widening(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    p = vmlal_high_s8(p, a, b);
    return vpadalq_s16(acc, p);
}

/* acc += a0 . b0 + a1 . b1 over 32 lanes, for weights of at most 5 bits (|a| <= 16): each int16
   lane takes 4 products, |4 * 16 * 127| = 8128 fits. */
static inline int32x4_t dot_i8x2_small_widening(int32x4_t acc, int8x16_t a0, int8x16_t b0, int8x16_t a1, int8x16_t b1) {
    int16x8_t p = vmull_s8(vget_low_s8(a0), vget_low_s8(b0));
    p = vmlal_high_s8(p, a0, b0);
    p = vmlal_s8(p, vget_low_s8(a1), vget_low_s8(b1));
    p = vmlal_high_s8(p, a1, b1);
    return vpadalq_s16(acc, p);
}

#define DOT_I8(acc, a, b) dot_i8_widening(acc, a, b)
#define DOT_I8X2_SMALL(acc, a0, b0, a1, b1) dot_i8x2_small_widening(acc, a0, b0, a1, b1)
#define NEON_HAS_SDOT 0
#define NEON_KERNEL(name) name##_neon
#include "kernels_neon_int8.h"

static void gemm_q4_0_q8_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                              int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_block32_neon(BLOCK32_Q4_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_1_q8_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                              int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_block32_neon(BLOCK32_Q4_1, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q5_0_q8_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                              int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_block32_neon(BLOCK32_Q5_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q8_0_q8_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                              int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_block32_neon(BLOCK32_Q8_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_k_q8k_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                               int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_super_neon(SUPER_Q4_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q6_k_q8k_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                               int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_super_neon(SUPER_Q6_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_0x8_q8_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x8_neon(BLOCK32_Q4_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_1x8_q8_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x8_neon(BLOCK32_Q4_1, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q8_0x8_q8_neon(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x8_neon(BLOCK32_Q8_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

#undef DOT_I8
#undef DOT_I8X2_SMALL
#undef NEON_HAS_SDOT
#undef NEON_KERNEL

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#define DOT_I8(acc, a, b) vdotq_s32(acc, a, b)
#define DOT_I8X2_SMALL(acc, a0, b0, a1, b1) vdotq_s32(vdotq_s32(acc, a0, b0), a1, b1)
#define NEON_HAS_SDOT 1
#define NEON_KERNEL(name) name##_neon_dotprod
#include "kernels_neon_int8.h"

/* Inside the dotprod pragma: these inline the SDOT bodies. */
static void gemm_q4_0_q8_neon_dotprod(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                      int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_block32_neon_dotprod(BLOCK32_Q4_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_1_q8_neon_dotprod(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                      int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_block32_neon_dotprod(BLOCK32_Q4_1, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q5_0_q8_neon_dotprod(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                      int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_block32_neon_dotprod(BLOCK32_Q5_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q8_0_q8_neon_dotprod(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                      int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_block32_neon_dotprod(BLOCK32_Q8_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_k_q8k_neon_dotprod(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                       int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_super_neon_dotprod(SUPER_Q4_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q6_k_q8k_neon_dotprod(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                       int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_super_neon_dotprod(SUPER_Q6_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_0x8_q8_neon_dotprod(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                        int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x8_neon_dotprod(BLOCK32_Q4_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_1x8_q8_neon_dotprod(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                        int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x8_neon_dotprod(BLOCK32_Q4_1, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q8_0x8_q8_neon_dotprod(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                        int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x8_neon_dotprod(BLOCK32_Q8_0, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

#undef DOT_I8
#undef DOT_I8X2_SMALL
#undef NEON_HAS_SDOT
#undef NEON_KERNEL
#pragma GCC pop_options

/* ------------------------------------------------------------- tables */

static void fill_common(ek_kernels *k) {
    ek_fill_kernels_scalar(k);
    k->quantize_q8_32 = quantize_q8_32_neon;
    k->quantize_q8_k = quantize_q8_k_neon;
    k->gemm[EK_TYPE_F32] = gemm_f32_neon;
    k->gemm[EK_TYPE_F16] = gemm_f16_neon;
    k->gemm[EK_TYPE_BF16] = gemm_bf16_neon;
    k->read_sum = read_sum_neon;
    k->rmsnorm = rmsnorm_neon;
    k->silu_mul = silu_mul_neon;
    k->gelu_mul = gelu_mul_neon;
    k->softmax = softmax_neon;
    k->attention_f16 = attention_f16_neon;
    k->attention_q8_0 = attention_q8_0_neon;
    k->f16_to_f32 = f16_to_f32_neon;
}

void ek_fill_kernels_neon(ek_kernels *k) {
    fill_common(k);
    k->isa = EK_ISA_NEON;
    k->gemm[EK_TYPE_Q4_0] = gemm_q4_0_q8_neon;
    k->gemm[EK_TYPE_Q4_1] = gemm_q4_1_q8_neon;
    k->gemm[EK_TYPE_Q5_0] = gemm_q5_0_q8_neon;
    k->gemm[EK_TYPE_Q8_0] = gemm_q8_0_q8_neon;
    k->gemm[EK_TYPE_Q4_K] = gemm_q4_k_q8k_neon;
    k->gemm[EK_TYPE_Q6_K] = gemm_q6_k_q8k_neon;
    k->gemm_repacked[EK_TYPE_Q4_0] = gemm_q4_0x8_q8_neon;
    k->gemm_repacked[EK_TYPE_Q4_1] = gemm_q4_1x8_q8_neon;
    k->gemm_repacked[EK_TYPE_Q8_0] = gemm_q8_0x8_q8_neon;
}

void ek_fill_kernels_neon_dotprod(ek_kernels *k) {
    fill_common(k);
    k->isa = EK_ISA_NEON_DOTPROD;
    k->gemm[EK_TYPE_Q4_0] = gemm_q4_0_q8_neon_dotprod;
    k->gemm[EK_TYPE_Q4_1] = gemm_q4_1_q8_neon_dotprod;
    k->gemm[EK_TYPE_Q5_0] = gemm_q5_0_q8_neon_dotprod;
    k->gemm[EK_TYPE_Q8_0] = gemm_q8_0_q8_neon_dotprod;
    k->gemm[EK_TYPE_Q4_K] = gemm_q4_k_q8k_neon_dotprod;
    k->gemm[EK_TYPE_Q6_K] = gemm_q6_k_q8k_neon_dotprod;
    k->gemm_repacked[EK_TYPE_Q4_0] = gemm_q4_0x8_q8_neon_dotprod;
    k->gemm_repacked[EK_TYPE_Q4_1] = gemm_q4_1x8_q8_neon_dotprod;
    k->gemm_repacked[EK_TYPE_Q8_0] = gemm_q8_0x8_q8_neon_dotprod;
}

#endif /* __aarch64__ */
