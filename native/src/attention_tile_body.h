/* The tiled attention kernel (flash-attention style), written once on a few f32 vector
 * primitives and compiled by each SIMD file: kernels_avx2.c (8 lanes), kernels_avx512.c
 * (16 lanes) and kernels_neon.c (4 lanes). Not a standalone header; the scalar reference
 * it is tested against is attention_*_scalar in kernels_scalar.c.
 *
 * Dao et al. 2022, "FlashAttention": the queries of a tile (all sharing one KV head) walk
 * the keys ATTN_KEY_BLOCK at a time. Each block of K and V rows is decoded to f32 once and
 * used by every query of the tile, no query holds a score row longer than one block, and
 * the softmax is online: per query a running max m, a running sum l and an unnormalised
 * output O; when a block raises m, l and O are scaled by e^(m_old - m_new) first.
 *
 * The queries sit in vector lanes for the scores and the softmax: the tile's queries are
 * transposed once (QT), each score vector is QT's column times a broadcast key value, and
 * the block's max, exponentials and sums run across the queries at once, with no per-block
 * transpose and no horizontal reductions. The weighted V rows have the head dimension in
 * lanes, 4 queries per load of V.
 *
 * The including file defines, before including:
 *   vf, VF_LANES             an f32 vector type and its lane count (a divisor of ATTN_PAD)
 *   vf_zero(), vf_set1(x), vf_load(p), vf_store(p, v), vf_add(a, b), vf_mul(a, b)
 *   vf_fma(a, b, c)          a * b + c
 *   vf_max(a, b)             the lane-wise maximum
 *   vf_exp(v)                e^v (a value below -87 may give the smallest normal, not 0)
 *   kv_row_to_f32(kv_type, row, dst, n)   n values of one F16 or Q8_0 KV row as floats
 */
#include <float.h>
#include <math.h>
#include <string.h>

/* Scratch layout of ek_attention_scratch_floats (ops.c), nqp = n_q rounded up to ATTN_PAD and
   hdp = head_dim rounded up to ATTN_PAD: l (nqp doubles), m, m_prev, block_sum (nqp each),
   QT (head_dim x nqp: the scaled queries transposed, padding queries zero), S (ATTN_KEY_BLOCK x
   nqp: scores, then weights, key-major), O (n_q x hdp), Kt and Vt (ATTN_KEY_BLOCK x hdp). */
/* S[j][i] = value for the keys k0 + j of the block outside query i's range [lo[i], hi[i]). */
static inline void attention_mask_block(float *S, int64_t nqp, int64_t n_q, const int64_t *lo, const int64_t *hi,
                                        int64_t k0, float value) {
    for (int64_t j = 0; j < ATTN_KEY_BLOCK; j++)
        for (int64_t i = 0; i < n_q; i++)
            if (k0 + j < lo[i] || k0 + j >= hi[i]) S[j * nqp + i] = value;
}

#define ATTN_LANE_VECS (ATTN_PAD / VF_LANES) /* vectors per ATTN_PAD floats: every pass is whole */
#define ATTN_SCORE_KEYS 4                    /* keys per pass over QT: 4 x ATTN_LANE_VECS accumulators */
static inline __attribute__((always_inline)) void
attention_tile(int kv_type, const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi, int64_t n_q,
               const void *k, const void *v, size_t row_bytes, int64_t head_dim, float scale, float *scratch) {
    const int64_t hd = head_dim, hdp = ek_attn_padded_dim(head_dim), nqp = ek_attn_padded_queries(n_q);
    const int64_t kb_n = ATTN_KEY_BLOCK;
    double *l = (double *)scratch;
    float *m = scratch + 2 * nqp, *m_prev = m + nqp, *block_sum = m_prev + nqp, *QT = block_sum + nqp;
    float *S = QT + hd * nqp, *O = S + kb_n * nqp, *Kt = O + n_q * hdp, *Vt = Kt + kb_n * hdp;
    int64_t kmin = INT64_MAX, kmax = 0, lo_max = 0, hi_min = INT64_MAX;
    for (int64_t i = 0; i < nqp; i++) {
        l[i] = 0.0;
        m[i] = -FLT_MAX; /* finite: a query with no key yet keeps e^(m_old - m_new) = 1, not NaN */
    }
    for (int64_t c = 0; c < hd; c++)
        for (int64_t i = 0; i < nqp; i++) QT[c * nqp + i] = i < n_q ? q[i][c] * scale : 0.0f;
    for (int64_t i = 0; i < n_q; i++) {
        memset(O + i * hdp, 0, (size_t)hdp * sizeof(float));
        kmin = lo[i] < kmin ? lo[i] : kmin;
        kmax = hi[i] > kmax ? hi[i] : kmax;
        lo_max = lo[i] > lo_max ? lo[i] : lo_max;
        hi_min = hi[i] < hi_min ? hi[i] : hi_min;
    }
    for (int64_t j = 0; j < kb_n; j++) /* the padding columns stay zero */
        memset(Vt + j * hdp + hd, 0, (size_t)(hdp - hd) * sizeof(float));
    /* Blocks start at multiples of the block size: a query's sums then do not depend on the
       ranges of the others in its tile, so the engine's tiling never changes a bit. */
    for (int64_t k0 = kmin / kb_n * kb_n; k0 < kmax; k0 += kb_n) {
        const int64_t nk = kmax - k0 < kb_n ? kmax - k0 : kb_n;
        for (int64_t j = 0; j < nk; j++) {
            kv_row_to_f32(kv_type, (const uint8_t *)k + (size_t)(k0 + j) * row_bytes, Kt + j * hdp, hd);
            kv_row_to_f32(kv_type, (const uint8_t *)v + (size_t)(k0 + j) * row_bytes, Vt + j * hdp, hd);
        }
        for (int64_t j = nk; j < kb_n; j++) memset(Kt + j * hdp, 0, (size_t)hd * sizeof(float));
        /* Scores S[j][i] = sum_c QT[c][i] K[j][c], in order of c for every query as the scalar
           reference sums them: ATTN_SCORE_KEYS keys x ATTN_PAD queries per pass over QT. */
        for (int64_t j0 = 0; j0 < kb_n; j0 += ATTN_SCORE_KEYS)
            for (int64_t i0 = 0; i0 < nqp; i0 += ATTN_PAD) {
                vf acc[ATTN_SCORE_KEYS][ATTN_LANE_VECS];
                for (int t = 0; t < ATTN_SCORE_KEYS; t++)
                    for (int r = 0; r < ATTN_LANE_VECS; r++) acc[t][r] = vf_zero();
                for (int64_t c = 0; c < hd; c++) {
                    vf qc[ATTN_LANE_VECS];
                    for (int r = 0; r < ATTN_LANE_VECS; r++) qc[r] = vf_load(QT + c * nqp + i0 + r * VF_LANES);
                    for (int t = 0; t < ATTN_SCORE_KEYS; t++) {
                        const vf kc = vf_set1(Kt[(j0 + t) * hdp + c]);
                        for (int r = 0; r < ATTN_LANE_VECS; r++) acc[t][r] = vf_fma(qc[r], kc, acc[t][r]);
                    }
                }
                for (int t = 0; t < ATTN_SCORE_KEYS; t++)
                    for (int r = 0; r < ATTN_LANE_VECS; r++)
                        vf_store(S + (j0 + t) * nqp + i0 + r * VF_LANES, acc[t][r]);
            }
        /* A block some query does not see whole (the first and last of a causal tile, a window's
           edge) masks the scores outside each query's keys before the max
           and zeroes their weights after the exponentials; the blocks in between need neither. The
           padding queries' lanes are zero queries, finite and never read. */
        const int partial = k0 < lo_max || k0 + kb_n > hi_min;
        if (partial) attention_mask_block(S, nqp, n_q, lo, hi, k0, -FLT_MAX);
        for (int64_t i0 = 0; i0 < nqp; i0 += VF_LANES) {
            vf bmax = vf_load(S + i0);
            for (int64_t j = 1; j < kb_n; j++) bmax = vf_max(bmax, vf_load(S + j * nqp + i0));
            const vf m_old = vf_load(m + i0), m_new = vf_max(m_old, bmax);
            vf_store(m_prev + i0, m_old), vf_store(m + i0, m_new);
            const vf neg_max = vf_mul(m_new, vf_set1(-1.0f));
            for (int64_t j = 0; j < kb_n; j++)
                vf_store(S + j * nqp + i0, vf_exp(vf_add(vf_load(S + j * nqp + i0), neg_max)));
        }
        if (partial) attention_mask_block(S, nqp, n_q, lo, hi, k0, 0.0f);
        for (int64_t i0 = 0; i0 < nqp; i0 += VF_LANES) {
            vf sum = vf_zero();
            for (int64_t j = 0; j < kb_n; j++) sum = vf_add(sum, vf_load(S + j * nqp + i0));
            vf_store(block_sum + i0, sum);
        }
        for (int64_t i = 0; i < n_q; i++) {
            /* e^0 exactly when the max stays: most blocks of a long row */
            const float alpha = m[i] == m_prev[i] ? 1.0f : expf(m_prev[i] - m[i]);
            l[i] = l[i] * alpha + block_sum[i]; /* double across blocks: a long row's small weights count */
            if (alpha != 1.0f) {
                float *o = O + i * hdp;
                const vf va = vf_set1(alpha);
                for (int64_t c = 0; c < hdp; c += VF_LANES) vf_store(o + c, vf_mul(vf_load(o + c), va));
            }
        }
        /* The weighted V rows, 4 queries per load of a V vector, over the union of their key
           ranges: a zero weight adds exactly nothing (V is finite), so each query's sums are
           those of its own range and independent of its tile mates (a missing 4th query
           repeats the first and is not stored). */
        for (int64_t i0 = 0; i0 < n_q; i0 += 4) {
            int64_t ga = kb_n, gb = 0;
            float *o[4];
            int64_t col[4];
            for (int t = 0; t < 4; t++) {
                const int64_t i = i0 + t < n_q ? i0 + t : i0;
                o[t] = O + i * hdp, col[t] = i;
                const int64_t a = lo[i] > k0 ? lo[i] - k0 : 0, b = hi[i] - k0 < nk ? hi[i] - k0 : nk;
                if (a < b) ga = a < ga ? a : ga, gb = b > gb ? b : gb;
            }
            for (int64_t c0 = 0; c0 < hdp && ga < gb; c0 += ATTN_PAD) {
                vf acc[4][ATTN_LANE_VECS];
                for (int t = 0; t < 4; t++)
                    for (int r = 0; r < ATTN_LANE_VECS; r++) acc[t][r] = vf_load(o[t] + c0 + r * VF_LANES);
                for (int64_t j = ga; j < gb; j++) {
                    vf vr[ATTN_LANE_VECS];
                    for (int r = 0; r < ATTN_LANE_VECS; r++) vr[r] = vf_load(Vt + j * hdp + c0 + r * VF_LANES);
                    for (int t = 0; t < 4; t++) {
                        const vf pj = vf_set1(S[j * nqp + col[t]]);
                        for (int r = 0; r < ATTN_LANE_VECS; r++) acc[t][r] = vf_fma(pj, vr[r], acc[t][r]);
                    }
                }
                for (int t = 0; t < 4 && i0 + t < n_q; t++)
                    for (int r = 0; r < ATTN_LANE_VECS; r++) vf_store(o[t] + c0 + r * VF_LANES, acc[t][r]);
            }
        }
    }
    for (int64_t i = 0; i < n_q; i++) {
        const float inv = (float)(1.0 / l[i]);
        for (int64_t c = 0; c < hd; c++) out[i][c] = O[i * hdp + c] * inv;
    }
}
#undef ATTN_LANE_VECS
#undef ATTN_SCORE_KEYS
