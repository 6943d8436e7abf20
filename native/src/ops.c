/* f32 transformer building blocks: RMSNorm, RoPE, softmax, gated activations,
 * KV-cache rows (f16 / q8_0) and single-head attention over them.
 *
 * Every op has a scalar reference (`*_scalar`). On x86 the AVX2 variants
 * (target attributes, no global -m flags) run when the active ISA is AVX2 or
 * AVX-512; they are tested against the scalar ones and numpy.
 */
#include "edgekern.h"
#include "kernels.h" /* block_q8_0 (a q8_0 KV row is Q8_0 blocks) and the fp16 converters */
#include "ops_internal.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EK_OPS_X86 1
#endif

static int use_avx2(void) {
#ifdef EK_OPS_X86
    const int isa = ek_isa_current();
    return isa == EK_ISA_AVX2 || isa == EK_ISA_AVX512;
#else
    return 0;
#endif
}

/* -------------------------------------------------------------- rmsnorm */

static void rmsnorm_scalar(const float *x, const float *w, float *y, int64_t n, float eps) {
    double sum = 0.0; /* double: the reference; float lanes differ by rounding only */
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    const float scale = (float)(1.0 / sqrt(sum / (double)n + eps));
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

#ifdef EK_OPS_X86
__attribute__((target("avx2,fma"))) static void rmsnorm_avx2(const float *x, const float *w, float *y,
                                                            int64_t n, float eps) {
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
#endif

void ek_rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps) {
#ifdef EK_OPS_X86
    if (use_avx2()) { rmsnorm_avx2(x, w, y, n, eps); return; }
#endif
    rmsnorm_scalar(x, w, y, n, eps);
}

/* ----------------------------------------------------------------- rope */

#define OPS_PI 3.14159265358979323846 /* M_PI is POSIX, not C11 */

/* The pair index whose wavelength 2 pi base^(2i/n_rot) fits `turns` times into n_ctx_orig
   positions: base^(2i/n_rot) = n_ctx_orig / (2 pi turns). */
static double yarn_pair_for_turns(int64_t n_rot, int32_t n_ctx_orig, float turns, float base) {
    return (double)n_rot * log((double)n_ctx_orig / (2.0 * OPS_PI * (double)turns)) / (2.0 * log((double)base));
}

ops_rope_scaling ops_rope_scaling_init(int64_t n_rot, float base, float freq_scale, float ext_factor, float mscale,
                                       int32_t n_ctx_orig, float beta_fast, float beta_slow) {
    ops_rope_scaling s = {freq_scale, ext_factor, 0.0f, 0.0f, mscale};
    if (ext_factor == 0.0f) return s;
    /* Whole pair indices, clamped to the rotated range as llama.cpp (ggml) clamps them. */
    const double lo = floor(yarn_pair_for_turns(n_rot, n_ctx_orig, beta_fast, base));
    const double hi = ceil(yarn_pair_for_turns(n_rot, n_ctx_orig, beta_slow, base));
    s.corr_lo = (float)(lo > 0.0 ? lo : 0.0);
    s.corr_hi = (float)(hi < (double)(n_rot - 1) ? hi : (double)(n_rot - 1));
    return s;
}

void ops_rope_angles(int64_t pos, int64_t n_rot, float base, const ops_rope_scaling *scaling,
                     const float *freq_factors, float *cosv, float *sinv) {
    /* double for the reference accuracy; once per position, shared by all heads and layers. */
    const double span = scaling->corr_hi - scaling->corr_lo > 0.001f ? scaling->corr_hi - scaling->corr_lo : 0.001;
    for (int64_t i = 0; i < n_rot / 2; i++) {
        double theta = (double)pos * pow((double)base, -2.0 * (double)i / (double)n_rot);
        if (freq_factors) theta /= freq_factors[i];
        double scale = scaling->freq_scale;
        if (scaling->ext_factor != 0.0f) {
            double t = ((double)i - scaling->corr_lo) / span;   /* 0 at corr_lo, 1 at corr_hi */
            t = t < 0.0 ? 0.0 : (t > 1.0 ? 1.0 : t);
            const double keep = (1.0 - t) * scaling->ext_factor; /* weight of the unscaled angle */
            scale = scale * (1.0 - keep) + keep;
        }
        theta *= scale;
        cosv[i] = (float)(cos(theta) * scaling->mscale);
        sinv[i] = (float)(sin(theta) * scaling->mscale);
    }
}

void ops_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float *cosv,
                    const float *sinv, int mode) {
    const int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + h * head_dim;
        if (mode == EK_ROPE_NEOX) {
            for (int64_t i = 0; i < half; i++) {
                const float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * cosv[i] - x1 * sinv[i];
                v[i + half] = x0 * sinv[i] + x1 * cosv[i];
            }
        } else {
            for (int64_t i = 0; i < half; i++) {
                const float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * cosv[i] - x1 * sinv[i];
                v[2 * i + 1] = x0 * sinv[i] + x1 * cosv[i];
            }
        }
    }
}

void ek_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int64_t pos, float base,
             float freq_scale, const float *freq_factors, int mode) {
    float cosv[512], sinv[512]; /* n_rot <= head_dim <= 1024, checked by the caller */
    const ops_rope_scaling linear = {freq_scale, 0.0f, 0.0f, 0.0f, 1.0f};
    ops_rope_angles(pos, n_rot, base, &linear, freq_factors, cosv, sinv);
    ops_rope_apply(x, n_heads, head_dim, n_rot, cosv, sinv, mode);
}

/* -------------------------------------------------------------- softmax */

void ek_softmax(float *x, int64_t n) {
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

/* ---------------------------------------------------------- activations */

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

#ifdef EK_OPS_X86
/* e^x for 8 lanes: x = k ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial
   (relative error ~2e-7, below f32 rounding of the products that use it). */
__attribute__((target("avx2,fma"))) static __m256 exp_avx2(__m256 x) {
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

__attribute__((target("avx2,fma"))) static void silu_mul_avx2(const float *gate, const float *up, float *out,
                                                             int64_t n) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
        __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        if (up) s = _mm256_mul_ps(s, _mm256_loadu_ps(up + i));
        _mm256_storeu_ps(out + i, s);
    }
    silu_mul_scalar(gate + i, up ? up + i : NULL, out + i, n - i);
}

__attribute__((target("avx2,fma"))) static void gelu_mul_avx2(const float *gate, const float *up, float *out,
                                                             int64_t n) {
    int64_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f), half = _mm256_set1_ps(0.5f);
    const __m256 c = _mm256_set1_ps(0.7978845608028654f), c3 = _mm256_set1_ps(0.044715f);
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 y = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(c3, g), _mm256_mul_ps(g, g), g));
        /* tanh(y) = 1 - 2 / (e^{2y} + 1), exact at both saturations. */
        const __m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(exp_avx2(_mm256_add_ps(y, y)), one)));
        __m256 s = _mm256_mul_ps(_mm256_mul_ps(half, g), _mm256_add_ps(one, t));
        if (up) s = _mm256_mul_ps(s, _mm256_loadu_ps(up + i));
        _mm256_storeu_ps(out + i, s);
    }
    gelu_mul_scalar(gate + i, up ? up + i : NULL, out + i, n - i);
}
#endif

void ek_silu_mul(const float *gate, const float *up, float *out, int64_t n) {
#ifdef EK_OPS_X86
    if (use_avx2()) { silu_mul_avx2(gate, up, out, n); return; }
#endif
    silu_mul_scalar(gate, up, out, n);
}

void ek_gelu_mul(const float *gate, const float *up, float *out, int64_t n) {
#ifdef EK_OPS_X86
    if (use_avx2()) { gelu_mul_avx2(gate, up, out, n); return; }
#endif
    gelu_mul_scalar(gate, up, out, n);
}

/* ------------------------------------------------------------ KV rows */

/* A Q8_0 KV row is GGUF's Q8_0 blocks and an F16 row plain halves, so storing and loading
   are formats.c's quantize and dequantize: one rounding rule for weights and cache. */
int64_t ek_kv_row_bytes(int kv_type, int64_t n) {
    if (kv_type == EK_TYPE_Q8_0) return n / QK32 * (int64_t)sizeof(block_q8_0);
    return n * 2;
}

/* Statuses are dropped: n is a multiple of the block size (the caller's contract). */
void ek_kv_store(int kv_type, const float *src, void *dst, int64_t n) {
    (void)ek_quantize(kv_type == EK_TYPE_Q8_0 ? EK_TYPE_Q8_0 : EK_TYPE_F16, src, dst, n);
}

void ek_kv_load(int kv_type, const void *src, float *dst, int64_t n) {
    (void)ek_dequantize(kv_type == EK_TYPE_Q8_0 ? EK_TYPE_Q8_0 : EK_TYPE_F16, src, dst, n);
}

/* ------------------------------------------------------------ attention */

/* dot(q, row) and out += a * row for one KV row of n values. */
static float kv_dot_scalar(int kv_type, const float *q, const void *row, int64_t n) {
    float sum = 0.0f;
    if (kv_type == EK_TYPE_Q8_0) {
        const block_q8_0 *b = row;
        for (int64_t blk = 0; blk < n / 32; blk++) {
            float s = 0.0f;
            for (int j = 0; j < 32; j++) s += q[blk * 32 + j] * b[blk].qs[j];
            sum += s * ek_fp16_to_fp32(b[blk].d);
        }
        return sum;
    }
    const uint16_t *h = row;
    for (int64_t i = 0; i < n; i++) sum += q[i] * ek_fp16_to_fp32(h[i]);
    return sum;
}

static void kv_axpy_scalar(int kv_type, float a, const void *row, float *out, int64_t n) {
    if (kv_type == EK_TYPE_Q8_0) {
        const block_q8_0 *b = row;
        for (int64_t blk = 0; blk < n / 32; blk++) {
            const float ad = a * ek_fp16_to_fp32(b[blk].d);
            for (int j = 0; j < 32; j++) out[blk * 32 + j] += ad * b[blk].qs[j];
        }
        return;
    }
    const uint16_t *h = row;
    for (int64_t i = 0; i < n; i++) out[i] += a * ek_fp16_to_fp32(h[i]);
}

static void attention_head_scalar(const float *q, const uint8_t *k, const uint8_t *v, int kv_type,
                                  size_t row_bytes, int64_t n_pos, int64_t head_dim, float scale,
                                  float *scores, float *out) {
    for (int64_t j = 0; j < n_pos; j++) scores[j] = scale * kv_dot_scalar(kv_type, q, k + j * row_bytes, head_dim);
    ek_softmax(scores, n_pos);
    memset(out, 0, (size_t)head_dim * sizeof(float));
    for (int64_t j = 0; j < n_pos; j++) kv_axpy_scalar(kv_type, scores[j], v + j * row_bytes, out, head_dim);
}

#ifdef EK_OPS_X86
__attribute__((target("avx2,fma,f16c"))) static inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma,f16c"))) static inline __m256 load_q8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* head_dim is a multiple of 32 on this path (checked by the caller of ek_attention_head). */
__attribute__((target("avx2,fma,f16c"))) static void attention_head_avx2(
    const float *q, const uint8_t *k, const uint8_t *v, int kv_type, size_t row_bytes, int64_t n_pos,
    int64_t head_dim, float scale, float *scores, float *out) {
    float maxv = -INFINITY;
    for (int64_t j = 0; j < n_pos; j++) {
        const uint8_t *row = k + j * row_bytes;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        if (kv_type == EK_TYPE_Q8_0) {
            const block_q8_0 *b = (const block_q8_0 *)row;
            for (int64_t blk = 0; blk < head_dim / 32; blk++) {
                const float *qq = q + blk * 32;
                __m256 s = _mm256_mul_ps(_mm256_loadu_ps(qq), load_q8x8(b[blk].qs));
                s = _mm256_fmadd_ps(_mm256_loadu_ps(qq + 8), load_q8x8(b[blk].qs + 8), s);
                s = _mm256_fmadd_ps(_mm256_loadu_ps(qq + 16), load_q8x8(b[blk].qs + 16), s);
                s = _mm256_fmadd_ps(_mm256_loadu_ps(qq + 24), load_q8x8(b[blk].qs + 24), s);
                acc0 = _mm256_fmadd_ps(s, _mm256_set1_ps(_cvtsh_ss(b[blk].d)), acc0);
            }
        } else {
            const uint16_t *h = (const uint16_t *)row;
            for (int64_t i = 0; i < head_dim; i += 16) {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i),
                                       _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8),
                                       _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i + 8))), acc1);
            }
        }
        const float s = scale * hsum_avx2(_mm256_add_ps(acc0, acc1));
        scores[j] = s;
        maxv = s > maxv ? s : maxv;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < n_pos; j++) {
        scores[j] = expf(scores[j] - maxv);
        sum += scores[j];
    }
    const float inv = (float)(1.0 / sum);
    /* out accumulates in registers for head_dim <= 256, else in memory. */
    for (int64_t i0 = 0; i0 < head_dim; i0 += 64) {
        const int64_t width = head_dim - i0 < 64 ? head_dim - i0 : 64; /* multiple of 32 */
        __m256 acc[8];
        for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
        for (int64_t j = 0; j < n_pos; j++) {
            const uint8_t *row = v + j * row_bytes;
            if (kv_type == EK_TYPE_Q8_0) {
                const block_q8_0 *b = (const block_q8_0 *)row + i0 / 32;
                for (int64_t r = 0; r < width / 8; r++) {
                    const block_q8_0 *bb = b + r / 4;
                    const __m256 a = _mm256_set1_ps(scores[j] * _cvtsh_ss(bb->d));
                    acc[r] = _mm256_fmadd_ps(a, load_q8x8(bb->qs + (r % 4) * 8), acc[r]);
                }
            } else {
                const uint16_t *h = (const uint16_t *)row + i0;
                const __m256 a = _mm256_set1_ps(scores[j]);
                for (int64_t r = 0; r < width / 8; r++)
                    acc[r] = _mm256_fmadd_ps(a, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + r * 8))), acc[r]);
            }
        }
        for (int64_t r = 0; r < width / 8; r++)
            _mm256_storeu_ps(out + i0 + r * 8, _mm256_mul_ps(acc[r], _mm256_set1_ps(inv)));
    }
}
#endif

void ek_attention_head(const float *q, const void *k, const void *v, int kv_type, size_t row_bytes, int64_t n_pos,
                       int64_t head_dim, float scale, float *scores, float *out) {
#ifdef EK_OPS_X86
    if (use_avx2() && head_dim % 32 == 0) {
        attention_head_avx2(q, k, v, kv_type, row_bytes, n_pos, head_dim, scale, scores, out);
        return;
    }
#endif
    attention_head_scalar(q, k, v, kv_type, row_bytes, n_pos, head_dim, scale, scores, out);
}
