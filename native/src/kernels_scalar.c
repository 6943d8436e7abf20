/* Portable C reference kernels: one dot product per weight type and the GEMM
 * built from it, and the f32 building blocks (RMSNorm, softmax, gated
 * activations, attention over f16 and q8_0 KV rows). Every SIMD kernel is
 * tested against these.
 * Dots take n_cols values of one weight row and one activation row in the
 * weight type's activation format (see kernels.h).
 */
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float (*row_dot_fn)(const void *w, const void *x, int64_t n);

static float dot_f32_f32(const void *w, const void *x, int64_t n) {
    const float *a = w, *b = x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static float dot_f16_f32(const void *w, const void *x, int64_t n) {
    const uint16_t *a = w;
    const float *b = x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += ek_fp16_to_fp32(a[i]) * b[i];
    return sum;
}

static float dot_bf16_f32(const void *w, const void *x, int64_t n) {
    const uint16_t *a = w;
    const float *b = x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += ek_bf16_to_fp32(a[i]) * b[i];
    return sum;
}

/* Integer dot of 16 packed nibble bytes (low: elements 0..15, high: 16..31) with 32 int8. */
static inline int32_t nibble_dot(const uint8_t *qs, const int8_t *x) {
    int32_t s = 0;
    for (int j = 0; j < 16; j++) s += (qs[j] & 0xF) * x[j] + (qs[j] >> 4) * x[j + 16];
    return s;
}

static float dot_q4_0_q8(const void *w, const void *x, int64_t n) {
    const block_q4_0 *a = w;
    const block_q8_32 *b = x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK32; i++)
        sum += ek_fp16_to_fp32(a[i].d) * (b[i].d * (float)nibble_dot(a[i].qs, b[i].qs) - 8.0f * b[i].s);
    return sum;
}

static float dot_q4_1_q8(const void *w, const void *x, int64_t n) {
    const block_q4_1 *a = w;
    const block_q8_32 *b = x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK32; i++)
        sum += ek_fp16_to_fp32(a[i].d) * b[i].d * (float)nibble_dot(a[i].qs, b[i].qs) +
               ek_fp16_to_fp32(a[i].m) * b[i].s;
    return sum;
}

static float dot_q5_0_q8(const void *w, const void *x, int64_t n) {
    const block_q5_0 *a = w;
    const block_q8_32 *b = x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK32; i++) {
        uint32_t qh;
        memcpy(&qh, a[i].qh, 4);
        int32_t s = 0;
        for (int j = 0; j < 16; j++) {
            const int lo = (a[i].qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4);
            const int hi = (a[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            s += lo * b[i].qs[j] + hi * b[i].qs[j + 16];
        }
        sum += ek_fp16_to_fp32(a[i].d) * (b[i].d * (float)s - 16.0f * b[i].s);
    }
    return sum;
}

static float dot_q8_0_q8(const void *w, const void *x, int64_t n) {
    const block_q8_0 *a = w;
    const block_q8_32 *b = x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK32; i++) {
        int32_t s = 0;
        for (int j = 0; j < QK32; j++) s += a[i].qs[j] * b[i].qs[j];
        sum += ek_fp16_to_fp32(a[i].d) * b[i].d * (float)s;
    }
    return sum;
}

static float dot_q4_k_q8k(const void *w, const void *x, int64_t n) {
    const block_q4_k *a = w;
    const block_q8_k *b = x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32_t sumi = 0, summ = 0;
        const uint8_t *q = a[i].qs;
        const int8_t *xq = b[i].qs;
        for (int c = 0; c < 4; c++, q += 32, xq += 64) {
            uint8_t sc0, m0, sc1, m1;
            ek_q4_k_scale_min(2 * c, a[i].scales, &sc0, &m0);
            ek_q4_k_scale_min(2 * c + 1, a[i].scales, &sc1, &m1);
            int32_t s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (q[l] & 0xF) * xq[l];
                s1 += (q[l] >> 4) * xq[l + 32];
            }
            sumi += sc0 * s0 + sc1 * s1;
            summ += m0 * (b[i].bsums[4 * c] + b[i].bsums[4 * c + 1]) +
                    m1 * (b[i].bsums[4 * c + 2] + b[i].bsums[4 * c + 3]);
        }
        sum += b[i].d * (ek_fp16_to_fp32(a[i].d) * (float)sumi - ek_fp16_to_fp32(a[i].dmin) * (float)summ);
    }
    return sum;
}

static float dot_q6_k_q8k(const void *w, const void *x, int64_t n) {
    const block_q6_k *a = w;
    const block_q8_k *b = x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32_t sub[16] = {0}; /* sum of q * x per sub-block of 16 */
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = a[i].ql + 64 * h, *qh = a[i].qh + 32 * h;
            const int8_t *xq = b[i].qs + 128 * h;
            for (int l = 0; l < 32; l++) {
                const int k = 8 * h + l / 16;
                sub[k] += ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) * xq[l];
                sub[k + 2] += ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) * xq[l + 32];
                sub[k + 4] += ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) * xq[l + 64];
                sub[k + 6] += ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) * xq[l + 96];
            }
        }
        int32_t sumi = 0;
        for (int k = 0; k < 16; k++) sumi += a[i].scales[k] * (sub[k] - 32 * b[i].bsums[k]);
        sum += b[i].d * ek_fp16_to_fp32(a[i].d) * (float)sumi;
    }
    return sum;
}

static void gemm_by_rows(row_dot_fn dot, const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes,
                         float *y, int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = (const uint8_t *)w + (size_t)r * w_row_bytes;
        for (int64_t i = 0; i < m; i++)
            y[i * ldy + r] = dot(wr, (const uint8_t *)x + (size_t)i * x_row_bytes, n_cols);
    }
}

static void gemm_f32_scalar(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                            int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_by_rows(dot_f32_f32, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_f16_scalar(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                            int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_by_rows(dot_f16_f32, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_bf16_scalar(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                             int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_by_rows(dot_bf16_f32, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_0_q8_scalar(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_by_rows(dot_q4_0_q8, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_1_q8_scalar(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_by_rows(dot_q4_1_q8, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q5_0_q8_scalar(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_by_rows(dot_q5_0_q8, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q8_0_q8_scalar(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_by_rows(dot_q8_0_q8, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_k_q8k_scalar(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                 int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_by_rows(dot_q4_k_q8k, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q6_k_q8k_scalar(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                 int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_by_rows(dot_q6_k_q8k, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static uint64_t read_sum_scalar(const uint8_t *const *streams, int n_streams, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t off = 0; off < n; off += 64)
        for (int k = 0; k < n_streams; k++) {
            const uint64_t *u = (const uint64_t *)(streams[k] + off);
            s0 += u[0] + u[4];
            s1 += u[1] + u[5];
            s2 += u[2] + u[6];
            s3 += u[3] + u[7];
        }
    return s0 + s1 + s2 + s3;
}

/* ------------------------------------------------- f32 building blocks */

static void rmsnorm_scalar(const float *x, const float *w, float *y, int64_t n, float eps) {
    double sum = 0.0; /* double: the reference; float lanes differ by rounding only */
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(sum / (double)n + eps));
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

static void softmax_scalar(float *x, int64_t n) {
    float maxv = -INFINITY;
    for (int64_t i = 0; i < n; i++) maxv = x[i] > maxv ? x[i] : maxv;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - maxv);
        sum += x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

static float silu1(float g) { return g / (1.0f + expf(-g)); }

static float gelu1(float g) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g)));
}

static void silu_mul_scalar(const float *gate, const float *up, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = silu1(gate[i]) * (up ? up[i] : 1.0f);
}

static void gelu_mul_scalar(const float *gate, const float *up, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = gelu1(gate[i]) * (up ? up[i] : 1.0f);
}

/* dot(q, row) and out += a * row for one KV row of n values. */
static float kv_dot_f16(const float *q, const void *row, int64_t n) {
    const uint16_t *h = row;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += q[i] * ek_fp16_to_fp32(h[i]);
    return sum;
}

static float kv_dot_q8_0(const float *q, const void *row, int64_t n) {
    const block_q8_0 *b = row;
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK32; blk++) {
        float s = 0.0f;
        for (int j = 0; j < QK32; j++) s += q[blk * QK32 + j] * b[blk].qs[j];
        sum += s * ek_fp16_to_fp32(b[blk].d);
    }
    return sum;
}

static void kv_axpy_f16(float a, const void *row, float *out, int64_t n) {
    const uint16_t *h = row;
    for (int64_t i = 0; i < n; i++) out[i] += a * ek_fp16_to_fp32(h[i]);
}

static void kv_axpy_q8_0(float a, const void *row, float *out, int64_t n) {
    const block_q8_0 *b = row;
    for (int64_t blk = 0; blk < n / QK32; blk++) {
        const float ad = a * ek_fp16_to_fp32(b[blk].d);
        for (int j = 0; j < QK32; j++) out[blk * QK32 + j] += ad * b[blk].qs[j];
    }
}

/* The reference for the tiled kernels: each query walks its keys one at a time with the
   online softmax (running max m, running sum l in double, output rescaled when m rises). */
static void attention_scalar(int kv_type, const float *const *q, float *const *out, const int64_t *lo,
                             const int64_t *hi, int64_t n_q, const void *k, const void *v, size_t row_bytes,
                             int64_t head_dim, float scale) {
    for (int64_t i = 0; i < n_q; i++) {
        float m = -INFINITY, *o = out[i];
        double l = 0.0;
        memset(o, 0, (size_t)head_dim * sizeof(float));
        for (int64_t j = lo[i]; j < hi[i]; j++) {
            const uint8_t *kr = (const uint8_t *)k + (size_t)j * row_bytes, *vr = (const uint8_t *)v + (size_t)j * row_bytes;
            const float s = scale * (kv_type == EK_TYPE_Q8_0 ? kv_dot_q8_0(q[i], kr, head_dim) : kv_dot_f16(q[i], kr, head_dim));
            if (s > m) {
                const float alpha = expf(m - s);
                for (int64_t c = 0; c < head_dim; c++) o[c] *= alpha;
                l *= alpha;
                m = s;
            }
            const float p = expf(s - m);
            l += p;
            (kv_type == EK_TYPE_Q8_0 ? kv_axpy_q8_0 : kv_axpy_f16)(p, vr, o, head_dim);
        }
        const float inv = (float)(1.0 / l);
        for (int64_t c = 0; c < head_dim; c++) o[c] *= inv;
    }
}

static void attention_f16_scalar(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi,
                                 int64_t n_q, const void *k, const void *v, size_t row_bytes, int64_t head_dim,
                                 float scale, float *scratch) {
    (void)scratch;
    attention_scalar(EK_TYPE_F16, q, out, lo, hi, n_q, k, v, row_bytes, head_dim, scale);
}

static void attention_q8_0_scalar(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi,
                                  int64_t n_q, const void *k, const void *v, size_t row_bytes, int64_t head_dim,
                                  float scale, float *scratch) {
    (void)scratch;
    attention_scalar(EK_TYPE_Q8_0, q, out, lo, hi, n_q, k, v, row_bytes, head_dim, scale);
}

static void f16_to_f32_scalar(const uint16_t *h, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = ek_fp16_to_fp32(h[i]);
}

void ek_fill_kernels_scalar(ek_kernels *k) {
    memset(k, 0, sizeof *k);
    k->isa = EK_ISA_SCALAR;
    k->quantize_q8_32 = ek_quantize_q8_32_scalar;
    k->quantize_q8_k = ek_quantize_q8_k_scalar;
    k->gemm[EK_TYPE_F32] = gemm_f32_scalar;
    k->gemm[EK_TYPE_F16] = gemm_f16_scalar;
    k->gemm[EK_TYPE_BF16] = gemm_bf16_scalar;
    k->gemm[EK_TYPE_Q4_0] = gemm_q4_0_q8_scalar;
    k->gemm[EK_TYPE_Q4_1] = gemm_q4_1_q8_scalar;
    k->gemm[EK_TYPE_Q5_0] = gemm_q5_0_q8_scalar;
    k->gemm[EK_TYPE_Q8_0] = gemm_q8_0_q8_scalar;
    k->gemm[EK_TYPE_Q4_K] = gemm_q4_k_q8k_scalar;
    k->gemm[EK_TYPE_Q6_K] = gemm_q6_k_q8k_scalar;
    k->read_sum = read_sum_scalar;
    k->rmsnorm = rmsnorm_scalar;
    k->silu_mul = silu_mul_scalar;
    k->gelu_mul = gelu_mul_scalar;
    k->softmax = softmax_scalar;
    k->attention_f16 = attention_f16_scalar;
    k->attention_q8_0 = attention_q8_0_scalar;
    k->f16_to_f32 = f16_to_f32_scalar;
}
