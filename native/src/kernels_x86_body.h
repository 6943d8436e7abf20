/* The x86 kernel bodies, written once for 256-bit integer dot products and
 * compiled twice: by kernels_avx2.c (maddubs + madd) and by kernels_avx512.c
 * (AVX-512 VNNI's vpdpbusd on 256-bit registers). Not a standalone header.
 *
 * Everything here is static and inlined into the including file's kernels:
 * the bodies (x86_gemm_block32, x86_gemm_kquant, x86_gemm_float,
 * x86_gemm_block32_x8, the quantizers, x86_read_sum) take the weight family as
 * a constant argument, and the ISA file defines each named kernel
 * (gemm_q4_0_q8_avx2, ...) as a call of one with the family fixed, which GCC
 * specialises as it would a hand-written copy. The repacked K-quant tiles
 * (q4_kx8_tile, q6_kx8_tile) are driven by the ISA file's kernels themselves.
 *
 * The including file defines, before including:
 *   dot_u8s8(acc, u, s)     acc + (32-bit lane j: sum over bytes 4j..4j+3 of u8 * s8)
 *   dot_pairs(p, u, s)      p + u8 * s8 products summed in the ISA's narrowest exact lanes
 *                           (int16 pairs after maddubs, or int32 after vpdpbusd)
 *   widen_pairs(acc, p)     acc + p's lanes as the 32-bit lane sums dot_u8s8 gives
 *   widen_pairs_scaled(acc, p, lsc)  the same with lane j times sc_j, lsc from lane_scales
 *                           (a sub-block's products, summed by dot_pairs, times its scale)
 *   dot_pairs_per_widen(u_limit)  how many dot_pairs of bytes u < u_limit (|s| <= 127) p takes exactly
 *   dot_u8s8_scaled(acc, u, s, sc)  the same with lanes 0..3 times sc's first and
 *                           lanes 4..7 times its second scale, sc from make_scales
 *   make_scales(a, b)       the scale vector for dot_u8s8_scaled
 *   lane_scales(sc32)       per-lane scales (int32 lanes, |sc| < 128) prepared for widen_pairs_scaled
 * and targets AVX2 + FMA + F16C or better. No product of a weight byte
 * (<= 128 in magnitude) and an activation byte (|x| <= 127) overflows either.
 *
 * Every (activation row, weight row) result is accumulated in one fixed order
 * whatever the tile it falls in, so the thread split never changes a bit.
 */
#include <immintrin.h>
#include <string.h>

#define ACT_TILE 4 /* activation rows sharing each decoded weight block */

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

/* 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high (16..31). */
static inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(0x0F));
}

/* Q5_0's 32 high bits -> byte j = 0x10 where bit j is set. */
static inline __m256i q5_high_bits(const uint8_t *qh4) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int32_t)qh),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((int64_t)0x8040201008040201ull);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

/* ------------------------------------------------ activation quantizers */

/* Same arithmetic as ek_quantize_q8_32_scalar (x * (127 / amax), round half
   even), so every path sees the same activation bytes. */
static inline float quantize32(const float *x, int8_t *q, int32_t *sum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], amax8 = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        amax8 = _mm256_max_ps(amax8, _mm256_andnot_ps(sign, v[k]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    __m256i i[4];
    for (int k = 0; k < 4; k++) i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], id));
    /* Pack 32 int32 to 32 int8 in order (packs interleave 128-bit lanes; undo it). */
    const __m256i p16a = _mm256_packs_epi32(i[0], i[1]), p16b = _mm256_packs_epi32(i[2], i[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p8);
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    *sum = _mm_cvtsi128_si32(s4);
    return amax;
}

static inline __attribute__((always_inline)) void x86_quantize_q8_32(const float *x, void *xq, int64_t n) {
    block_q8_32 *b = xq;
    for (int64_t i = 0; i < n / QK32; i++) {
        int32_t sum;
        const float amax = quantize32(x + i * QK32, b[i].qs, &sum);
        b[i].d = amax / 127.0f;
        b[i].s = b[i].d * (float)sum;
    }
}

static inline __attribute__((always_inline)) void x86_quantize_q8_k(const float *x, void *xq, int64_t n) {
    block_q8_k *b = xq;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 amax8 = _mm256_setzero_ps();
        for (int k = 0; k < QK_K; k += 8) amax8 = _mm256_max_ps(amax8, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
        for (int c = 0; c < QK_K; c += 32) {
            __m256i q[4];
            for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c + 8 * k), id));
            __m256i p8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(b[i].qs + c), p8);
            /* bsums of elements c..c+15 and c+16..c+31 */
            const __m256i s01 = _mm256_add_epi32(q[0], q[1]), s23 = _mm256_add_epi32(q[2], q[3]);
            const __m256i h = _mm256_hadd_epi32(s01, s23); /* [s01 pairs | s23 pairs] per 128-bit lane */
            const __m256i h2 = _mm256_hadd_epi32(h, h);
            const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(h2), _mm256_extracti128_si256(h2, 1));
            b[i].bsums[c / 16] = (int16_t)_mm_cvtsi128_si32(t);
            b[i].bsums[c / 16 + 1] = (int16_t)_mm_extract_epi32(t, 1);
        }
        b[i].d = amax / 127.0f;
    }
}

/* --------------------------------------- plain layout, q8_32 activations */

enum { FAM_Q4_0, FAM_Q4_1, FAM_Q5_0, FAM_Q8_0 };

/* One weight block decoded for the dot: bytes u (unsigned, or |w| for Q8_0 with
   the sign kept in w_sign), the integer-dot scale dw, and the coefficient of the
   activation block's s (Q4_0: -8 dw, Q4_1: m, Q5_0: -16 dw, Q8_0: 0). */
typedef struct { __m256i u, w_sign; float dw, coef_s; } decoded32;

static inline __attribute__((always_inline)) decoded32
decode32(int fam, const uint8_t *block) {
    decoded32 r;
    r.w_sign = _mm256_setzero_si256();
    switch (fam) {
    case FAM_Q4_0: {
        const block_q4_0 *b = (const block_q4_0 *)block;
        r.u = unpack_nibbles(b->qs);
        r.dw = f16(b->d);
        r.coef_s = -8.0f * r.dw;
        break;
    }
    case FAM_Q4_1: {
        const block_q4_1 *b = (const block_q4_1 *)block;
        r.u = unpack_nibbles(b->qs);
        r.dw = f16(b->d);
        r.coef_s = f16(b->m);
        break;
    }
    case FAM_Q5_0: {
        const block_q5_0 *b = (const block_q5_0 *)block;
        r.u = _mm256_or_si256(unpack_nibbles(b->qs), q5_high_bits(b->qh));
        r.dw = f16(b->d);
        r.coef_s = -16.0f * r.dw;
        break;
    }
    default: {
        const block_q8_0 *b = (const block_q8_0 *)block;
        r.w_sign = _mm256_loadu_si256((const __m256i *)b->qs);
        r.u = _mm256_abs_epi8(r.w_sign);
        r.dw = f16(b->d);
        r.coef_s = 0.0f;
        break;
    }
    }
    return r;
}

static inline __attribute__((always_inline)) void
accumulate32(int fam, const decoded32 *w, const block_q8_32 *x, __m256 *acc, float *corr) {
    __m256i xs = _mm256_loadu_si256((const __m256i *)x->qs);
    if (fam == FAM_Q8_0) xs = _mm256_sign_epi8(xs, w->w_sign);
    const __m256i isum = dot_u8s8(_mm256_setzero_si256(), w->u, xs);
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(w->dw * x->d), *acc);
    if (fam != FAM_Q8_0) *corr += w->coef_s * x->s;
}

/* The GEMM of a plain Q4_0/Q4_1/Q5_0/Q8_0 weight (fam, with its block_bytes). */
static inline __attribute__((always_inline)) void
x86_gemm_block32(int fam, size_t block_bytes, const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes,
                 float *y, int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK32;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = (const uint8_t *)w + (size_t)r * w_row_bytes;
        int64_t i = 0;
        for (; i + ACT_TILE <= m; i += ACT_TILE) {
            const block_q8_32 *xb[ACT_TILE];
            __m256 acc[ACT_TILE];
            float corr[ACT_TILE];
            for (int t = 0; t < ACT_TILE; t++) {
                xb[t] = (const block_q8_32 *)((const uint8_t *)x + (size_t)(i + t) * x_row_bytes);
                acc[t] = _mm256_setzero_ps();
                corr[t] = 0.0f;
            }
            for (int64_t b = 0; b < nb; b++) {
                const decoded32 wd = decode32(fam, wr + (size_t)b * block_bytes);
                for (int t = 0; t < ACT_TILE; t++) accumulate32(fam, &wd, &xb[t][b], &acc[t], &corr[t]);
            }
            for (int t = 0; t < ACT_TILE; t++) y[(i + t) * ldy + r] = hsum(acc[t]) + corr[t];
        }
        for (; i < m; i++) {
            const block_q8_32 *xb = (const block_q8_32 *)((const uint8_t *)x + (size_t)i * x_row_bytes);
            __m256 acc = _mm256_setzero_ps();
            float corr = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const decoded32 wd = decode32(fam, wr + (size_t)b * block_bytes);
                accumulate32(fam, &wd, &xb[b], &acc, &corr);
            }
            y[i * ldy + r] = hsum(acc) + corr;
        }
    }
}

/* ------------------------------------------- K-quants, q8_k activations */

/* A Q4_K super-block decoded once: 8 sub-blocks of 32 nibbles as bytes, their
   6-bit scales, and the mins repeated per 16 (to meet the bsums of 16). */
typedef struct { __m256i q[8]; uint8_t sc[8]; __m256i mins16; float d, dmin; } decoded_q4_k;

static inline void decode_q4_k(const block_q4_k *b, decoded_q4_k *r) {
    uint32_t s0, s1, s2;
    memcpy(&s0, b->scales, 4);
    memcpy(&s1, b->scales + 4, 4);
    memcpy(&s2, b->scales + 8, 4);
    /* Sub-blocks 0..3 keep 6 bits in bytes 0..3 (scale) and 4..7 (min); 4..7 take
       4 bits from bytes 8..11 and their top 2 bits from bytes 0..7's top bits. */
    const uint32_t sc_lo = s0 & 0x3F3F3F3Fu, m_lo = s1 & 0x3F3F3F3Fu;
    const uint32_t sc_hi = (s2 & 0x0F0F0F0Fu) | (((s0 >> 6) & 0x03030303u) << 4);
    const uint32_t m_hi = ((s2 >> 4) & 0x0F0F0F0Fu) | (((s1 >> 6) & 0x03030303u) << 4);
    uint8_t mins[8];
    memcpy(r->sc, &sc_lo, 4);
    memcpy(r->sc + 4, &sc_hi, 4);
    memcpy(mins, &m_lo, 4);
    memcpy(mins + 4, &m_hi, 4);
    const __m128i m8 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mins));
    r->mins16 = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int c = 0; c < 4; c++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * c));
        r->q[2 * c] = _mm256_and_si256(v, low);
        r->q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    }
    r->d = f16(b->d);
    r->dmin = f16(b->dmin);
}

static inline __m256 dot_q4_k_block(const decoded_q4_k *w, const block_q8_k *x, __m256 acc) {
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++)
        isum = dot_u8s8_scaled(isum, w->q[j], _mm256_loadu_si256((const __m256i *)(x->qs + 32 * j)),
                               make_scales(w->sc[j], w->sc[j]));
    const __m256i msum = _mm256_madd_epi16(w->mins16, _mm256_loadu_si256((const __m256i *)x->bsums));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(w->d * x->d), acc);
    return _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(w->dmin * x->d), acc);
}

/* A Q6_K super-block decoded once: 8 vectors of 32 six-bit values (two
   sub-blocks of 16 each, in element order) and the 16 scales as int16. */
typedef struct { __m256i q[8]; int8_t sc[16]; __m256i scales16; float d; } decoded_q6_k;

static inline void decode_q6_k(const block_q6_k *b, decoded_q6_k *r) {
    const __m256i low = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(0x03);
    for (int h = 0; h < 2; h++) {
        const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
        const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
        const __m256i hi0 = _mm256_slli_epi16(_mm256_and_si256(qh, two), 4);
        const __m256i hi1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4);
        const __m256i hi2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4);
        const __m256i hi3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4);
        r->q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(ql0, low), hi0);
        r->q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, low), hi1);
        r->q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), hi2);
        r->q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low), hi3);
    }
    memcpy(r->sc, b->scales, 16);
    r->scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    r->d = f16(b->d);
}

static inline __m256 dot_q6_k_block(const decoded_q6_k *w, const block_q8_k *x, __m256 acc) {
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) /* vector j holds sub-blocks 2j and 2j+1 */
        isum = dot_u8s8_scaled(isum, w->q[j], _mm256_loadu_si256((const __m256i *)(x->qs + 32 * j)),
                               make_scales(w->sc[2 * j], w->sc[2 * j + 1]));
    /* q is stored + 32: subtract 32 * scale * (sum of x) per sub-block. */
    const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(w->scales16, _mm256_loadu_si256((const __m256i *)x->bsums)), 5);
    isum = _mm256_sub_epi32(isum, offset);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(w->d * x->d), acc);
}

enum { KQ_Q4_K, KQ_Q6_K };

/* The GEMM of a plain Q4_K or Q6_K weight (kq): each super-block decoded once per tile of
   activation rows. */
static inline __attribute__((always_inline)) void
x86_gemm_kquant(int kq, const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y, int64_t ldy,
                int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK_K;
    decoded_q4_k wd4;
    decoded_q6_k wd6;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = (const uint8_t *)w + (size_t)r * w_row_bytes;
        for (int64_t i0 = 0; i0 < m; i0 += ACT_TILE) {
            const int tile = (int)(m - i0 < ACT_TILE ? m - i0 : ACT_TILE);
            __m256 acc[ACT_TILE] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int64_t b = 0; b < nb; b++) {
                if (kq == KQ_Q4_K) decode_q4_k((const block_q4_k *)wr + b, &wd4);
                else decode_q6_k((const block_q6_k *)wr + b, &wd6);
                for (int t = 0; t < tile; t++) {
                    const block_q8_k *xb = (const block_q8_k *)((const uint8_t *)x + (size_t)(i0 + t) * x_row_bytes);
                    acc[t] = kq == KQ_Q4_K ? dot_q4_k_block(&wd4, &xb[b], acc[t]) : dot_q6_k_block(&wd6, &xb[b], acc[t]);
                }
            }
            for (int t = 0; t < tile; t++) y[(i0 + t) * ldy + r] = hsum(acc[t]);
        }
    }
}

/* ------------------------------------------------ float weights, f32 x */

enum { WEIGHT_F32, WEIGHT_F16, WEIGHT_BF16 };

/* Weights k..k+7 and weight k of a float row of `kind`, as f32. */
static inline __attribute__((always_inline)) __m256 load8_weights(int kind, const void *w, int64_t k) {
    if (kind == WEIGHT_F32) return _mm256_loadu_ps((const float *)w + k);
    if (kind == WEIGHT_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + k)));
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

static inline __attribute__((always_inline)) float load1_weight(int kind, const void *w, int64_t k) {
    if (kind == WEIGHT_F32) return ((const float *)w)[k];
    if (kind == WEIGHT_F16) return f16(((const uint16_t *)w)[k]);
    return ek_bf16_to_fp32(((const uint16_t *)w)[k]);
}

/* The GEMM of an F32, F16 or BF16 weight (kind) with f32 activations. */
static inline __attribute__((always_inline)) void
x86_gemm_float(int kind, const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y, int64_t ldy,
               int64_t r0, int64_t r1, int64_t m, int64_t n) {
    const int64_t n8 = n - n % 8;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = (const uint8_t *)w + (size_t)r * w_row_bytes;
        for (int64_t i0 = 0; i0 < m; i0 += ACT_TILE) {
            const int tile = (int)(m - i0 < ACT_TILE ? m - i0 : ACT_TILE);
            const float *xr[ACT_TILE];
            __m256 acc[ACT_TILE];
            for (int t = 0; t < ACT_TILE; t++) {
                xr[t] = (const float *)((const uint8_t *)x + (size_t)(i0 + (t < tile ? t : 0)) * x_row_bytes);
                acc[t] = _mm256_setzero_ps();
            }
            for (int64_t k = 0; k < n8; k += 8) {
                const __m256 wv = load8_weights(kind, wr, k);
                for (int t = 0; t < tile; t++) acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xr[t] + k), acc[t]);
            }
            for (int t = 0; t < tile; t++) {
                float sum = hsum(acc[t]);
                for (int64_t k = n8; k < n; k++) sum += load1_weight(kind, wr, k) * xr[t][k];
                y[(i0 + t) * ldy + r] = sum;
            }
        }
    }
}

/* ------------------------------------------- repacked 8-row interleave */

/* Lines [first, first + count) of the `bytes` at p, prefetched into L1 (a line index past
   the end stands for none; the last line is the one holding p[bytes - 1]). A GEMV decodes
   too slowly for the hardware prefetcher to keep ahead of one stream, and a thread's
   time was the sum of decode time and memory time; asking for the weights some way
   ahead of the slice being decoded overlaps the two. */
static inline __attribute__((always_inline)) void
prefetch_lines(const void *p, size_t bytes, int first, int count) {
    const size_t n_lines = (bytes + 63) / 64 + 1;
    for (int l = first; l < first + count; l++)
        if ((size_t)l < n_lines)
            _mm_prefetch((const char *)p + ((size_t)l * 64 < bytes ? (size_t)l * 64 : bytes - 1), _MM_HINT_T0);
}

/* How far ahead of the slice being decoded the 8-row kernels prefetch their one stream:
   2 KiB beat 1 KiB, and further gave nothing more (benchmarks/RESULTS_kernels.md). */
#define X86_PREFETCH_AHEAD 2048

/* The lines of the `bytes` slice bytes `distance` past `slice` (consecutive slices of a
   stream each ask for their own bytes' worth, so the stream is covered). */
static inline __attribute__((always_inline)) void prefetch_ahead_by(const void *slice, size_t bytes, size_t distance) {
    prefetch_lines((const uint8_t *)slice + distance, bytes, 0, (int)((bytes + 63) / 64));
}

static inline __attribute__((always_inline)) void prefetch_ahead(const void *slice, size_t bytes) {
    prefetch_ahead_by(slice, bytes, X86_PREFETCH_AHEAD);
}

/* v as it is at this point, opaque to the optimiser. Integer sums may be reordered freely, and
   GCC turned each row's chain of eight dot_pairs into a tree over all the tile's products, which
   held 32 vectors live and spilled most of them to the stack; through this the chain stays a
   chain, one vector per row. It changes no result (integer sums are exact in any order). */
static inline __attribute__((always_inline)) void keep_in_register(__m256i *v) { __asm__("" : "+x"(*v)); }

/* A group's 8 row results at dst, or only its first n_valid (the weight's last group). */
static inline void store_group_results(float *dst, __m256 v, int n_valid) {
    if (n_valid == EK_REPACK_ROWS) {
        _mm256_storeu_ps(dst, v);
        return;
    }
    float lanes[EK_REPACK_ROWS];
    _mm256_storeu_ps(lanes, v);
    memcpy(dst, lanes, (size_t)n_valid * sizeof(float));
}

static inline int32_t load_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Weight vector k (0..7) of a slice of 8 rows: byte 4j + i holds row j's element 4k + i (Q4:
   k < 4, the low nibbles of qs vector k; k >= 4, the high nibbles of qs vector k - 4, which are
   elements 16 + 4(k - 4).. = the same bytes 4k.. of the activation block). Q5_0 adds its fifth
   bit (bit k of each qh byte, see block_q5_0x8) as bit 4; Q8_0 gives |w|, its signs in *sign. */
static inline __attribute__((always_inline)) __m256i weight_vector_x8(int fam, const uint8_t *slice, int k,
                                                                      __m256i *sign) {
    if (fam == FAM_Q8_0) {
        *sign = _mm256_loadu_si256((const __m256i *)(((const block_q8_0x8 *)slice)->qs + 32 * k));
        return _mm256_abs_epi8(*sign);
    }
    const uint8_t *qs = fam == FAM_Q4_0 ? ((const block_q4_0x8 *)slice)->qs
                      : fam == FAM_Q5_0 ? ((const block_q5_0x8 *)slice)->qs : ((const block_q4_1x8 *)slice)->qs;
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * (k % 4)));
    __m256i u = k < 4 ? _mm256_and_si256(v, low) : _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    if (fam == FAM_Q5_0) {
        const __m256i hv = _mm256_loadu_si256((const __m256i *)((const block_q5_0x8 *)slice)->qh);
        const __m256i moved = k <= 4 ? _mm256_slli_epi16(hv, 4 - k) : _mm256_srli_epi16(hv, k - 4);
        u = _mm256_or_si256(u, _mm256_and_si256(moved, _mm256_set1_epi8(0x10)));
    }
    return u;
}

/* Activation rows [i0, i0 + tile) against one 8-row group of nb slices; always inlined with
   tile a constant where it can be, so the loops unroll and every sum stays in a register.
   Weight vector by weight vector, each meeting the tile's rows in turn: only one decoded
   vector is live, where holding a slice's eight spilled them and every product cost two
   vector loads (the loads, not the multiplies, were the limit). Integer sums widen every
   dot_pairs_per_widen(u_limit) vectors, which does not change them. */
static inline __attribute__((always_inline)) void
block32_x8_tile(int fam, size_t slice_bytes, const uint8_t *group, int n_valid, int64_t nb, const void *x,
                size_t x_row_bytes, int64_t i0, const int tile, float *y, int64_t ldy) {
    /* the weight bytes' bound: nibbles, Q5_0's five bits, or |w| <= 128 */
    const int per_widen = dot_pairs_per_widen(fam == FAM_Q5_0 ? 32 : fam == FAM_Q8_0 ? 129 : 16);
    const block_q8_32 *xr[ACT_TILE];
    __m256 acc[ACT_TILE];
    for (int t = 0; t < tile; t++) {
        xr[t] = (const block_q8_32 *)((const uint8_t *)x + (size_t)(i0 + t) * x_row_bytes);
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *slice = group + (size_t)b * slice_bytes;
        prefetch_ahead(slice, slice_bytes);
        __m256i isum[ACT_TILE], pairs[ACT_TILE];
        for (int t = 0; t < tile; t++) isum[t] = pairs[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            __m256i sign = _mm256_setzero_si256();
            const __m256i u = weight_vector_x8(fam, slice, k, &sign);
            for (int t = 0; t < tile; t++) {
                __m256i xs = _mm256_set1_epi32(load_i32(xr[t][b].qs + 4 * k));
                if (fam == FAM_Q8_0) xs = _mm256_sign_epi8(xs, sign);
                pairs[t] = dot_pairs(pairs[t], u, xs);
                keep_in_register(&pairs[t]);
            }
            if ((k + 1) % per_widen == 0 || k == 7)
                for (int t = 0; t < tile; t++) {
                    isum[t] = widen_pairs(isum[t], pairs[t]);
                    keep_in_register(&isum[t]);
                    pairs[t] = _mm256_setzero_si256();
                }
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)slice));
        const __m256 coef_s = fam == FAM_Q4_0   ? _mm256_mul_ps(dw, _mm256_set1_ps(-8.0f))
                              : fam == FAM_Q5_0 ? _mm256_mul_ps(dw, _mm256_set1_ps(-16.0f))
                              : fam == FAM_Q4_1 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const block_q4_1x8 *)slice)->m))
                                                : _mm256_setzero_ps();
        for (int t = 0; t < tile; t++) {
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(dw, _mm256_set1_ps(xr[t][b].d)), acc[t]);
            /* the offset term (Q4_0: -8 d, Q4_1: m, Q5_0: -16 d, times the block's sum s) */
            if (fam != FAM_Q8_0) acc[t] = _mm256_fmadd_ps(coef_s, _mm256_set1_ps(xr[t][b].s), acc[t]);
        }
    }
    for (int t = 0; t < tile; t++) store_group_results(y + (i0 + t) * ldy, acc[t], n_valid);
}

/* The GEMM of a repacked Q4_0/Q4_1/Q5_0/Q8_0 weight (fam, with its slice_bytes). */
static inline __attribute__((always_inline)) void
x86_gemm_block32_x8(int fam, size_t slice_bytes, const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes,
                    float *y, int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK32;
    for (int64_t g0 = r0; g0 < r1; g0 += EK_REPACK_ROWS) {
        const uint8_t *group = (const uint8_t *)w + (size_t)g0 * w_row_bytes;
        const int n_valid = (int)(r1 - g0 < EK_REPACK_ROWS ? r1 - g0 : EK_REPACK_ROWS);
        int64_t i0 = 0;
        for (; i0 + ACT_TILE <= m; i0 += ACT_TILE)
            block32_x8_tile(fam, slice_bytes, group, n_valid, nb, x, x_row_bytes, i0, ACT_TILE, y + g0, ldy);
        switch (m - i0) { /* each remainder its own constant tile */
        case 3: block32_x8_tile(fam, slice_bytes, group, n_valid, nb, x, x_row_bytes, i0, 3, y + g0, ldy); break;
        case 2: block32_x8_tile(fam, slice_bytes, group, n_valid, nb, x, x_row_bytes, i0, 2, y + g0, ldy); break;
        case 1: block32_x8_tile(fam, slice_bytes, group, n_valid, nb, x, x_row_bytes, i0, 1, y + g0, ldy); break;
        default: break;
        }
    }
}


/* ------------------------------------- repacked K-quants, q8_k activations
 *
 * One 32-bit lane per row of the 8-row group, as above. The per-row, per-sub-block
 * scales multiply each sub-block's integer dot in widen_pairs_scaled (the ISA file
 * picks madd-by-scale or dot-then-multiply), so a super-block of 8 rows ends in one
 * int32 vector and two float multiply-adds per activation row. */

/* int16 pair (a, b) as one int32, to meet a madd lane holding (w[2p], w[2p+1]). */
static inline int32_t pair16(int32_t a, int32_t b) {
    return (int32_t)((uint32_t)(uint16_t)(int16_t)a | ((uint32_t)(uint16_t)(int16_t)b << 16));
}

/* One tile of activation rows [i0, i0 + tile) against one 8-row group; always inlined
   with tile a constant where it can be (GEMV: 1), so the tile loops unroll into registers.
   As in block32_x8_tile, each weight vector is decoded once and meets the tile's rows in
   turn, with the sub-block's scales made where they are used: holding a chunk's sixteen
   decoded vectors, the eight scale vectors and the activation pieces spilled most of them.
   A sub-block's eight vectors share one scale, so their products sum in dot_pairs' narrow
   lanes and are scaled once (maddubs + madd per vector was one multiply too many). */
static inline __attribute__((always_inline)) void
q4_kx8_tile(const block_q4_kx8 *group, int n_valid, int64_t g0, int64_t nb, const void *x, size_t x_row_bytes,
                        int64_t i0, const int tile, float *y, int64_t ldy) {
    const __m256i low = _mm256_set1_epi8(0x0F), low16 = _mm256_set1_epi32(0xFFFF);
    const int per_widen = dot_pairs_per_widen(16); /* nibbles */
    const block_q8_k *xr[ACT_TILE];
    __m256 acc[ACT_TILE];
    for (int t = 0; t < ACT_TILE; t++) {
        xr[t] = (const block_q8_k *)((const uint8_t *)x + (size_t)(i0 + (t < tile ? t : 0)) * x_row_bytes);
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const block_q4_kx8 *s = &group[b];
        prefetch_ahead(s, sizeof *s);
        __m256i isum[ACT_TILE];
        for (int t = 0; t < ACT_TILE; t++) isum[t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) { /* 32 bytes per row: sub-blocks 2c (low nibbles), 2c + 1 (high) */
            const __m256i sp = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(s->sc + 16 * c)));
            const __m256i scl_lo = lane_scales(_mm256_and_si256(sp, low16)), scl_hi = lane_scales(_mm256_srli_epi32(sp, 16));
            for (int half = 0; half < 2; half++) { /* one sub-block, one scale: its products sum narrow */
                __m256i pairs[ACT_TILE];
                for (int t = 0; t < tile; t++) pairs[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(s->qs + 32 * (8 * c + k)));
                    const __m256i u = half ? _mm256_and_si256(_mm256_srli_epi16(v, 4), low) : _mm256_and_si256(v, low);
                    for (int t = 0; t < tile; t++) {
                        const __m256i xs = _mm256_set1_epi32(load_i32(xr[t][b].qs + 64 * c + 32 * half + 4 * k));
                        pairs[t] = dot_pairs(pairs[t], u, xs);
                        keep_in_register(&pairs[t]);
                    }
                    if ((k + 1) % per_widen == 0 || k == 7)
                        for (int t = 0; t < tile; t++) {
                            isum[t] = widen_pairs_scaled(isum[t], pairs[t], half ? scl_hi : scl_lo);
                            keep_in_register(&isum[t]);
                            pairs[t] = _mm256_setzero_si256();
                        }
                }
            }
        }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s->d));
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s->dmin));
        for (int t = 0; t < tile; t++) {
            const block_q8_k *xb = &xr[t][b];
            __m256i msum = _mm256_setzero_si256();
            for (int p = 0; p < 4; p++) {
                const __m256i mins = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(s->m + 16 * p)));
                const int32_t pair = pair16(xb->bsums[4 * p] + xb->bsums[4 * p + 1],
                                                        xb->bsums[4 * p + 2] + xb->bsums[4 * p + 3]);
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mins, _mm256_set1_epi32(pair)));
            }
            const __m256 xd = _mm256_set1_ps(xb->d);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, xd), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, xd), acc[t]);
        }
    }
    for (int t = 0; t < tile; t++) store_group_results(y + (i0 + t) * ldy + g0, acc[t], n_valid);
}


/* One tile of activation rows [i0, i0 + tile) against one 8-row group; always inlined
   with tile a constant where it can be (GEMV: 1), so the tile loops unroll into registers.
   Sub-block by sub-block, each weight vector decoded once and meeting the tile's rows in
   turn, the products summed narrow between scalings, as in q4_kx8_tile. */
static inline __attribute__((always_inline)) void
q6_kx8_tile(const block_q6_kx8 *group, int n_valid, int64_t g0, int64_t nb, const void *x, size_t x_row_bytes,
                        int64_t i0, const int tile, float *y, int64_t ldy) {
    const __m256i low = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(0x30);
    const int per_widen = dot_pairs_per_widen(64); /* six bits */
    const block_q8_k *xr[ACT_TILE];
    __m256 acc[ACT_TILE];
    for (int t = 0; t < ACT_TILE; t++) {
        xr[t] = (const block_q8_k *)((const uint8_t *)x + (size_t)(i0 + (t < tile ? t : 0)) * x_row_bytes);
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const block_q6_kx8 *s = &group[b];
        prefetch_ahead(s, sizeof *s);
        __m256i isum[ACT_TILE];
        /* q is stored + 32: start from -32 * sum_k scale_k * bsums_k per row */
        for (int t = 0; t < tile; t++) {
            __m256i corr = _mm256_setzero_si256();
            for (int p = 0; p < 8; p++) { /* scales of sub-blocks 2p, 2p + 1 meet bsums 2p, 2p + 1 (one int16 pair) */
                const __m256i sc_pair = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(s->sc + 16 * p)));
                int32_t pair;
                memcpy(&pair, &xr[t][b].bsums[2 * p], 4);
                corr = _mm256_add_epi32(corr, _mm256_madd_epi16(sc_pair, _mm256_set1_epi32(pair)));
            }
            isum[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(corr, 5));
        }
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 2; g++) /* bytes 16g..16g+15 of the half */
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++) { /* sub-block 8h + 2q + g: scale pair 4h + q, element g */
                    const __m256i sp = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(s->sc + 16 * (4 * h + q))));
                    const __m256i scl = lane_scales(g ? _mm256_srai_epi32(sp, 16)
                                                      : _mm256_srai_epi32(_mm256_slli_epi32(sp, 16), 16));
                    __m256i pairs[ACT_TILE];
                    for (int t = 0; t < tile; t++) pairs[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
                    for (int i = 0; i < 4; i++) {
                        /* piece 4g + i: ql piece, ql piece + 8, qh piece; q picks the nibble and the two high bits */
                        const uint8_t *triple = s->q + 96 * (8 * h + 4 * g + i);
                        const __m256i l = _mm256_loadu_si256((const __m256i *)(triple + 32 * (q & 1)));
                        const __m256i qh = _mm256_loadu_si256((const __m256i *)(triple + 64));
                        const __m256i nib = q < 2 ? _mm256_and_si256(l, low) : _mm256_and_si256(_mm256_srli_epi16(l, 4), low);
                        const __m256i high = q == 0 ? _mm256_slli_epi16(qh, 4) : q == 1 ? _mm256_slli_epi16(qh, 2)
                                           : q == 2 ? qh : _mm256_srli_epi16(qh, 2);
                        const __m256i u = _mm256_or_si256(nib, _mm256_and_si256(high, two));
                        for (int t = 0; t < tile; t++) {
                            const int8_t *xq = xr[t][b].qs + 128 * h + 32 * q + 16 * g + 4 * i;
                            pairs[t] = dot_pairs(pairs[t], u, _mm256_set1_epi32(load_i32(xq)));
                            keep_in_register(&pairs[t]);
                        }
                        if ((i + 1) % per_widen == 0 || i == 3)
                            for (int t = 0; t < tile; t++) {
                                isum[t] = widen_pairs_scaled(isum[t], pairs[t], scl);
                                keep_in_register(&isum[t]);
                                pairs[t] = _mm256_setzero_si256();
                            }
                    }
                }
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s->d));
        for (int t = 0; t < tile; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, _mm256_set1_ps(xr[t][b].d)), acc[t]);
    }
    for (int t = 0; t < tile; t++) store_group_results(y + (i0 + t) * ldy + g0, acc[t], n_valid);
}

/* ------------------------------------------------------ bandwidth probe */

static inline __attribute__((always_inline)) uint64_t x86_read_sum(const uint8_t *const *streams, int n_streams, size_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0;
    for (size_t off = 0; off < n; off += 64)
        for (int k = 0; k < n_streams; k++) {
            const __m256i *v = (const __m256i *)(streams[k] + off);
            s0 = _mm256_add_epi64(s0, _mm256_load_si256(v));
            s1 = _mm256_add_epi64(s1, _mm256_load_si256(v + 1));
        }
    const __m256i s = _mm256_add_epi64(s0, s1);
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
