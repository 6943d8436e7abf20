/* x86 AVX-512 kernels. With VNNI (every AVX-512 CPU since Ice Lake) the int8
 * dot product is one vpdpbusd (u8 x s8 summed in groups of 4 into int32),
 * used on 256-bit registers: the kernels are memory-bound for GEMV, and the
 * 256-bit form keeps the clock up on the CPUs that throttle for 512-bit work.
 * Without VNNI, AVX-512 offers nothing over AVX2 for these int8 dots, so that
 * table is AVX2's kernels (the family name stays avx512 for the user) but for
 * attention, which both tables run on 512-bit f32 vectors. */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <immintrin.h>
#include <string.h>

static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }

/* vpdpbusd sums into int32 lanes: nothing to widen, no bound to keep. */
static inline __m256i dot_pairs(__m256i p, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(p, u, s); }
static inline __m256i widen_pairs(__m256i acc, __m256i p) { return _mm256_add_epi32(acc, p); }
static inline int dot_pairs_per_widen(int u_limit) { (void)u_limit; return 8; }

/* For the K-quants' per-sub-block scales, maddubs + madd-by-scales (2 uops)
   beats vpdpbusd + vpmulld + add (4 uops, vpmulld's 10-cycle latency); the
   weights there are at most 63, so maddubs' int16 pairs cannot saturate.
   int16 lanes 0..7 (32-bit lanes 0..3 after madd) get a, 8..15 get b. */
static inline __m256i make_scales(int a, int b) {
    return _mm256_set_m128i(_mm_set1_epi16((int16_t)b), _mm_set1_epi16((int16_t)a));
}

static inline __m256i dot_u8s8_scaled(__m256i acc, __m256i u, __m256i s, __m256i scales) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scales));
}

/* The repacked K-quants' per-row scales: one vpdpbusd chain per sub-block (dot_pairs), then
   one multiply by the 8 rows' scales. */
static inline __m256i lane_scales(__m256i sc32) { return sc32; }
static inline __m256i widen_pairs_scaled(__m256i acc, __m256i p, __m256i lsc) {
    return _mm256_add_epi32(acc, _mm256_mullo_epi32(p, lsc));
}

#include "kernels_x86_body.h"

/* Repacked Q4_0/Q4_1/Q5_0/Q8_0 on 512-bit registers: two 8-row groups side by side,
   so each vpdpbusd does 16 rows x 4 bytes. A last lone group reads itself
   twice and stores 8 lanes, so every row goes through the same operations
   whatever the thread split. Q8_0 weights become unsigned as w + 128 (x ^ 0x80)
   and the 128 * sum(x) that adds is taken back through the block's s, like
   Q4_0's -8 offset. */
#define X16_TILE 8 /* activation rows per decoded slice pair */

/* How far ahead of the slice pair being decoded the tile prefetches each of its two
   streams. An 8-row tile decodes a slice in about the time L3 or DRAM takes to answer, and
   two streams per thread are too few for the hardware prefetcher to keep it fed; 4 KiB
   beat 2 KiB for the 160-byte Q4_1 slices and tied it for Q8_0's 272 bytes
   (benchmarks/RESULTS_kernels.md). */
#define X16_PREFETCH_AHEAD 4096

/* GEMV reads up to GEMV_PAIRS 16-row group pairs side by side, block by block: eight
   sequential streams per thread keep more lines in flight than two, which is what a
   memory-bound GEMV is short of (measured in benchmarks/RESULTS_kernels.md). Each row's
   operations are those of the GEMM tile, so the result does not change a bit. gemm_x16
   instantiates 4, 3 and 2 pairs. */
#define GEMV_PAIRS 4

/* Block b of two 8-row groups decoded for 16 lanes: the eight weight byte vectors
   (unsigned), the rows' scales, and the coefficient of the activation block's s. */
typedef struct { __m512i u[8]; __m512 dw, coef_s; } decoded_x16;

static inline __attribute__((always_inline)) void
decode_x16(int fam, const uint8_t *s0, const uint8_t *s1, decoded_x16 *r) {
    const __m512i low = _mm512_set1_epi8(0x0F), bias = _mm512_set1_epi8((char)0x80);
    r->dw = _mm512_cvtph_ps(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)s0)), _mm_loadu_si128((const __m128i *)s1), 1));
    if (fam == FAM_Q8_0) {
        const int8_t *qs0 = ((const block_q8_0x8 *)s0)->qs, *qs1 = ((const block_q8_0x8 *)s1)->qs;
        for (int k = 0; k < 8; k++)
            r->u[k] = _mm512_xor_si512(_mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(qs0 + 32 * k))),
                _mm256_loadu_si256((const __m256i *)(qs1 + 32 * k)), 1), bias);
        r->coef_s = _mm512_mul_ps(r->dw, _mm512_set1_ps(-128.0f));
    } else if (fam == FAM_Q5_0) {
        const block_q5_0x8 *q0 = (const block_q5_0x8 *)s0, *q1 = (const block_q5_0x8 *)s1;
        /* bit k of each qh byte is vector k's fifth bit (see block_q5_0x8): move it to bit 4 */
        const __m512i hv = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q0->qh)),
                                              _mm256_loadu_si256((const __m256i *)q1->qh), 1);
        const __m512i bit4 = _mm512_set1_epi8(0x10);
        const __m512i high[8] = {_mm512_slli_epi16(hv, 4), _mm512_slli_epi16(hv, 3), _mm512_slli_epi16(hv, 2),
                                 _mm512_slli_epi16(hv, 1), hv, _mm512_srli_epi16(hv, 1),
                                 _mm512_srli_epi16(hv, 2), _mm512_srli_epi16(hv, 3)};
        for (int k = 0; k < 4; k++) {
            const __m512i v = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(q0->qs + 32 * k))),
                _mm256_loadu_si256((const __m256i *)(q1->qs + 32 * k)), 1);
            /* (v & 0x0F) | (high & 0x10) in one ternary-logic op each */
            r->u[k] = _mm512_ternarylogic_epi32(_mm512_and_si512(v, low), high[k], bit4, 0xF8);
            r->u[4 + k] = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(v, 4), low), high[4 + k], bit4, 0xF8);
        }
        r->coef_s = _mm512_mul_ps(r->dw, _mm512_set1_ps(-16.0f));
    } else {
        const uint8_t *qs0 = fam == FAM_Q4_0 ? ((const block_q4_0x8 *)s0)->qs : ((const block_q4_1x8 *)s0)->qs;
        const uint8_t *qs1 = fam == FAM_Q4_0 ? ((const block_q4_0x8 *)s1)->qs : ((const block_q4_1x8 *)s1)->qs;
        for (int k = 0; k < 4; k++) {
            const __m512i v = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(qs0 + 32 * k))),
                _mm256_loadu_si256((const __m256i *)(qs1 + 32 * k)), 1);
            r->u[k] = _mm512_and_si512(v, low);
            r->u[4 + k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
        r->coef_s = fam == FAM_Q4_0
            ? _mm512_mul_ps(r->dw, _mm512_set1_ps(-8.0f))
            : _mm512_cvtph_ps(_mm256_inserti128_si256(
                  _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)((const block_q4_1x8 *)s0)->m)),
                  _mm_loadu_si128((const __m128i *)((const block_q4_1x8 *)s1)->m), 1));
    }
}

/* acc += the 16 rows' integer dots with one activation block, scaled; corr += the
   offset term (Q4_1's m * s, the others' -k * d * s), summed apart from the dots as
   the plain kernels do: folding it into the same sum per block rounds differently
   and decided near-tied tokens against llama.cpp. */
static inline __attribute__((always_inline)) void
dot_x16(const decoded_x16 *w, const block_q8_32 *xb, __m512 *acc, __m512 *corr) {
    int32_t piece[8];
    memcpy(piece, xb->qs, 32);
    __m512i isum = _mm512_setzero_si512();
    for (int k = 0; k < 8; k++) isum = _mm512_dpbusd_epi32(isum, w->u[k], _mm512_set1_epi32(piece[k]));
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(w->dw, _mm512_set1_ps(xb->d)), *acc);
    *corr = _mm512_fmadd_ps(w->coef_s, _mm512_set1_ps(xb->s), *corr);
}

/* Activation rows [i0, i0 + tile) against the 16 rows of group0 and group1; always
   inlined with tile a constant where it can be, so the tile loop unrolls into registers. */
static inline __attribute__((always_inline)) void
x16_tile(int fam, size_t slice_bytes, const uint8_t *group0, const uint8_t *group1, int n_valid, int64_t g0, int64_t nb,
         const void *x, size_t x_row_bytes, int64_t i0, const int tile, float *y, int64_t ldy) {
    __m512 acc[X16_TILE], corr[X16_TILE];
    for (int t = 0; t < X16_TILE; t++) acc[t] = corr[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        decoded_x16 wd;
        if (i0 == 0) { /* the first tile brings the weights in; the next ones find them in L1/L2 */
            prefetch_ahead_by(group0 + (size_t)b * slice_bytes, slice_bytes, X16_PREFETCH_AHEAD);
            prefetch_ahead_by(group1 + (size_t)b * slice_bytes, slice_bytes, X16_PREFETCH_AHEAD);
        }
        decode_x16(fam, group0 + (size_t)b * slice_bytes, group1 + (size_t)b * slice_bytes, &wd);
        #pragma GCC unroll 8
        for (int t = 0; t < tile; t++)
            dot_x16(&wd, (const block_q8_32 *)((const uint8_t *)x + (size_t)(i0 + t) * x_row_bytes) + b, &acc[t], &corr[t]);
    }
    for (int t = 0; t < tile; t++)
        _mm512_mask_storeu_ps(y + (i0 + t) * ldy + g0, (__mmask16)((1u << n_valid) - 1u),
                              _mm512_add_ps(acc[t], corr[t]));
}

/* One activation row against the n_pairs (<= GEMV_PAIRS, a constant of the inlined
   copy) group pairs from `first` on, read side by side. */
static inline __attribute__((always_inline)) void
gemv_x16_pairs(int fam, size_t slice_bytes, const uint8_t *first, size_t group_bytes, int64_t nb,
               const block_q8_32 *x, float *y, const int n_pairs) {
    __m512 acc[GEMV_PAIRS], corr[GEMV_PAIRS];
    for (int p = 0; p < GEMV_PAIRS; p++) acc[p] = corr[p] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++)
        #pragma GCC unroll 4
        for (int p = 0; p < n_pairs; p++) {
            const uint8_t *s0 = first + 2 * (size_t)p * group_bytes + (size_t)b * slice_bytes;
            decoded_x16 wd;
            decode_x16(fam, s0, s0 + group_bytes, &wd);
            dot_x16(&wd, &x[b], &acc[p], &corr[p]);
        }
    for (int p = 0; p < n_pairs; p++) _mm512_storeu_ps(y + 16 * p, _mm512_add_ps(acc[p], corr[p]));
}

static inline __attribute__((always_inline)) void
gemm_x16(int fam, size_t slice_bytes, const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes,
         float *y, int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK32;
    const size_t group_bytes = EK_REPACK_ROWS * w_row_bytes;
    /* GEMV: whole pairs four, else three or two, at a time (a thread's rows come in
       items of 16 to 64); a last single pair and a lone group go through the tile */
    while (m == 1 && r1 - r0 >= 32) {
        const uint8_t *first = (const uint8_t *)w + (size_t)r0 * w_row_bytes;
        const int64_t n_pairs = (r1 - r0) / 16;
        if (n_pairs >= GEMV_PAIRS) gemv_x16_pairs(fam, slice_bytes, first, group_bytes, nb, x, y + r0, GEMV_PAIRS);
        else if (n_pairs == 3) gemv_x16_pairs(fam, slice_bytes, first, group_bytes, nb, x, y + r0, 3);
        else gemv_x16_pairs(fam, slice_bytes, first, group_bytes, nb, x, y + r0, 2);
        r0 += 16 * (n_pairs >= GEMV_PAIRS ? GEMV_PAIRS : n_pairs);
    }
    for (int64_t g0 = r0; g0 < r1; g0 += 2 * EK_REPACK_ROWS) {
        const uint8_t *group0 = (const uint8_t *)w + (size_t)g0 * w_row_bytes;
        const uint8_t *group1 = g0 + EK_REPACK_ROWS < r1 ? group0 + group_bytes : group0;
        const int n_valid = (int)(r1 - g0 < 16 ? r1 - g0 : 16);
        for (int64_t i0 = 0; i0 < m; i0 += X16_TILE) {
            const int tile = (int)(m - i0 < X16_TILE ? m - i0 : X16_TILE);
            if (tile == X16_TILE) x16_tile(fam, slice_bytes, group0, group1, n_valid, g0, nb, x, x_row_bytes, i0, X16_TILE, y, ldy);
            else if (tile == 1) x16_tile(fam, slice_bytes, group0, group1, n_valid, g0, nb, x, x_row_bytes, i0, 1, y, ldy);
            else x16_tile(fam, slice_bytes, group0, group1, n_valid, g0, nb, x, x_row_bytes, i0, tile, y, ldy);
        }
    }
}


/* ------------------------------------------- repacked K-quants, 16 rows
 * Two 8-row groups side by side in 512-bit registers, as gemm_x16: each vpdpbusd
 * does 16 rows x 4 bytes, so a broadcast activation piece and the loop overhead
 * serve twice the weight bytes of the 256-bit kernels. A last lone group reads
 * itself twice and stores 8 lanes. Per row the operations are those of every other
 * tile and split, so results do not depend on the thread count. */

#define K_TILE 8 /* activation rows per decoded K-quant slice pair */

static inline __m256i join128(const void *a, const void *b) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                   _mm_loadu_si128((const __m128i *)b), 1);
}

static inline __m512i join256(const void *a, const void *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

/* acc + lane j: sc_j * sum over n vector pairs of (u8 x s8 summed in groups of 4). */
static inline __m512i sub_dot_scaled16(__m512i acc, const __m512i *u, const __m512i *s, int n, __m512i sc32) {
    __m512i t = _mm512_setzero_si512();
    for (int k = 0; k < n; k++) t = _mm512_dpbusd_epi32(t, u[k], s[k]);
    return _mm512_add_epi32(acc, _mm512_mullo_epi32(t, sc32));
}

/* Slice b of two 8-row Q4_K groups (sa, sb) against activation blocks xb[0..tile):
   acc[t] += the 16 rows' dots with xb[t]. */
static inline __attribute__((always_inline)) void
q4_kx16_slice(const block_q4_kx8 *sa, const block_q4_kx8 *sb, const block_q8_k *const *xb, const int tile, __m512 *acc,
              const int prefetch_next) {
    if (tile > K_TILE) __builtin_unreachable(); /* for GCC's bounds warnings */
    const __m512i low = _mm512_set1_epi8(0x0F), low16 = _mm512_set1_epi32(0xFFFF);
    __m512i isum[K_TILE];
    for (int t = 0; t < K_TILE; t++) isum[t] = _mm512_setzero_si512();
    #pragma GCC unroll 8
    for (int c = 0; c < 4; c++) {
        const __m512i sp = _mm512_cvtepu8_epi16(join128(sa->sc + 16 * c, sb->sc + 16 * c)); /* sub-blocks 2c, 2c+1 */
        if (prefetch_next) {
            prefetch_lines(sa + 1, sizeof *sa, 5 * c, 5);
            prefetch_lines(sb + 1, sizeof *sb, 5 * c, 5);
        }
        #pragma GCC unroll 8
        for (int e = 0; e < 2; e++) { /* e = 0: low nibbles, sub-block 2c; 1: high, 2c + 1 */
            const __m512i scl = e ? _mm512_srli_epi32(sp, 16) : _mm512_and_si512(sp, low16);
            __m512i u[8];
            for (int k = 0; k < 8; k++) {
                const __m512i v = join256(sa->qs + 32 * (8 * c + k), sb->qs + 32 * (8 * c + k));
                u[k] = _mm512_and_si512(e ? _mm512_srli_epi16(v, 4) : v, low);
            }
            #pragma GCC unroll 8
            for (int t = 0; t < tile; t++) {
                const int8_t *xq = xb[t]->qs + 64 * c + 32 * e;
                __m512i xs[8];
                for (int k = 0; k < 8; k++) xs[k] = _mm512_set1_epi32(load_i32(xq + 4 * k));
                isum[t] = sub_dot_scaled16(isum[t], u, xs, 8, scl);
            }
        }
        /* as between a GEMV's slices (kx16_gemv_pairs): keeps GCC from hoisting the next
           sub-block pair's loads here and spilling them, which slowed the GEMV (the GEMM
           is unchanged either way) */
        __asm__ volatile("" ::: "memory");
    }
    const __m512 d = _mm512_cvtph_ps(join128(sa->d, sb->d)), dmin = _mm512_cvtph_ps(join128(sa->dmin, sb->dmin));
    __m512i mins[4];
    for (int p = 0; p < 4; p++) mins[p] = _mm512_cvtepu8_epi16(join128(sa->m + 16 * p, sb->m + 16 * p));
    #pragma GCC unroll 8
    for (int t = 0; t < tile; t++) {
        __m512i msum = _mm512_setzero_si512();
        for (int p = 0; p < 4; p++) {
            const int32_t pair = (int32_t)((uint32_t)(uint16_t)(xb[t]->bsums[4 * p] + xb[t]->bsums[4 * p + 1]) |
                                           ((uint32_t)(uint16_t)(xb[t]->bsums[4 * p + 2] + xb[t]->bsums[4 * p + 3]) << 16));
            msum = _mm512_add_epi32(msum, _mm512_madd_epi16(mins[p], _mm512_set1_epi32(pair)));
        }
        const __m512 xd = _mm512_set1_ps(xb[t]->d);
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, xd), acc[t]);
        acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dmin, xd), acc[t]);
    }
}

/* Slice b of two 8-row Q6_K groups against xb[0..tile), as q4_kx16_slice. */
static inline __attribute__((always_inline)) void
q6_kx16_slice(const block_q6_kx8 *sa, const block_q6_kx8 *sb, const block_q8_k *const *xb, const int tile, __m512 *acc,
              const int prefetch_next) {
    if (tile > K_TILE) __builtin_unreachable(); /* for GCC's bounds warnings */
    const __m512i low = _mm512_set1_epi8(0x0F), two = _mm512_set1_epi8(0x30);
    __m512i isum[K_TILE] = {0}; /* only t < tile are used; set so that GCC sees them set */
    { /* q is stored + 32: start from -32 * sum_k scale_k * bsums_k per row */
        __m512i pairs[8];
        for (int p = 0; p < 8; p++) pairs[p] = _mm512_cvtepi8_epi16(join128(sa->sc + 16 * p, sb->sc + 16 * p));
        #pragma GCC unroll 8
        for (int t = 0; t < tile; t++) {
            __m512i corr = _mm512_setzero_si512();
            for (int p = 0; p < 8; p++)
                corr = _mm512_add_epi32(corr, _mm512_madd_epi16(pairs[p], _mm512_set1_epi32(load_i32(&xb[t]->bsums[2 * p]))));
            isum[t] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(corr, 5));
        }
    }
    #pragma GCC unroll 8
    for (int h = 0; h < 2; h++)
        #pragma GCC unroll 8
        for (int g = 0; g < 2; g++)
            #pragma GCC unroll 8
            for (int q = 0; q < 4; q++) { /* sub-block 8h + 2q + g: scale pair 4h + q, element g */
                const __m512i sp = _mm512_cvtepi8_epi16(join128(sa->sc + 16 * (4 * h + q), sb->sc + 16 * (4 * h + q)));
                if (prefetch_next) {
                    prefetch_lines(sa + 1, sizeof *sa, 2 * (8 * h + 4 * g + q), 2);
                    prefetch_lines(sb + 1, sizeof *sb, 2 * (8 * h + 4 * g + q), 2);
                }
                const __m512i scl = g ? _mm512_srai_epi32(sp, 16) : _mm512_srai_epi32(_mm512_slli_epi32(sp, 16), 16);
                __m512i u[4];
                for (int i = 0; i < 4; i++) {
                    const size_t off = (size_t)96 * (8 * h + 4 * g + i); /* ql piece, ql piece + 8, qh piece */
                    const __m512i l = join256(sa->q + off + (q & 1) * 32, sb->q + off + (q & 1) * 32);
                    const __m512i qh = join256(sa->q + off + 64, sb->q + off + 64);
                    const __m512i lo = _mm512_and_si512(q < 2 ? l : _mm512_srli_epi16(l, 4), low);
                    const __m512i hi = q == 0 ? _mm512_slli_epi16(qh, 4) : q == 1 ? _mm512_slli_epi16(qh, 2)
                                     : q == 2 ? qh : _mm512_srli_epi16(qh, 2);
                    u[i] = _mm512_or_si512(lo, _mm512_and_si512(hi, two));
                }
                #pragma GCC unroll 8
                for (int t = 0; t < tile; t++) {
                    const int8_t *xq = xb[t]->qs + 128 * h + 16 * g + 32 * q;
                    __m512i xs[4];
                    for (int i = 0; i < 4; i++) xs[i] = _mm512_set1_epi32(load_i32(xq + 4 * i));
                    isum[t] = sub_dot_scaled16(isum[t], u, xs, 4, scl);
                }
            }
    const __m512 d = _mm512_cvtph_ps(join128(sa->d, sb->d));
    #pragma GCC unroll 8
    for (int t = 0; t < tile; t++)
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, _mm512_set1_ps(xb[t]->d)), acc[t]);
}

/* Slice b of two 8-row groups of kq (KQ_Q4_K or KQ_Q6_K, a constant of the inlined copy)
   against xb[0..tile); slices are kx8_slice_bytes(kq) apart. */
static inline __attribute__((always_inline)) size_t kx8_slice_bytes(int kq) {
    return kq == KQ_Q4_K ? sizeof(block_q4_kx8) : sizeof(block_q6_kx8);
}

static inline __attribute__((always_inline)) void
kx16_slice(int kq, const uint8_t *sa, const uint8_t *sb, const block_q8_k *const *xb, const int tile, __m512 *acc,
           const int prefetch_next) {
    if (kq == KQ_Q4_K) q4_kx16_slice((const block_q4_kx8 *)sa, (const block_q4_kx8 *)sb, xb, tile, acc, prefetch_next);
    else q6_kx16_slice((const block_q6_kx8 *)sa, (const block_q6_kx8 *)sb, xb, tile, acc, prefetch_next);
}

/* Activation rows [i0, i0 + tile) against the 16 rows of groups ga and gb. The first tile
   asks for each next slice as the GEMV does: at a few rows (decoding several sequences) it
   streams the weights from L3 or DRAM too. */
static inline __attribute__((always_inline)) void
kx16_tile(int kq, const uint8_t *ga, const uint8_t *gb, int n_valid, int64_t row0, int64_t nb, const void *x,
          size_t x_row_bytes, int64_t i0, const int tile, float *y, int64_t ldy) {
    const size_t slice_bytes = kx8_slice_bytes(kq);
    const block_q8_k *xr[K_TILE];
    __m512 acc[K_TILE];
    for (int t = 0; t < K_TILE; t++) {
        xr[t] = (const block_q8_k *)((const uint8_t *)x + (size_t)(i0 + (t < tile ? t : 0)) * x_row_bytes);
        acc[t] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const block_q8_k *xb[K_TILE];
        for (int t = 0; t < K_TILE; t++) xb[t] = &xr[t][b];
        kx16_slice(kq, ga + (size_t)b * slice_bytes, gb + (size_t)b * slice_bytes, xb, tile, acc, i0 == 0);
    }
    for (int t = 0; t < tile; t++)
        _mm512_mask_storeu_ps(y + (i0 + t) * ldy + row0, (__mmask16)((1u << n_valid) - 1u), acc[t]);
}

/* GEMV: one activation row against n_pairs (a constant of the inlined copy) group
   pairs from ga on, read side by side slice by slice, as gemv_x16_pairs does for
   the 32-element blocks, each slice asking for the next one of its two streams
   (prefetch_lines: one slice, 1184 or 1680 bytes, ahead beat two and three; see
   benchmarks/RESULTS_kernels.md); each row's operations are the tile's. The empty asm
   between slices keeps GCC from hoisting the next pair's loads and broadcasts into the
   current one, where they spill to the stack; the out-of-order core overlaps the slices
   anyway. */
static inline __attribute__((always_inline)) void
kx16_gemv_pairs(int kq, const uint8_t *ga, size_t group_bytes, int64_t nb, const block_q8_k *x, float *y,
                const int n_pairs) {
    const size_t slice_bytes = kx8_slice_bytes(kq);
    __m512 acc[GEMV_PAIRS];
    for (int p = 0; p < GEMV_PAIRS; p++) acc[p] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const block_q8_k *xb[1] = {&x[b]};
        #pragma GCC unroll 4
        for (int p = 0; p < n_pairs; p++) {
            const uint8_t *sa = ga + 2 * (size_t)p * group_bytes + (size_t)b * slice_bytes;
            kx16_slice(kq, sa, sa + group_bytes, xb, 1, &acc[p], 1);
            __asm__ volatile("" ::: "memory");
        }
    }
    for (int p = 0; p < n_pairs; p++) _mm512_storeu_ps(y + 16 * p, acc[p]);
}

/* The GEMM of a repacked Q4_K or Q6_K weight (kq) on 16-row group pairs; GEMV as gemm_x16. */
static inline __attribute__((always_inline)) void
gemm_kx16(int kq, const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y, int64_t ldy,
          int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK_K;
    const size_t group_bytes = EK_REPACK_ROWS * w_row_bytes;
    while (m == 1 && r1 - r0 >= 32) {
        const uint8_t *first = (const uint8_t *)w + (size_t)r0 * w_row_bytes;
        const int64_t n_pairs = (r1 - r0) / 16;
        if (n_pairs >= GEMV_PAIRS) kx16_gemv_pairs(kq, first, group_bytes, nb, x, y + r0, GEMV_PAIRS);
        else if (n_pairs == 3) kx16_gemv_pairs(kq, first, group_bytes, nb, x, y + r0, 3);
        else kx16_gemv_pairs(kq, first, group_bytes, nb, x, y + r0, 2);
        r0 += 16 * (n_pairs >= GEMV_PAIRS ? GEMV_PAIRS : n_pairs);
    }
    for (int64_t g0 = r0; g0 < r1; g0 += 2 * EK_REPACK_ROWS) {
        const uint8_t *ga = (const uint8_t *)w + (size_t)g0 * w_row_bytes;
        const uint8_t *gb = g0 + EK_REPACK_ROWS < r1 ? ga + group_bytes : ga;
        const int n_valid = (int)(r1 - g0 < 16 ? r1 - g0 : 16);
        for (int64_t i0 = 0; i0 < m; i0 += K_TILE) {
            const int tile = (int)(m - i0 < K_TILE ? m - i0 : K_TILE);
            if (tile == K_TILE) kx16_tile(kq, ga, gb, n_valid, g0, nb, x, x_row_bytes, i0, K_TILE, y, ldy);
            else if (tile == 1) kx16_tile(kq, ga, gb, n_valid, g0, nb, x, x_row_bytes, i0, 1, y, ldy);
            else kx16_tile(kq, ga, gb, n_valid, g0, nb, x, x_row_bytes, i0, tile, y, ldy);
        }
    }
}

/* ------------------------------------------------------ matmul kernels */

static void quantize_q8_32_avx512vnni(const float *x, void *xq, int64_t n) { x86_quantize_q8_32(x, xq, n); }
static void quantize_q8_k_avx512vnni(const float *x, void *xq, int64_t n) { x86_quantize_q8_k(x, xq, n); }

static void gemm_f32_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_float(WEIGHT_F32, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_f16_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_float(WEIGHT_F16, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_bf16_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                 int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_float(WEIGHT_BF16, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_0_q8_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                    int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32(FAM_Q4_0, sizeof(block_q4_0), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_1_q8_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                    int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32(FAM_Q4_1, sizeof(block_q4_1), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q5_0_q8_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                    int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32(FAM_Q5_0, sizeof(block_q5_0), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q8_0_q8_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                    int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_block32(FAM_Q8_0, sizeof(block_q8_0), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_k_q8k_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                     int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_kquant(KQ_Q4_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q6_k_q8k_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                     int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    x86_gemm_kquant(KQ_Q6_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_0x16_q8_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                       int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x16(FAM_Q4_0, sizeof(block_q4_0x8), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_1x16_q8_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                       int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x16(FAM_Q4_1, sizeof(block_q4_1x8), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q8_0x16_q8_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                       int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x16(FAM_Q8_0, sizeof(block_q8_0x8), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q5_0x16_q8_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                       int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_x16(FAM_Q5_0, sizeof(block_q5_0x8), w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q4_kx16_q8k_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                        int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_kx16(KQ_Q4_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static void gemm_q6_kx16_q8k_avx512vnni(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes, float *y,
                                        int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols) {
    gemm_kx16(KQ_Q6_K, w, w_row_bytes, x, x_row_bytes, y, ldy, r0, r1, m, n_cols);
}

static uint64_t read_sum_avx512vnni(const uint8_t *const *streams, int n_streams, size_t n) {
    return x86_read_sum(streams, n_streams, n);
}

/* ------------------------------------------- attention on 512-bit vectors (AVX-512F) */

/* e^x for 16 lanes: exp_avx2's range reduction and degree-6 polynomial. */
static inline __m512 exp_avx512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* n values of an F16 or Q8_0 KV row as floats (an F16 tail in scalar). */
static inline void kv_row_to_f32_avx512(int kv_type, const void *row, float *dst, int64_t n) {
    if (kv_type == EK_TYPE_Q8_0) {
        const block_q8_0 *b = row;
        for (int64_t blk = 0; blk < n / QK32; blk++) {
            const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[blk].d));
            for (int r = 0; r < 2; r++) {
                const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b[blk].qs + 16 * r))));
                _mm512_storeu_ps(dst + blk * QK32 + 16 * r, _mm512_mul_ps(d, q));
            }
        }
        return;
    }
    const uint16_t *h = row;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(h[i]);
}

typedef __m512 vf;
#define VF_LANES 16
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vf_exp(vf x) { return exp_avx512(x); }
#define kv_row_to_f32 kv_row_to_f32_avx512
#include "attention_tile_body.h"
#undef kv_row_to_f32
#undef VF_LANES

/* Plain AVX-512F code: the table without VNNI takes these too (below the pop). */
static void attention_f16_avx512(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi,
                                 int64_t n_q, const void *k, const void *v, size_t row_bytes, int64_t head_dim,
                                 float scale, float *scratch) {
    attention_tile(EK_TYPE_F16, q, out, lo, hi, n_q, k, v, row_bytes, head_dim, scale, scratch);
}

static void attention_q8_0_avx512(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi,
                                  int64_t n_q, const void *k, const void *v, size_t row_bytes, int64_t head_dim,
                                  float scale, float *scratch) {
    attention_tile(EK_TYPE_Q8_0, q, out, lo, hi, n_q, k, v, row_bytes, head_dim, scale, scratch);
}

void ek_fill_kernels_avx512_vnni(ek_kernels *k) {
    ek_fill_kernels_avx2(k); /* the f32 building blocks; every matmul slot is replaced below */
    k->isa = EK_ISA_AVX512;
    k->quantize_q8_32 = quantize_q8_32_avx512vnni;
    k->quantize_q8_k = quantize_q8_k_avx512vnni;
    k->gemm[EK_TYPE_F32] = gemm_f32_avx512vnni;
    k->gemm[EK_TYPE_F16] = gemm_f16_avx512vnni;
    k->gemm[EK_TYPE_BF16] = gemm_bf16_avx512vnni;
    k->gemm[EK_TYPE_Q4_0] = gemm_q4_0_q8_avx512vnni;
    k->gemm[EK_TYPE_Q4_1] = gemm_q4_1_q8_avx512vnni;
    k->gemm[EK_TYPE_Q5_0] = gemm_q5_0_q8_avx512vnni;
    k->gemm[EK_TYPE_Q8_0] = gemm_q8_0_q8_avx512vnni;
    k->gemm[EK_TYPE_Q4_K] = gemm_q4_k_q8k_avx512vnni;
    k->gemm[EK_TYPE_Q6_K] = gemm_q6_k_q8k_avx512vnni;
    k->gemm_repacked[EK_TYPE_Q4_0] = gemm_q4_0x16_q8_avx512vnni;
    k->gemm_repacked[EK_TYPE_Q4_1] = gemm_q4_1x16_q8_avx512vnni;
    k->gemm_repacked[EK_TYPE_Q8_0] = gemm_q8_0x16_q8_avx512vnni;
    k->gemm_repacked[EK_TYPE_Q5_0] = gemm_q5_0x16_q8_avx512vnni;
    k->gemm_repacked[EK_TYPE_Q4_K] = gemm_q4_kx16_q8k_avx512vnni;
    k->gemm_repacked[EK_TYPE_Q6_K] = gemm_q6_kx16_q8k_avx512vnni;
    k->read_sum = read_sum_avx512vnni;
    k->attention_f16 = attention_f16_avx512;
    k->attention_q8_0 = attention_q8_0_avx512;
}
#pragma GCC pop_options

void ek_fill_kernels_avx512(ek_kernels *k) {
    ek_fill_kernels_avx2(k);
    k->isa = EK_ISA_AVX512;
    k->attention_f16 = attention_f16_avx512;
    k->attention_q8_0 = attention_q8_0_avx512;
}
#endif
