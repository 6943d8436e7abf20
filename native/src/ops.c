/* f32 transformer building blocks: ek_rope (on rope.c's angles), KV-cache rows (f16 / q8_0), and the public
 * entry points of the ops that live in the kernel table (RMSNorm, softmax, gated
 * activations, single-head attention), which run on the active ISA's table. Their
 * scalar references are in kernels_scalar.c, the vector versions in the ISA files.
 */
#include "edgekern.h"
#include "kernels.h" /* block_q8_0 (a q8_0 KV row is Q8_0 blocks) and the fp16 converters */
#include "ops_internal.h"

/* ----------------------------------------------------------------- rope */

void ek_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int64_t pos, float base,
             float freq_scale, const float *freq_factors, int mode) {
    float cosv[512], sinv[512]; /* n_rot <= head_dim <= 1024, checked by the caller */
    const ops_rope_scaling linear = {freq_scale, 0.0f, 0.0f, 0.0f, 1.0f};
    ops_rope_angles(pos, n_rot, base, &linear, freq_factors, cosv, sinv);
    ops_rope_apply(x, n_heads, head_dim, n_rot, cosv, sinv, mode);
}

/* ------------------------------------------- through the kernel table */

void ek_rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps) {
    ek_kernels_active()->rmsnorm(x, w, y, n, eps);
}

void ek_softmax(float *x, int64_t n) { ek_kernels_active()->softmax(x, n); }

void ek_silu_mul(const float *gate, const float *up, float *out, int64_t n) {
    ek_kernels_active()->silu_mul(gate, up, out, n);
}

void ek_gelu_mul(const float *gate, const float *up, float *out, int64_t n) {
    ek_kernels_active()->gelu_mul(gate, up, out, n);
}

/* attention_tile_body.h's layout: l (nqp doubles), m, m_prev, block_sum (nqp each), QT (head_dim x
   nqp), S (ATTN_KEY_BLOCK x nqp), O (n_q x hdp), Kt and Vt (ATTN_KEY_BLOCK x hdp). */
int64_t ek_attention_scratch_floats(int64_t n_q, int64_t head_dim) {
    const int64_t hdp = ek_attn_padded_dim(head_dim), nqp = ek_attn_padded_queries(n_q);
    return nqp * (5 + head_dim + ATTN_KEY_BLOCK) + n_q * hdp + 2 * ATTN_KEY_BLOCK * hdp;
}

void ek_attention(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi, int64_t n_q,
                  const void *k, const void *v, int kv_type, size_t row_bytes, int64_t head_dim, float scale,
                  float *scratch) {
    const ek_kernels *kt = ek_kernels_active();
    (kv_type == EK_TYPE_Q8_0 ? kt->attention_q8_0 : kt->attention_f16)(q, out, lo, hi, n_q, k, v, row_bytes, head_dim,
                                                                       scale, scratch);
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
