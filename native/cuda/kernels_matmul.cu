/* Matrix products on the GPU layouts, and the embedding lookup.
 *
 * DP4A path (generation, short batches): each activation row is quantized once to 8 bits per
 * block exactly as the CPU engine quantizes it (q8_32 for Q4_0/Q4_1/Q5_0/Q8_0, q8_k for
 * Q4_K/Q6_K: d = max|x| / 127, q = round-half-even(x * 127 / max|x|)); one warp computes one
 * weight row against up to EC_ROWS_PER_PASS activation rows with __dp4a integer dot products,
 * so each weight byte is read once per EC_ROWS_PER_PASS rows. F16/F32 weights take f32 rows.
 *
 * MMA path (prompts, m >= EC_MMA_MIN_ROWS): a 64 x 64 output tile per block of 4 warps; each
 * 32-wide k step decodes the weight tile to f16 in shared memory (ec_decode32) and multiplies it
 * with the f16 copy of x on the tensor cores (WMMA 16x16x16, f32 accumulators). x rows are
 * scaled by a power of two first so that f16 cannot overflow, and the product is scaled back
 * exactly.
 */
#include "internal.cuh"

#include <mma.h>
#include <stdlib.h>

#define EC_ROWS_PER_PASS 8
#define EC_WARPS_PER_BLOCK 4

__device__ inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ inline int warp_sum_int(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__host__ __device__ inline uint32_t load_u32(const uint8_t *p) { return *(const uint32_t *)p; }

/* c + the dot of a's and b's four signed bytes (DP4A); the host's loop is the definition. */
__host__ __device__ inline int ec_dp4a(uint32_t a, int b, int c) {
#ifdef __CUDA_ARCH__
    return __dp4a((int)a, b, c);
#else
    for (int k = 0; k < 32; k += 8) c += (int)(int8_t)(uint8_t)(a >> k) * (int)(int8_t)(uint8_t)((uint32_t)b >> k);
    return c;
#endif
}

/* Each byte of v (0..63) minus 32, as signed bytes. */
__host__ __device__ inline uint32_t ec_minus32_bytes(uint32_t v) {
#ifdef __CUDA_ARCH__
    return __vsubss4(v, 0x20202020u);
#else
    uint32_t out = 0;
    for (int k = 0; k < 32; k += 8) out |= (uint32_t)(uint8_t)((int)((v >> k) & 0xFFu) - 32) << k;
    return out;
#endif
}

/* ------------------------------------------------------ activation quantization */

static bool q8_k_input(int type) { return type == EK_TYPE_Q4_K || type == EK_TYPE_Q6_K; }
static bool quantized(int type) { return type != EK_TYPE_F16 && type != EK_TYPE_F32; }

size_t ec_act_bytes(int type, int64_t m, int64_t n_cols) {
    if (!quantized(type)) return 0;
    if (q8_k_input(type)) return (size_t)m * (size_t)(n_cols / EC_QK_K) * sizeof(ec_block_q8_k);
    return (size_t)m * (size_t)(n_cols / EC_QK) * sizeof(ec_block_q8_32);
}

/* One warp per 32-value block: n_blocks blocks of x (rows back to back). */
__global__ void quantize_q8_32_kernel(const float *x, ec_block_q8_32 *out, int64_t n_blocks) {
    const int64_t blk = (int64_t)blockIdx.x * EC_WARPS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (blk >= n_blocks) return;
    const float v = x[blk * 32 + lane];
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const int q = __float2int_rn(v * id);
    out[blk].qs[lane] = (int8_t)q;
    const int sum = warp_sum_int(q);
    if (lane == 0) {
        out[blk].d = d;
        out[blk].s = d * (float)sum;
    }
}

/* One warp per 256-value block, 8 values a lane; bsums[k] of values 16k..16k+16 (lanes 2k, 2k+1). */
__global__ void quantize_q8_k_kernel(const float *x, ec_block_q8_k *out, int64_t n_blocks) {
    const int64_t blk = (int64_t)blockIdx.x * EC_WARPS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (blk >= n_blocks) return;
    float v[8], amax = 0.0f;
    for (int j = 0; j < 8; j++) {
        v[j] = x[blk * 256 + lane * 8 + j];
        amax = fmaxf(amax, fabsf(v[j]));
    }
    amax = warp_max(amax);
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 8; j++) {
        const int q = __float2int_rn(v[j] * id);
        out[blk].qs[lane * 8 + j] = (int8_t)q;
        sum += q;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if (lane % 2 == 0) out[blk].bsums[lane / 2] = (int16_t)sum;
    if (lane == 0) out[blk].d = amax / 127.0f;
}

/* ------------------------------------------------------------ DP4A dot products */

/* Dot of one 32-value block of a Q4_0/Q4_1/Q5_0/Q8_0 weight with one q8_32 block. */
template <int T>
__host__ __device__ inline float dot_block32(const uint8_t *q, const __half *h, const ec_block_q8_32 *x) {
    const int *xq = (const int *)x->qs;
    int sumi = 0;
    if (T == EK_TYPE_Q8_0) {
        for (int j = 0; j < 8; j++) sumi = ec_dp4a(load_u32(q + 4 * j), xq[j], sumi);
        return __half2float(h[0]) * x->d * (float)sumi;
    }
    const uint32_t qh = T == EK_TYPE_Q5_0 ? load_u32(q + 16) : 0u;
    for (int j = 0; j < 4; j++) {
        const uint32_t w = load_u32(q + 4 * j);
        uint32_t lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
        if (T == EK_TYPE_Q5_0) { /* fifth bits of values 4j..4j+3 and 16+4j..: bits 4j.. and 16+4j.. of qh */
            const uint32_t bl = (qh >> (4 * j)) & 0xFu, bh = (qh >> (16 + 4 * j)) & 0xFu;
            lo |= ((bl & 1u) << 4) | ((bl & 2u) << 11) | ((bl & 4u) << 18) | ((bl & 8u) << 25);
            hi |= ((bh & 1u) << 4) | ((bh & 2u) << 11) | ((bh & 4u) << 18) | ((bh & 8u) << 25);
        }
        sumi = ec_dp4a(lo, xq[j], sumi);
        sumi = ec_dp4a(hi, xq[4 + j], sumi);
    }
    const float d = __half2float(h[0]);
    if (T == EK_TYPE_Q4_0) return d * (x->d * (float)sumi - 8.0f * x->s);
    if (T == EK_TYPE_Q5_0) return d * (x->d * (float)sumi - 16.0f * x->s);
    return d * x->d * (float)sumi + __half2float(h[1]) * x->s; /* Q4_1: d q + m */
}

/* Dot of 32-value step `sub` (0..7) of a Q4_K/Q6_K block with the same values of a q8_k block. */
template <int T>
__host__ __device__ inline float dot_sub_k(const uint8_t *q, const __half *h, const ec_block_q8_k *x, int sub) {
    const int *xq = (const int *)(x->qs + 32 * sub);
    if (T == EK_TYPE_Q4_K) {
        const uint8_t *qs = q + 32 * (sub / 2);
        const int shift = 4 * (sub & 1);
        int sumi = 0;
        for (int j = 0; j < 8; j++) sumi = ec_dp4a((load_u32(qs + 4 * j) >> shift) & 0x0F0F0F0Fu, xq[j], sumi);
        const int bsum = x->bsums[2 * sub] + x->bsums[2 * sub + 1];
        return x->d * (__half2float(h[0]) * (float)q[128 + sub] * (float)sumi -
                       __half2float(h[1]) * (float)q[136 + sub] * (float)bsum);
    }
    /* Q6_K: values 128 hh + 32 s + l, l < 32; scales of l < 16 and l >= 16 */
    const int hh = sub / 4, s = sub % 4;
    const uint8_t *ql = q + 64 * hh + 32 * (s & 1), *qh = q + 128 + 32 * hh;
    const int8_t *sc = (const int8_t *)(q + 192) + 8 * hh + 2 * s;
    int sum0 = 0, sum1 = 0;
    for (int j = 0; j < 8; j++) {
        const uint32_t lo = (load_u32(ql + 4 * j) >> (4 * (s >> 1))) & 0x0F0F0F0Fu;
        const uint32_t hi = ((load_u32(qh + 4 * j) >> (2 * s)) & 0x03030303u) << 4;
        const uint32_t w = ec_minus32_bytes(lo | hi);
        if (j < 4) sum0 = ec_dp4a(w, xq[j], sum0);
        else sum1 = ec_dp4a(w, xq[j], sum1);
    }
    return x->d * __half2float(h[0]) * (float)(sc[0] * sum0 + sc[1] * sum1);
}

/* y[i * ldy + r] for rows r of W (one warp each) and activation rows i < m <= EC_ROWS_PER_PASS. */
template <int T>
__global__ void gemv_dp4a_kernel(const uint8_t *wq, const __half *wh, const void *xq, int64_t x_row_blocks,
                                 float *y, int64_t ldy, int64_t n_rows, int64_t nb, int m) {
    const int64_t r = (int64_t)blockIdx.x * EC_WARPS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= n_rows) return;
    const ec_layout_info li = ec_layout_of(T);
    float acc[EC_ROWS_PER_PASS] = {0};
    if (T == EK_TYPE_Q4_K || T == EK_TYPE_Q6_K) {
        const ec_block_q8_k *x = (const ec_block_q8_k *)xq;
        for (int64_t item = lane; item < nb * 8; item += 32) { /* 8 steps of 32 values per block */
            const int64_t b = item / 8, blk = r * nb + b;
            const int sub = (int)(item % 8);
            for (int i = 0; i < m; i++)
                acc[i] += dot_sub_k<T>(ec_block_q(wq, li, blk), ec_block_h(wh, li, blk), x + i * x_row_blocks + b, sub);
        }
    } else {
        const ec_block_q8_32 *x = (const ec_block_q8_32 *)xq;
        for (int64_t b = lane; b < nb; b += 32) {
            const int64_t blk = r * nb + b;
            for (int i = 0; i < m; i++)
                acc[i] += dot_block32<T>(ec_block_q(wq, li, blk), ec_block_h(wh, li, blk), x + i * x_row_blocks + b);
        }
    }
    for (int i = 0; i < m; i++) {
        const float v = warp_sum(acc[i]);
        if (lane == 0) y[i * ldy + r] = v;
    }
}

/* F16/F32 weights times f32 rows: lanes stride the columns. */
template <int T>
__global__ void gemv_float_kernel(const uint8_t *wq, const float *x, int64_t n_cols, float *y, int64_t ldy,
                                  int64_t n_rows, int m) {
    const int64_t r = (int64_t)blockIdx.x * EC_WARPS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= n_rows) return;
    float acc[EC_ROWS_PER_PASS] = {0};
    for (int64_t c = lane; c < n_cols; c += 32) {
        const float w = T == EK_TYPE_F16 ? __half2float(((const __half *)wq)[r * n_cols + c])
                                         : ((const float *)wq)[r * n_cols + c];
        for (int i = 0; i < m; i++) acc[i] += w * x[i * n_cols + c];
    }
    for (int i = 0; i < m; i++) {
        const float v = warp_sum(acc[i]);
        if (lane == 0) y[i * ldy + r] = v;
    }
}

template <int T>
static int launch_dp4a(const ec_matrix *w, const float *x, int64_t m, float *y, int64_t ldy, ec_act_scratch *s,
                       cudaStream_t stream) {
    const unsigned grid = (unsigned)((w->n_rows + EC_WARPS_PER_BLOCK - 1) / EC_WARPS_PER_BLOCK);
    if (T == EK_TYPE_F16 || T == EK_TYPE_F32) {
        for (int64_t i0 = 0; i0 < m; i0 += EC_ROWS_PER_PASS) {
            const int rows = (int)(m - i0 < EC_ROWS_PER_PASS ? m - i0 : EC_ROWS_PER_PASS);
            gemv_float_kernel<T><<<grid, 32 * EC_WARPS_PER_BLOCK, 0, stream>>>(w->q, x + i0 * w->n_cols, w->n_cols,
                                                                               y + i0 * ldy, ldy, w->n_rows, rows);
        }
        return EC_CUDA_STATUS(cudaGetLastError());
    }
    const bool k_input = T == EK_TYPE_Q4_K || T == EK_TYPE_Q6_K;
    const int64_t x_blocks = w->n_cols / (k_input ? EC_QK_K : EC_QK), n_xblocks = m * x_blocks;
    const unsigned qgrid = (unsigned)((n_xblocks + EC_WARPS_PER_BLOCK - 1) / EC_WARPS_PER_BLOCK);
    const int threads = 32 * EC_WARPS_PER_BLOCK;
    if (k_input) quantize_q8_k_kernel<<<qgrid, threads, 0, stream>>>(x, (ec_block_q8_k *)s->xq, n_xblocks);
    else quantize_q8_32_kernel<<<qgrid, threads, 0, stream>>>(x, (ec_block_q8_32 *)s->xq, n_xblocks);
    const size_t x_row_bytes = ec_act_bytes(T, 1, w->n_cols);
    for (int64_t i0 = 0; i0 < m; i0 += EC_ROWS_PER_PASS) {
        const int rows = (int)(m - i0 < EC_ROWS_PER_PASS ? m - i0 : EC_ROWS_PER_PASS);
        gemv_dp4a_kernel<T><<<grid, 32 * EC_WARPS_PER_BLOCK, 0, stream>>>(
            w->q, w->h, (const uint8_t *)s->xq + i0 * x_row_bytes, x_blocks, y + i0 * ldy, ldy, w->n_rows, w->nb, rows);
    }
    return EC_CUDA_STATUS(cudaGetLastError());
}

/* ------------------------------------------------------------------- MMA path */

#define MMA_TILE 64
#define MMA_K 32
#define MMA_PAD 8 /* halves of padding per shared row: fewer bank conflicts */

/* Per row of x: the power of two s with max|x| * s < 2^14 (1 when it already is), and x * s in f16. */
__global__ void to_f16_scaled_kernel(const float *x, int64_t n_cols, __half *xh, float *inv_scale) {
    const int64_t i = blockIdx.x;
    float amax = 0.0f;
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x) amax = fmaxf(amax, fabsf(x[i * n_cols + c]));
    __shared__ float part[32];
    amax = warp_max(amax);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = amax;
    __syncthreads();
    if (threadIdx.x < 32) {
        amax = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
        amax = warp_max(amax);
        if (threadIdx.x == 0) part[0] = amax;
    }
    __syncthreads();
    amax = part[0];
    int e = 0;
    if (amax >= 16384.0f) frexpf(amax / 16384.0f, &e); /* 2^e > amax / 2^14 */
    const float scale = ldexpf(1.0f, -e);
    for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x)
        xh[i * n_cols + c] = __float2half_rn(x[i * n_cols + c] * scale);
    if (threadIdx.x == 0) inv_scale[i] = ldexpf(1.0f, e);
}

/* y (m, n_rows) tile (blockIdx.y: 64 rows of x, blockIdx.x: 64 rows of W); 4 warps, 32 x 32 each. */
template <int T>
__global__ void gemm_mma_kernel(const uint8_t *wq, const __half *wh, const __half *xh, const float *inv_scale,
                                float *y, int64_t ldy, int64_t n_rows, int64_t n_cols, int64_t nb, int64_t m) {
    using namespace nvcuda;
    __shared__ __align__(32) __half ws[MMA_TILE][MMA_K + MMA_PAD];
    __shared__ __align__(32) __half xs[MMA_TILE][MMA_K + MMA_PAD];
    __shared__ __align__(32) float out[4][16][16];
    const ec_layout_info li = ec_layout_of(T);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t r0 = (int64_t)blockIdx.x * MMA_TILE, i0 = (int64_t)blockIdx.y * MMA_TILE;
    const int wr = (warp % 2) * 32, wi = (warp / 2) * 32; /* this warp's 32 W rows and 32 x rows */
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) wmma::fill_fragment(acc[a][b], 0.0f);
    const int steps_per_block = li.block_elems / EC_QK;
    for (int64_t k0 = 0; k0 < n_cols; k0 += MMA_K) {
        /* threads 0..63 decode one W row's 32 values each; 64..127 copy one x row's */
        const int t = threadIdx.x;
        if (t < MMA_TILE) {
            float v[EC_QK];
            const int64_t r = r0 + t;
            if (r < n_rows) {
                const int64_t step = k0 / EC_QK, blk = r * nb + step / steps_per_block;
                ec_decode32(T, ec_block_q(wq, li, blk), ec_block_h(wh, li, blk), (int)(step % steps_per_block), v);
            } else {
                for (int j = 0; j < EC_QK; j++) v[j] = 0.0f;
            }
            for (int j = 0; j < EC_QK; j++) ws[t][j] = __float2half_rn(v[j]);
        } else {
            const int64_t i = i0 + (t - MMA_TILE);
            for (int j = 0; j < EC_QK; j++) xs[t - MMA_TILE][j] = i < m ? xh[i * n_cols + k0 + j] : __float2half(0.0f);
        }
        __syncthreads();
        for (int kk = 0; kk < MMA_K; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
            for (int a = 0; a < 2; a++) wmma::load_matrix_sync(fa[a], &xs[wi + 16 * a][kk], MMA_K + MMA_PAD);
            for (int b = 0; b < 2; b++) wmma::load_matrix_sync(fb[b], &ws[wr + 16 * b][kk], MMA_K + MMA_PAD);
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 2; b++) wmma::mma_sync(acc[a][b], fa[a], fb[b], acc[a][b]);
        }
        __syncthreads();
    }
    /* acc[a][b] holds x rows wi + 16a.., W rows wr + 16b..: through shared memory to y */
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            wmma::store_matrix_sync(&out[warp][0][0], acc[a][b], 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                const int64_t i = i0 + wi + 16 * a + e / 16, r = r0 + wr + 16 * b + e % 16;
                if (i < m && r < n_rows) y[i * ldy + r] = out[warp][e / 16][e % 16] * inv_scale[i];
            }
            __syncwarp();
        }
}

template <int T>
static int launch_mma(const ec_matrix *w, const float *x, int64_t m, float *y, int64_t ldy, ec_act_scratch *s,
                      cudaStream_t stream) {
    to_f16_scaled_kernel<<<(unsigned)m, 256, 0, stream>>>(x, w->n_cols, s->xh, s->xscale);
    const dim3 grid((unsigned)((w->n_rows + MMA_TILE - 1) / MMA_TILE), (unsigned)((m + MMA_TILE - 1) / MMA_TILE));
    gemm_mma_kernel<T><<<grid, 128, 0, stream>>>(w->q, w->h, s->xh, s->xscale, y, ldy, w->n_rows, w->n_cols, w->nb, m);
    return EC_CUDA_STATUS(cudaGetLastError());
}

/* ------------------------------------------------------------------ dispatch */

template <int T>
static int matmul_typed(const ec_matrix *w, const float *x, int64_t m, float *y, int64_t ldy, ec_act_scratch *s,
                        int path, cudaStream_t stream) {
    if (path == EC_MATMUL_AUTO) path = m >= EC_MMA_MIN_ROWS ? EC_MATMUL_MMA : EC_MATMUL_DP4A;
    const int st = path == EC_MATMUL_MMA ? launch_mma<T>(w, x, m, y, ldy, s, stream)
                                         : launch_dp4a<T>(w, x, m, y, ldy, s, stream);
    return st == EC_CUDA_STATUS(cudaSuccess) ? EK_OK : st;
}

int ec_matmul(const ec_matrix *w, const float *x, int64_t m, float *y, int64_t ldy, ec_act_scratch *s, int path,
              cudaStream_t stream) {
    switch (w->type) {
    case EK_TYPE_Q4_0: return matmul_typed<EK_TYPE_Q4_0>(w, x, m, y, ldy, s, path, stream);
    case EK_TYPE_Q4_1: return matmul_typed<EK_TYPE_Q4_1>(w, x, m, y, ldy, s, path, stream);
    case EK_TYPE_Q5_0: return matmul_typed<EK_TYPE_Q5_0>(w, x, m, y, ldy, s, path, stream);
    case EK_TYPE_Q8_0: return matmul_typed<EK_TYPE_Q8_0>(w, x, m, y, ldy, s, path, stream);
    case EK_TYPE_Q4_K: return matmul_typed<EK_TYPE_Q4_K>(w, x, m, y, ldy, s, path, stream);
    case EK_TYPE_Q6_K: return matmul_typed<EK_TYPE_Q6_K>(w, x, m, y, ldy, s, path, stream);
    case EK_TYPE_F16: return matmul_typed<EK_TYPE_F16>(w, x, m, y, ldy, s, path, stream);
    case EK_TYPE_F32: return matmul_typed<EK_TYPE_F32>(w, x, m, y, ldy, s, path, stream);
    default: return EK_ERR_UNSUPPORTED;
    }
}

/* --------------------------------------------------------------- embedding rows */

/* One thread per 32-value step of the requested rows. */
__global__ void get_rows_kernel(int type, const uint8_t *wq, const __half *wh, int64_t nb, int64_t n_cols,
                                const int32_t *ids, int64_t n, float *out) {
    const ec_layout_info li = ec_layout_of(type);
    const int64_t steps = n_cols / EC_QK, t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n * steps) return;
    const int64_t i = t / steps, step = t % steps, per_block = li.block_elems / EC_QK;
    const int64_t blk = (int64_t)ids[i] * nb + step / per_block;
    ec_decode32(type, ec_block_q(wq, li, blk), ec_block_h(wh, li, blk), (int)(step % per_block),
                out + i * n_cols + step * EC_QK);
}

int ec_get_rows(const ec_matrix *w, const int32_t *ids, int64_t n, float *out, cudaStream_t stream) {
    const int64_t threads = n * (w->n_cols / EC_QK);
    get_rows_kernel<<<(unsigned)((threads + 127) / 128), 128, 0, stream>>>(w->type, w->q, w->h, w->nb, w->n_cols, ids,
                                                                          n, out);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? EK_OK : EC_CUDA_STATUS(err);
}

/* ------------------------------------------------------ the DP4A dots on the host */

template <int T>
static void dot_rows_host(const uint8_t *q, const __half *h, int64_t n_rows, int64_t nb, const void *xq, int64_t m,
                          float *y) {
    const ec_layout_info li = ec_layout_of(T);
    for (int64_t i = 0; i < m; i++)
        for (int64_t r = 0; r < n_rows; r++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const int64_t blk = r * nb + b;
                if (T == EK_TYPE_Q4_K || T == EK_TYPE_Q6_K)
                    for (int sub = 0; sub < 8; sub++)
                        acc += dot_sub_k<T>(ec_block_q(q, li, blk), ec_block_h(h, li, blk),
                                            (const ec_block_q8_k *)xq + i * nb + b, sub);
                else
                    acc += dot_block32<T>(ec_block_q(q, li, blk), ec_block_h(h, li, blk),
                                          (const ec_block_q8_32 *)xq + i * nb + b);
            }
            y[i * n_rows + r] = acc;
        }
}

int ec_dot_host(int type, const void *layout, int64_t n_rows, int64_t n_cols, const void *xq, int64_t m, float *y) {
    const ec_layout_info li = ec_layout_of(type);
    if (!quantized(type) || ec_layout_bytes(type, n_rows, n_cols) == 0) return EK_ERR_UNSUPPORTED;
    const int64_t nb = n_cols / li.block_elems;
    const uint8_t *q = (const uint8_t *)layout;
    const __half *h = (const __half *)(q + n_rows * nb * li.q_bytes);
    switch (type) {
    case EK_TYPE_Q4_0: dot_rows_host<EK_TYPE_Q4_0>(q, h, n_rows, nb, xq, m, y); break;
    case EK_TYPE_Q4_1: dot_rows_host<EK_TYPE_Q4_1>(q, h, n_rows, nb, xq, m, y); break;
    case EK_TYPE_Q5_0: dot_rows_host<EK_TYPE_Q5_0>(q, h, n_rows, nb, xq, m, y); break;
    case EK_TYPE_Q8_0: dot_rows_host<EK_TYPE_Q8_0>(q, h, n_rows, nb, xq, m, y); break;
    case EK_TYPE_Q4_K: dot_rows_host<EK_TYPE_Q4_K>(q, h, n_rows, nb, xq, m, y); break;
    case EK_TYPE_Q6_K: dot_rows_host<EK_TYPE_Q6_K>(q, h, n_rows, nb, xq, m, y); break;
    default: return EK_ERR_UNSUPPORTED;
    }
    return EK_OK;
}

/* ------------------------------------------------------ one product from the host */

int ec_matmul_host(int device, int type, const void *gguf_data, int64_t n_rows, int64_t n_cols, const float *x,
                   int64_t m, float *y, int path) {
    const int64_t layout_bytes = ec_layout_bytes(type, n_rows, n_cols);
    if (layout_bytes == 0 || m <= 0) return layout_bytes == 0 ? EK_ERR_UNSUPPORTED : EK_ERR_INVALID_ARG;
    EC_TRY(cudaSetDevice(device));
    uint8_t *host = (uint8_t *)malloc((size_t)layout_bytes);
    if (!host) return EK_ERR_NO_MEMORY;
    int st = ec_layout_from_gguf(type, gguf_data, n_rows, n_cols, host);
    const ec_layout_info li = ec_layout_of(type);
    const int64_t nb = n_cols / li.block_elems;
    uint8_t *dw = NULL;
    float *dx = NULL, *dy = NULL;
    ec_act_scratch s = {};
    s.xq_bytes = ec_act_bytes(type, m, n_cols);
    s.xh_elems = (size_t)(m * n_cols);
    cudaError_t err = cudaSuccess;
    if (st == EK_OK) {
        if ((err = cudaMalloc(&dw, (size_t)layout_bytes)) == cudaSuccess &&
            (err = cudaMalloc(&dx, (size_t)(m * n_cols) * sizeof(float))) == cudaSuccess &&
            (err = cudaMalloc(&dy, (size_t)(m * n_rows) * sizeof(float))) == cudaSuccess &&
            (err = cudaMalloc(&s.xq, s.xq_bytes ? s.xq_bytes : 1)) == cudaSuccess &&
            (err = cudaMalloc(&s.xh, s.xh_elems * sizeof(__half))) == cudaSuccess &&
            (err = cudaMalloc(&s.xscale, (size_t)m * sizeof(float))) == cudaSuccess &&
            (err = cudaMemcpy(dw, host, (size_t)layout_bytes, cudaMemcpyHostToDevice)) == cudaSuccess &&
            (err = cudaMemcpy(dx, x, (size_t)(m * n_cols) * sizeof(float), cudaMemcpyHostToDevice)) == cudaSuccess) {
            const ec_matrix w = {type, n_rows, n_cols, nb, dw, (const __half *)(dw + n_rows * nb * li.q_bytes)};
            st = ec_matmul(&w, dx, m, dy, n_rows, &s, path, 0);
            const size_t y_bytes = (size_t)(m * n_rows) * sizeof(float);
            if (st == EK_OK && (err = cudaMemcpy(y, dy, y_bytes, cudaMemcpyDeviceToHost)) != cudaSuccess)
                st = EC_CUDA_STATUS(err);
        } else {
            st = EC_CUDA_STATUS(err);
        }
    }
    cudaFree(dw), cudaFree(dx), cudaFree(dy), cudaFree(s.xq), cudaFree(s.xh), cudaFree(s.xscale);
    free(host);
    return st;
}
