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
 * The including file defines, before including:
 *   vf, VF_LANES             an f32 vector type and its lane count (a divisor of ATTN_PAD)
 *   vf_zero(), vf_set1(x), vf_load(p), vf_store(p, v), vf_add(a, b), vf_mul(a, b)
 *   vf_fma(a, b, c)          a * b + c
 *   vf_exp(v)                e^v (a value below -87 may give the smallest normal, not 0)
 *   vf_hsum(v)               the sum of the lanes
 *   kv_row_to_f32(kv_type, row, dst, n)   n values of one F16 or Q8_0 KV row as floats
 */
#include <math.h>
#include <string.h>

/* Scratch layout of ek_attention_scratch_floats (ops.c): l (n_q doubles), m (n_q),
   Q (n_q x hdp, scaled), O (n_q x hdp), P (n_q x ATTN_KEY_BLOCK), Kt and Vt (ATTN_KEY_BLOCK x hdp),
   KT (head_dim x ATTN_KEY_BLOCK: Kt transposed), hdp = head_dim rounded up to ATTN_PAD, the
   padding zero so that rows are whole vectors. */
#define ATTN_KEY_VECS (ATTN_KEY_BLOCK / VF_LANES)
static inline __attribute__((always_inline)) void
attention_tile(int kv_type, const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi, int64_t n_q,
               const void *k, const void *v, size_t row_bytes, int64_t head_dim, float scale, float *scratch) {
    const int64_t hd = head_dim, hdp = ek_attn_padded_dim(head_dim), kb_n = ATTN_KEY_BLOCK;
    double *l = (double *)scratch;
    float *m = scratch + 2 * n_q, *Q = m + n_q, *O = Q + n_q * hdp, *P = O + n_q * hdp;
    float *Kt = P + n_q * kb_n, *Vt = Kt + kb_n * hdp, *KT = Vt + kb_n * hdp;
    int64_t kmin = INT64_MAX, kmax = 0;
    for (int64_t i = 0; i < n_q; i++) {
        l[i] = 0.0;
        m[i] = -INFINITY;
        for (int64_t c = 0; c < hd; c++) Q[i * hdp + c] = q[i][c] * scale;
        memset(O + i * hdp, 0, (size_t)hdp * sizeof(float));
        kmin = lo[i] < kmin ? lo[i] : kmin;
        kmax = hi[i] > kmax ? hi[i] : kmax;
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
        for (int64_t j = 0; j < kb_n; j++)
            for (int64_t c = 0; c < hd; c++) KT[c * kb_n + j] = Kt[j * hdp + c];
        /* Scores of 4 queries x the block's keys per pass over KT: a broadcast query value
           times a vector of keys, no horizontal sums (a missing 4th query repeats the first). */
        for (int64_t i0 = 0; i0 < n_q; i0 += 4) {
            const float *qr[4];
            for (int t = 0; t < 4; t++) qr[t] = Q + (i0 + t < n_q ? i0 + t : i0) * hdp;
            vf acc[4][ATTN_KEY_VECS];
            for (int t = 0; t < 4; t++)
                for (int r = 0; r < ATTN_KEY_VECS; r++) acc[t][r] = vf_zero();
            for (int64_t c = 0; c < hd; c++) {
                vf kc[ATTN_KEY_VECS];
                for (int r = 0; r < ATTN_KEY_VECS; r++) kc[r] = vf_load(KT + c * kb_n + r * VF_LANES);
                for (int t = 0; t < 4; t++) {
                    const vf qc = vf_set1(qr[t][c]);
                    for (int r = 0; r < ATTN_KEY_VECS; r++) acc[t][r] = vf_fma(qc, kc[r], acc[t][r]);
                }
            }
            for (int t = 0; t < 4 && i0 + t < n_q; t++)
                for (int r = 0; r < ATTN_KEY_VECS; r++) vf_store(P + (i0 + t) * kb_n + r * VF_LANES, acc[t][r]);
        }
        /* Online softmax and the weighted V rows, per query over its keys [a, b) of the block. */
        for (int64_t i = 0; i < n_q; i++) {
            const int64_t a = lo[i] > k0 ? lo[i] - k0 : 0, b = hi[i] - k0 < nk ? hi[i] - k0 : nk;
            if (a >= b) continue;
            float *p = P + i * kb_n, bmax = -INFINITY;
            for (int64_t j = a; j < b; j++) bmax = p[j] > bmax ? p[j] : bmax;
            const float m_new = bmax > m[i] ? bmax : m[i];
            const float alpha = expf(m[i] - m_new); /* 0 on the first block: m is -inf */
            m[i] = m_new;
            const vf neg_max = vf_set1(-m_new);
            vf sum = vf_zero();
            for (int r = 0; r < ATTN_KEY_VECS; r++) vf_store(p + r * VF_LANES, vf_exp(vf_add(vf_load(p + r * VF_LANES), neg_max)));
            for (int64_t j = 0; j < a; j++) p[j] = 0.0f;
            for (int64_t j = b; j < kb_n; j++) p[j] = 0.0f;
            for (int r = 0; r < ATTN_KEY_VECS; r++) sum = vf_add(sum, vf_load(p + r * VF_LANES));
            l[i] = l[i] * alpha + vf_hsum(sum); /* double across blocks: a long row's small weights count */
            float *o = O + i * hdp;
            for (int64_t c0 = 0; c0 < hdp; c0 += 4 * VF_LANES) {
                const int nv = (int)((hdp - c0) / VF_LANES < 4 ? (hdp - c0) / VF_LANES : 4);
                vf acc[4];
                for (int r = 0; r < nv; r++) acc[r] = vf_mul(vf_load(o + c0 + r * VF_LANES), vf_set1(alpha));
                for (int64_t j = a; j < b; j++) {
                    const vf pj = vf_set1(p[j]);
                    const float *vr = Vt + j * hdp + c0;
                    for (int r = 0; r < nv; r++) acc[r] = vf_fma(pj, vf_load(vr + r * VF_LANES), acc[r]);
                }
                for (int r = 0; r < nv; r++) vf_store(o + c0 + r * VF_LANES, acc[r]);
            }
        }
    }
    for (int64_t i = 0; i < n_q; i++) {
        const float inv = (float)(1.0 / l[i]);
        for (int64_t c = 0; c < hd; c++) out[i][c] = O[i * hdp + c] * inv;
    }
}
#undef ATTN_KEY_VECS
