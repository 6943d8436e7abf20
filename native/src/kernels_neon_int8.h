/* The 8-bit NEON kernels, written once and included twice by kernels_neon.c:
 *   DOT_I8(acc, a, b)   acc += a . b over 16 int8 lanes, spread over the 4 int32 lanes
 *                       (callers only use the lanes' sum); any int8 weight a, |b| <= 127
 *   DOT_I8X2_SMALL(acc, a0, b0, a1, b1)   acc += a0 . b0 + a1 . b1, for |a| <= 16 (4- and 5-bit
 *                       weights), which lets plain NEON keep 4 products per int16 lane
 *   NEON_HAS_SDOT       1 in the dotprod copy (for code shaped differently around SDOT)
 *   NEON_KERNEL(name)   name with the family's suffix (_neon, _neon_dotprod)
 * The second inclusion sits under `#pragma GCC target("arch=armv8.2-a+dotprod")`, so only
 * those copies may contain SDOT. Not a header of its own: it uses kernels_neon.c's helpers,
 * and kernels_neon.c defines the named kernels (gemm_q4_0_q8_neon, ...) on these bodies.
 *
 * Every kernel fills y[i * ldy + r] for r in [r0, r1), i in [0, m) (contract in kernels.h).
 * Work is tiled as (a chunk of weight rows) x (a few activation rows): each decoded weight
 * block is used for every activation row of the tile, and the tile's activation blocks stay
 * in L1 while the chunk's weight rows stream through. Each (i, r) is computed by the same
 * sequence of operations whatever the tile and the split, so threads never change results.
 */
#if !defined(DOT_I8) || !defined(DOT_I8X2_SMALL) || !defined(NEON_HAS_SDOT) || !defined(NEON_KERNEL)
#error "kernels_neon_int8.h is included by kernels_neon.c with DOT_I8, DOT_I8X2_SMALL, NEON_HAS_SDOT, NEON_KERNEL"
#endif

#ifndef KERNELS_NEON_INT8_ONCE
#define KERNELS_NEON_INT8_ONCE
#define EK_NEON_INLINE static inline __attribute__((always_inline))
/* Activation rows per tile: 4 for plain layouts (decoded weight block: 2 registers);
   2 for the 8-row repacked ones (plain NEON keeps 8 accumulator registers per activation row). */
#define ACT_TILE 4
#define ACT_TILE_X8 2
/* Weight rows per chunk: 32 rows of 4096 Q4_0 columns are 72 KiB, an L2-resident stream. */
#define ROW_CHUNK 32
enum { BLOCK32_Q4_0, BLOCK32_Q4_1, BLOCK32_Q5_0, BLOCK32_Q8_0 };
enum { SUPER_Q4_K, SUPER_Q6_K };

/* Activation rows i0..i0+mt of a quantized row set, as block pointers. */
#define ACT_ROW(x, x_row_bytes, i) ((const void *)((const char *)(x) + (i) * (x_row_bytes)))
#endif

/* Dot of a decoded 32-value block with 32 activation int8s, as 4 partial lanes;
   `small` when the weights have at most 5 bits. */
EK_NEON_INLINE int32x4_t NEON_KERNEL(dot_block32)(int8x16x2_t wq, int8x16_t x0, int8x16_t x1, int small) {
    if (small) return DOT_I8X2_SMALL(vdupq_n_s32(0), wq.val[0], x0, wq.val[1], x1);
    return DOT_I8(DOT_I8(vdupq_n_s32(0), wq.val[0], x0), wq.val[1], x1);
}

/* ------------------------------------------- Q4_0, Q4_1, Q5_0, Q8_0 rows
 * y = sum over blocks of dw * dx * sum(qw * qx)  (+ m * s for Q4_1, where s = dx * sum(qx)). */

EK_NEON_INLINE void NEON_KERNEL(block32_tile)(int kind, const uint8_t *w_row, const block_q8_32 *const *x,
                                              float *const *y, int mt, int64_t nb) {
    float32x4_t acc[ACT_TILE];
    float acc_min[ACT_TILE];
    for (int i = 0; i < mt; i++) {
        acc[i] = vdupq_n_f32(0.0f);
        acc_min[i] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        int8x16x2_t q;
        float dw, mw = 0.0f;
        if (kind == BLOCK32_Q4_0) {
            const block_q4_0 *blk = (const block_q4_0 *)w_row + b;
            q = decode_q4_0(blk->qs);
            dw = fp16_to_f32(blk->d);
        } else if (kind == BLOCK32_Q4_1) {
            const block_q4_1 *blk = (const block_q4_1 *)w_row + b;
            q = decode_q4_1(blk->qs);
            dw = fp16_to_f32(blk->d);
            mw = fp16_to_f32(blk->m);
        } else if (kind == BLOCK32_Q5_0) {
            const block_q5_0 *blk = (const block_q5_0 *)w_row + b;
            q = decode_q5_0(blk->qh, blk->qs);
            dw = fp16_to_f32(blk->d);
        } else {
            const block_q8_0 *blk = (const block_q8_0 *)w_row + b;
            q = load_q8_0(blk->qs);
            dw = fp16_to_f32(blk->d);
        }
        for (int i = 0; i < mt; i++) {
            const block_q8_32 *xb = x[i] + b;
            const int32x4_t isum =
                NEON_KERNEL(dot_block32)(q, vld1q_s8(xb->qs), vld1q_s8(xb->qs + 16), kind != BLOCK32_Q8_0);
            acc[i] = vfmaq_n_f32(acc[i], vcvtq_f32_s32(isum), dw * xb->d);
            if (kind == BLOCK32_Q4_1) acc_min[i] += mw * xb->s;
        }
    }
    for (int i = 0; i < mt; i++) *y[i] = vaddvq_f32(acc[i]) + acc_min[i];
}

EK_NEON_INLINE void NEON_KERNEL(gemm_block32)(int kind, const void *w, size_t w_row_bytes, const void *x,
                                              size_t x_row_bytes, float *y, int64_t ldy, int64_t r0, int64_t r1,
                                              int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK32;
    for (int64_t rc = r0; rc < r1; rc += ROW_CHUNK) {
        const int64_t rc_end = rc + ROW_CHUNK < r1 ? rc + ROW_CHUNK : r1;
        for (int64_t i0 = 0; i0 < m; i0 += ACT_TILE) {
            const int mt = m - i0 < ACT_TILE ? (int)(m - i0) : ACT_TILE;
            const block_q8_32 *xs[ACT_TILE];
            for (int i = 0; i < mt; i++) xs[i] = ACT_ROW(x, x_row_bytes, i0 + i);
            for (int64_t r = rc; r < rc_end; r++) {
                const uint8_t *w_row = (const uint8_t *)w + r * w_row_bytes;
                float *ys[ACT_TILE];
                for (int i = 0; i < mt; i++) ys[i] = y + (i0 + i) * ldy + r;
                if (mt == ACT_TILE) NEON_KERNEL(block32_tile)(kind, w_row, xs, ys, ACT_TILE, nb);
                else NEON_KERNEL(block32_tile)(kind, w_row, xs, ys, mt, nb);
            }
        }
    }
}

/* ------------------------------------------------------------------ Q4_K
 * Per super-block: dx * (d * sum_j sc[j] * sum(q * qx over sub-block j)
 *                        - dmin * sum_j mn[j] * sum(qx over sub-block j)),
 * the second sum from the activation's bsums (two per 32-value sub-block). */

EK_NEON_INLINE void NEON_KERNEL(q4_k_tile)(const block_q4_k *w_row, const block_q8_k *const *x, float *const *y,
                                           int mt, int64_t nb) {
    float acc[ACT_TILE];
    for (int i = 0; i < mt; i++) acc[i] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const block_q4_k *blk = w_row + b;
        uint8_t sc[8], mn[8];
        unpack_q4_k_scales(blk->scales, sc, mn);
        const float dw = fp16_to_f32(blk->d), dmin = fp16_to_f32(blk->dmin);
        const uint16x8_t sc16 = vmovl_u8(vld1_u8(sc));
        const int32x4_t sc_lo = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(sc16)));
        const int32x4_t sc_hi = vreinterpretq_s32_u32(vmovl_high_u16(sc16));
        const int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn)));
        /* q[j][h]: sub-block j, values 16h..16h+16 of it (0..15, unsigned) */
        int8x16_t q[8][2];
        for (int c = 0; c < 4; c++) {
            for (int h = 0; h < 2; h++) {
                const uint8x16_t v = vld1q_u8(blk->qs + 32 * c + 16 * h);
                q[2 * c][h] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
                q[2 * c + 1][h] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
            }
        }
        for (int i = 0; i < mt; i++) {
            const block_q8_k *xb = x[i] + b;
            int32x4_t p[8];
            for (int j = 0; j < 8; j++) /* 4-bit weights */
                p[j] = DOT_I8X2_SMALL(vdupq_n_s32(0), q[j][0], vld1q_s8(xb->qs + 32 * j), q[j][1],
                                      vld1q_s8(xb->qs + 32 * j + 16));
            int32x4_t sumi = vmulq_s32(hsum4_s32(p[0], p[1], p[2], p[3]), sc_lo);
            sumi = vmlaq_s32(sumi, hsum4_s32(p[4], p[5], p[6], p[7]), sc_hi);
            /* sub-block sums of qx: adjacent pairs of the 16 bsums */
            const int16x8_t xsum = vpaddq_s16(vld1q_s16(xb->bsums), vld1q_s16(xb->bsums + 8));
            int32x4_t summ = vmull_s16(vget_low_s16(xsum), vget_low_s16(mins));
            summ = vmlal_high_s16(summ, xsum, mins);
            acc[i] += xb->d * (dw * (float)vaddvq_s32(sumi) - dmin * (float)vaddvq_s32(summ));
        }
    }
    for (int i = 0; i < mt; i++) *y[i] = acc[i];
}

/* ------------------------------------------------------------------ Q6_K
 * Per super-block: d * dx * sum over 16 groups g of scales[g] * sum((q - 32) * qx over group g). */

EK_NEON_INLINE void NEON_KERNEL(q6_k_tile)(const block_q6_k *w_row, const block_q8_k *const *x, float *const *y,
                                           int mt, int64_t nb) {
    float acc[ACT_TILE];
    for (int i = 0; i < mt; i++) acc[i] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const block_q6_k *blk = w_row + b;
        int8x16_t q[16]; /* group g: elements 16g..16g+16 */
        decode_q6_k_half(blk->ql, blk->qh, q);
        decode_q6_k_half(blk->ql + 64, blk->qh + 32, q + 8);
        const int8x16_t sc8 = vld1q_s8(blk->scales);
        const int16x8_t sc16_lo = vmovl_s8(vget_low_s8(sc8)), sc16_hi = vmovl_high_s8(sc8);
        const int32x4_t sc[4] = {vmovl_s16(vget_low_s16(sc16_lo)), vmovl_high_s16(sc16_lo),
                                 vmovl_s16(vget_low_s16(sc16_hi)), vmovl_high_s16(sc16_hi)};
        const float dw = fp16_to_f32(blk->d);
        for (int i = 0; i < mt; i++) {
            const block_q8_k *xb = x[i] + b;
            int32x4_t sumi = vdupq_n_s32(0);
            for (int g4 = 0; g4 < 4; g4++) {
                int32x4_t p[4];
                for (int k = 0; k < 4; k++)
                    p[k] = DOT_I8(vdupq_n_s32(0), q[4 * g4 + k], vld1q_s8(xb->qs + 16 * (4 * g4 + k)));
                sumi = vmlaq_s32(sumi, hsum4_s32(p[0], p[1], p[2], p[3]), sc[g4]);
            }
            acc[i] += dw * xb->d * (float)vaddvq_s32(sumi);
        }
    }
    for (int i = 0; i < mt; i++) *y[i] = acc[i];
}

EK_NEON_INLINE void NEON_KERNEL(gemm_super)(int kind, const void *w, size_t w_row_bytes, const void *x,
                                            size_t x_row_bytes, float *y, int64_t ldy, int64_t r0, int64_t r1,
                                            int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK_K;
    for (int64_t rc = r0; rc < r1; rc += ROW_CHUNK) {
        const int64_t rc_end = rc + ROW_CHUNK < r1 ? rc + ROW_CHUNK : r1;
        for (int64_t i0 = 0; i0 < m; i0 += ACT_TILE) {
            const int mt = m - i0 < ACT_TILE ? (int)(m - i0) : ACT_TILE;
            const block_q8_k *xs[ACT_TILE];
            for (int i = 0; i < mt; i++) xs[i] = ACT_ROW(x, x_row_bytes, i0 + i);
            for (int64_t r = rc; r < rc_end; r++) {
                const void *w_row = (const uint8_t *)w + r * w_row_bytes;
                float *ys[ACT_TILE];
                for (int i = 0; i < mt; i++) ys[i] = y + (i0 + i) * ldy + r;
                if (kind == SUPER_Q4_K) NEON_KERNEL(q4_k_tile)(w_row, xs, ys, mt, nb);
                else NEON_KERNEL(q6_k_tile)(w_row, xs, ys, mt, nb);
            }
        }
    }
}

/* ------------------------------------------- 8-row repacked Q4_0, Q4_1, Q8_0
 * One slice holds block b of 8 rows (layout in kernels.h): each 32-byte chunk holds 4 bytes of
 * each row, so a 16-byte vector is "4 bytes of rows 0-3" (or 4-7). Against a 4-byte piece of x
 * broadcast to all 4 lanes, a 4-way dot per 32-bit lane gives one row per lane: SDOT does that
 * in one instruction; plain NEON multiplies into int16 lanes and folds them at the end. No
 * horizontal sums, and the 8 row scales are applied with two vector multiplies.
 *
 * Chunk c of a Q4_0/Q4_1 slice holds bytes 4c..4c+4 of each row: low nibbles are elements
 * 4c..4c+4 (x piece c), high nibbles elements 16+4c.. (x piece 4+c). Chunk c of a Q8_0 slice
 * is elements 4c..4c+4 (x piece c). The chunk loop is outermost, so only the chunk's two weight
 * vectors and each activation row's accumulators are live. */

/* x bytes 4k..4k+4 in every 32-bit lane (LD1R). */
EK_NEON_INLINE int8x16_t NEON_KERNEL(x_piece)(const int8_t *xq, int k) {
    int32_t piece;
    memcpy(&piece, xq + 4 * k, sizeof piece);
    return vreinterpretq_s8_s32(vdupq_n_s32(piece));
}

/* Integer sums of one slice against one activation block, per row: rows 0-3 and 4-7. */
#if NEON_HAS_SDOT
typedef struct { int32x4_t lo, hi; } NEON_KERNEL(x8_sums);
#else
/* int16 lane j of p01 holds products of row j / 4 (0 or 1) with byte j % 4 of each piece;
   a01 = [row 0 bytes 0+1, row 0 bytes 2+3, row 1 ..., row 1 ...] after folding. */
typedef struct { int16x8_t p01, p23, p45, p67; int32x4_t a01, a23, a45, a67; } NEON_KERNEL(x8_sums);
#endif

EK_NEON_INLINE void NEON_KERNEL(x8_start)(NEON_KERNEL(x8_sums) *s) {
#if NEON_HAS_SDOT
    s->lo = s->hi = vdupq_n_s32(0);
#else
    s->p01 = s->p23 = s->p45 = s->p67 = vdupq_n_s16(0);
    s->a01 = s->a23 = s->a45 = s->a67 = vdupq_n_s32(0);
#endif
}

/* s += (4 bytes of rows 0-3 in w03, of rows 4-7 in w47) . (piece in every lane). */
EK_NEON_INLINE void NEON_KERNEL(x8_add)(NEON_KERNEL(x8_sums) *s, int8x16_t w03, int8x16_t w47, int8x16_t piece) {
#if NEON_HAS_SDOT
    s->lo = vdotq_s32(s->lo, w03, piece);
    s->hi = vdotq_s32(s->hi, w47, piece);
#else
    s->p01 = vmlal_s8(s->p01, vget_low_s8(w03), vget_low_s8(piece));
    s->p23 = vmlal_high_s8(s->p23, w03, piece);
    s->p45 = vmlal_s8(s->p45, vget_low_s8(w47), vget_low_s8(piece));
    s->p67 = vmlal_high_s8(s->p67, w47, piece);
#endif
}

/* Plain NEON: move the int16 products into int32 before a lane could overflow. Every 8 pieces
   for 4-bit weights (|8 * 16 * 127| = 16256), every 2 for int8 weights (|2 * 128 * 127|). */
EK_NEON_INLINE void NEON_KERNEL(x8_fold)(NEON_KERNEL(x8_sums) *s) {
#if !NEON_HAS_SDOT
    s->a01 = vpadalq_s16(s->a01, s->p01);
    s->a23 = vpadalq_s16(s->a23, s->p23);
    s->a45 = vpadalq_s16(s->a45, s->p45);
    s->a67 = vpadalq_s16(s->a67, s->p67);
    s->p01 = s->p23 = s->p45 = s->p67 = vdupq_n_s16(0);
#else
    (void)s;
#endif
}

EK_NEON_INLINE int32x4_t NEON_KERNEL(x8_rows03)(const NEON_KERNEL(x8_sums) *s) {
#if NEON_HAS_SDOT
    return s->lo;
#else
    return vpaddq_s32(s->a01, s->a23);
#endif
}

EK_NEON_INLINE int32x4_t NEON_KERNEL(x8_rows47)(const NEON_KERNEL(x8_sums) *s) {
#if NEON_HAS_SDOT
    return s->hi;
#else
    return vpaddq_s32(s->a45, s->a67);
#endif
}

EK_NEON_INLINE void NEON_KERNEL(x8_tile)(int kind, const void *group, const block_q8_32 *const *x,
                                         float out[][EK_REPACK_ROWS], int mt, int64_t nb) {
    float32x4_t acc_lo[ACT_TILE_X8], acc_hi[ACT_TILE_X8];
    for (int i = 0; i < mt; i++) acc_lo[i] = acc_hi[i] = vdupq_n_f32(0.0f);
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const int8x16_t q4_offset = vdupq_n_s8(kind == BLOCK32_Q4_0 ? 8 : 0);
    for (int64_t b = 0; b < nb; b++) {
        const uint16_t *d, *mins = NULL;
        const uint8_t *qs;
        if (kind == BLOCK32_Q4_0) {
            d = ((const block_q4_0x8 *)group + b)->d;
            qs = ((const block_q4_0x8 *)group + b)->qs;
        } else if (kind == BLOCK32_Q4_1) {
            d = ((const block_q4_1x8 *)group + b)->d;
            mins = ((const block_q4_1x8 *)group + b)->m;
            qs = ((const block_q4_1x8 *)group + b)->qs;
        } else {
            d = ((const block_q8_0x8 *)group + b)->d;
            qs = (const uint8_t *)((const block_q8_0x8 *)group + b)->qs;
        }
        NEON_KERNEL(x8_sums) sums[ACT_TILE_X8];
        for (int i = 0; i < mt; i++) NEON_KERNEL(x8_start)(&sums[i]);
        if (kind == BLOCK32_Q8_0) {
            for (int c = 0; c < 8; c++) {
                const int8x16_t w03 = vld1q_s8((const int8_t *)qs + 32 * c);
                const int8x16_t w47 = vld1q_s8((const int8_t *)qs + 32 * c + 16);
                for (int i = 0; i < mt; i++) {
                    NEON_KERNEL(x8_add)(&sums[i], w03, w47, NEON_KERNEL(x_piece)((x[i] + b)->qs, c));
                    if (c % 2 == 1) NEON_KERNEL(x8_fold)(&sums[i]);
                }
            }
        } else {
            for (int c = 0; c < 4; c++) {
                const uint8x16_t v03 = vld1q_u8(qs + 32 * c), v47 = vld1q_u8(qs + 32 * c + 16);
                const int8x16_t lo03 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v03, m4)), q4_offset);
                const int8x16_t lo47 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v47, m4)), q4_offset);
                const int8x16_t hi03 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v03, 4)), q4_offset);
                const int8x16_t hi47 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v47, 4)), q4_offset);
                for (int i = 0; i < mt; i++) {
                    const int8_t *xq = (x[i] + b)->qs;
                    NEON_KERNEL(x8_add)(&sums[i], lo03, lo47, NEON_KERNEL(x_piece)(xq, c));
                    NEON_KERNEL(x8_add)(&sums[i], hi03, hi47, NEON_KERNEL(x_piece)(xq, c + 4));
                }
            }
            for (int i = 0; i < mt; i++) NEON_KERNEL(x8_fold)(&sums[i]);
        }
        const float32x4_t d_lo = fp16x4_to_f32(d), d_hi = fp16x4_to_f32(d + 4);
        for (int i = 0; i < mt; i++) {
            const block_q8_32 *xb = x[i] + b;
            acc_lo[i] = vfmaq_f32(acc_lo[i], vcvtq_f32_s32(NEON_KERNEL(x8_rows03)(&sums[i])), vmulq_n_f32(d_lo, xb->d));
            acc_hi[i] = vfmaq_f32(acc_hi[i], vcvtq_f32_s32(NEON_KERNEL(x8_rows47)(&sums[i])), vmulq_n_f32(d_hi, xb->d));
            if (mins) {
                acc_lo[i] = vfmaq_n_f32(acc_lo[i], fp16x4_to_f32(mins), xb->s);
                acc_hi[i] = vfmaq_n_f32(acc_hi[i], fp16x4_to_f32(mins + 4), xb->s);
            }
        }
    }
    for (int i = 0; i < mt; i++) {
        vst1q_f32(out[i], acc_lo[i]);
        vst1q_f32(out[i] + 4, acc_hi[i]);
    }
}

/* r0 is a multiple of EK_REPACK_ROWS; rows of the last group at or past r1 are padding. */
EK_NEON_INLINE void NEON_KERNEL(gemm_x8)(int kind, const void *w, size_t w_row_bytes, const void *x,
                                         size_t x_row_bytes, float *y, int64_t ldy, int64_t r0, int64_t r1,
                                         int64_t m, int64_t n_cols) {
    const int64_t nb = n_cols / QK32;
    const size_t group_bytes = EK_REPACK_ROWS * w_row_bytes;
    for (int64_t rc = r0; rc < r1; rc += ROW_CHUNK) { /* ROW_CHUNK is a multiple of 8 */
        const int64_t rc_end = rc + ROW_CHUNK < r1 ? rc + ROW_CHUNK : r1;
        for (int64_t i0 = 0; i0 < m; i0 += ACT_TILE_X8) {
            const int mt = m - i0 < ACT_TILE_X8 ? (int)(m - i0) : ACT_TILE_X8;
            const block_q8_32 *xs[ACT_TILE_X8];
            for (int i = 0; i < mt; i++) xs[i] = ACT_ROW(x, x_row_bytes, i0 + i);
            for (int64_t g0 = rc; g0 < rc_end; g0 += EK_REPACK_ROWS) {
                const void *group = (const uint8_t *)w + (size_t)(g0 / EK_REPACK_ROWS) * group_bytes;
                float out[ACT_TILE_X8][EK_REPACK_ROWS];
                if (mt == ACT_TILE_X8) NEON_KERNEL(x8_tile)(kind, group, xs, out, ACT_TILE_X8, nb);
                else NEON_KERNEL(x8_tile)(kind, group, xs, out, mt, nb);
                const int rows = rc_end - g0 < EK_REPACK_ROWS ? (int)(rc_end - g0) : EK_REPACK_ROWS;
                for (int i = 0; i < mt; i++)
                    for (int k = 0; k < rows; k++) y[(i0 + i) * ldy + g0 + k] = out[i][k];
            }
        }
    }
}
