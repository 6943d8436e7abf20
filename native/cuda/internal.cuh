/* Internal to native/cuda/: the GPU layouts' decoders (host and device), the matrix and op
 * launchers model.cu strings together, and CUDA error plumbing. Nothing here is exported.
 */
#ifndef EC_INTERNAL_CUH
#define EC_INTERNAL_CUH

#include "edgecuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#define EC_CUDA_STATUS(err) (EC_ERR_CUDA_BASE + (int)(err))
/* Return the CUDA error of `call` as a status. */
#define EC_TRY(call)                                                   \
    do {                                                               \
        const cudaError_t ec_err_ = (call);                            \
        if (ec_err_ != cudaSuccess) return EC_CUDA_STATUS(ec_err_);    \
    } while (0)

#define EC_QK 32     /* values every decoder step produces: one block, or one 32-value sub-block */
#define EC_QK_K 256

/* Per-type facts of the GPU layout (edgecuda.h describes it). */
typedef struct ec_layout_info {
    int block_elems; /* values per block (32 for F16/F32: a block is 32 consecutive values) */
    int q_bytes;     /* quant bytes per block, a multiple of 4 */
    int n_halves;    /* f16 scales per block */
} ec_layout_info;

__host__ __device__ inline ec_layout_info ec_layout_of(int type) {
    switch (type) {
    case EK_TYPE_Q4_0: return {32, 16, 1};
    case EK_TYPE_Q4_1: return {32, 16, 2};
    case EK_TYPE_Q5_0: return {32, 20, 1};
    case EK_TYPE_Q8_0: return {32, 32, 1};
    case EK_TYPE_Q4_K: return {256, 144, 2};
    case EK_TYPE_Q6_K: return {256, 208, 1};
    case EK_TYPE_F16: return {32, 64, 0};
    case EK_TYPE_F32: return {32, 128, 0};
    default: return {0, 0, 0};
    }
}

/* Bytes of a GGUF matrix (n_rows, n_cols) of type (formats.cu, from native/src/kernels.h's blocks). */
int64_t ec_gguf_bytes(int type, int64_t n_rows, int64_t n_cols);

/* A matrix on the device in GPU layout. */
typedef struct ec_matrix {
    int type;
    int64_t n_rows, n_cols, nb; /* nb: blocks per row */
    const uint8_t *q;           /* (n_rows * nb, q_bytes) */
    const __half *h;            /* (n_rows * nb, n_halves) */
} ec_matrix;

/* Float arithmetic rounded exactly as the CPU's ek_dequantize does it: no fused multiply-add
   on the device (nvcc contracts a * b + c otherwise); the host build has -ffp-contract=off. */
#ifdef __CUDA_ARCH__
#define EC_MUL(a, b) __fmul_rn((a), (b))
#define EC_ADD(a, b) __fadd_rn((a), (b))
#else
#define EC_MUL(a, b) ((a) * (b))
#define EC_ADD(a, b) ((a) + (b))
#endif

__host__ __device__ inline float ec_h2f(const __half *h, int i) { return __half2float(h[i]); }

/* The 32 values of step `sub` of one block: q and h point at the block's quant bytes and
   scales. Blocks of 32 have one step (sub 0); Q4_K and Q6_K blocks have 8. */
__host__ __device__ inline void ec_decode32(int type, const uint8_t *q, const __half *h, int sub, float *out) {
    switch (type) {
    case EK_TYPE_Q4_0: {
        const float d = ec_h2f(h, 0);
        for (int j = 0; j < 16; j++) {
            out[j] = EC_MUL(d, (float)((q[j] & 0xF) - 8));
            out[j + 16] = EC_MUL(d, (float)((q[j] >> 4) - 8));
        }
        break;
    }
    case EK_TYPE_Q4_1: {
        const float d = ec_h2f(h, 0), m = ec_h2f(h, 1);
        for (int j = 0; j < 16; j++) {
            out[j] = EC_ADD(EC_MUL(d, (float)(q[j] & 0xF)), m);
            out[j + 16] = EC_ADD(EC_MUL(d, (float)(q[j] >> 4)), m);
        }
        break;
    }
    case EK_TYPE_Q5_0: {
        const float d = ec_h2f(h, 0);
        const uint32_t qh = (uint32_t)q[16] | (uint32_t)q[17] << 8 | (uint32_t)q[18] << 16 | (uint32_t)q[19] << 24;
        for (int j = 0; j < 16; j++) {
            const int lo = (q[j] & 0xF) | (int)(((qh >> j) & 1u) << 4);
            const int hi = (q[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            out[j] = EC_MUL(d, (float)(lo - 16));
            out[j + 16] = EC_MUL(d, (float)(hi - 16));
        }
        break;
    }
    case EK_TYPE_Q8_0: {
        const float d = ec_h2f(h, 0);
        for (int j = 0; j < 32; j++) out[j] = EC_MUL(d, (float)(int8_t)q[j]);
        break;
    }
    case EK_TYPE_Q4_K: {
        /* sub-block `sub`: chunk sub / 2 of qs, low nibbles for even sub, high for odd */
        const float d = ec_h2f(h, 0), dmin = ec_h2f(h, 1);
        const float dj = EC_MUL(d, (float)q[128 + sub]), mj = EC_MUL(dmin, (float)q[136 + sub]);
        const uint8_t *qs = q + 32 * (sub / 2);
        const int shift = 4 * (sub & 1);
        for (int l = 0; l < 32; l++) out[l] = EC_ADD(EC_MUL(dj, (float)((qs[l] >> shift) & 0xF)), -mj);
        break;
    }
    case EK_TYPE_Q6_K: {
        /* step sub covers values 128 h + 32 s .. + 32 of the block, h = sub / 4, s = sub % 4 */
        const float d = ec_h2f(h, 0);
        const int hh = sub / 4, s = sub % 4;
        const uint8_t *ql = q + 64 * hh + 32 * (s & 1), *qh = q + 128 + 32 * hh;
        const int8_t *sc = (const int8_t *)(q + 192) + 8 * hh + 2 * s;
        for (int l = 0; l < 32; l++) {
            const int v = (((ql[l] >> (4 * (s >> 1))) & 0xF) | (((qh[l] >> (2 * s)) & 3) << 4)) - 32;
            out[l] = EC_MUL(EC_MUL(d, (float)sc[l / 16]), (float)v);
        }
        break;
    }
    case EK_TYPE_F16: {
        const __half *v = (const __half *)q;
        for (int j = 0; j < 32; j++) out[j] = __half2float(v[j]);
        break;
    }
    case EK_TYPE_F32: memcpy(out, q, 32 * sizeof(float)); break;
    default: break;
    }
}

/* Quant bytes and scales of block `block` (row-major block index) of a layout. */
__host__ __device__ inline const uint8_t *ec_block_q(const uint8_t *q, const ec_layout_info &li, int64_t block) {
    return q + block * li.q_bytes;
}
__host__ __device__ inline const __half *ec_block_h(const __half *h, const ec_layout_info &li, int64_t block) {
    return h + block * li.n_halves;
}

/* Device scratch one matrix product may use: the quantized (DP4A) or f16 (MMA) copy of x. */
typedef struct ec_act_scratch {
    void *xq;        /* quantized activations: rows of q8_32 or q8_k blocks */
    size_t xq_bytes;
    __half *xh;      /* (rows, cols) f16, each row scaled by a power of two */
    float *xscale;   /* (rows) the inverse of that power of two */
    size_t xh_elems;
} ec_act_scratch;

/* Quantized activation blocks, as the CPU engine's (native/src/kernels.h). */
typedef struct { float d; float s; int8_t qs[32]; } ec_block_q8_32;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } ec_block_q8_k;

/* Bytes of m activation rows of n_cols for a weight type's DP4A path (0: f32 input). */
size_t ec_act_bytes(int type, int64_t m, int64_t n_cols);

/* y (m, n_rows), rows ldy apart = x (m, n_cols) @ W^T, on stream. path: EC_MATMUL_*. */
int ec_matmul(const ec_matrix *w, const float *x, int64_t m, float *y, int64_t ldy, ec_act_scratch *s,
              int path, cudaStream_t stream);

/* out (n, n_cols) = rows ids[0..n) of W decoded (device ids). */
int ec_get_rows(const ec_matrix *w, const int32_t *ids, int64_t n, float *out, cudaStream_t stream);

/* ------------------------------------------------------------------ ops (kernels_ops.cu) */

/* y[i] = rmsnorm(x[i]) * w for n rows of dim; y may equal x. */
void ec_rmsnorm_rows(const float *x, const float *w, float *y, int64_t n, int64_t dim, float eps,
                     cudaStream_t stream);
/* y[i, j] += b[j] (n rows of dim); x[j] *= scale (n values); y[j] += x[j]. */
void ec_add_bias_rows(float *y, const float *b, int64_t n, int64_t dim, cudaStream_t stream);
void ec_scale(float *x, float scale, int64_t n, cudaStream_t stream);
void ec_add(float *y, const float *x, int64_t n, cudaStream_t stream);
/* out = act(gate) * up, EK_ACT_* */
void ec_gated_act(int act, const float *gate, const float *up, float *out, int64_t n, cudaStream_t stream);
/* Rotate q (n, n_head, hd) and k (n, n_head_kv, hd) by row i's cos|sin (table (n, n_rot):
   n_rot/2 cos then n_rot/2 sin), then store k and v rows as f16 at positions pos[i] of one
   layer's caches (n_ctx, kv_dim). */
void ec_rope_store(float *q, float *k, const float *v, const float *table, const int32_t *pos, int64_t n,
                   int n_head, int n_head_kv, int hd, int n_rot, int mode, __half *k_cache, __half *v_cache,
                   cudaStream_t stream);
/* att (n, n_head, hd): row i attends to positions lo_i..pos[i] of the caches, lo_i = pos[i] - n_swa + 1
   (0 when n_swa is 0 or that is negative); hd a multiple of 32 up to EC_MAX_HEAD_DIM. */
#define EC_MAX_HEAD_DIM 256
void ec_attention(const float *q, const __half *k_cache, const __half *v_cache, const int32_t *pos, int64_t n,
                  int n_head, int n_head_kv, int hd, int n_swa, float scale, float *att, cudaStream_t stream);

#endif /* EC_INTERNAL_CUH */
