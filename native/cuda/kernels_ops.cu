/* The f32 building blocks on the GPU, with the CPU engine's definitions (edgekern.h):
 * RMSNorm, bias, scale, residual add, SiLU/GELU gating, RoPE with the f16 KV store, attention.
 */
#include "internal.cuh"

__device__ inline float block_sum(float v, float *shared32) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) shared32[threadIdx.x / 32] = v;
    __syncthreads();
    v = threadIdx.x < blockDim.x / 32 ? shared32[threadIdx.x] : 0.0f;
    if (threadIdx.x < 32)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) shared32[0] = v;
    __syncthreads();
    v = shared32[0];
    __syncthreads();
    return v;
}

/* One block per row: y = x / sqrt(mean(x^2) + eps) * w */
__global__ void rmsnorm_kernel(const float *x, const float *w, float *y, int64_t dim, float eps) {
    __shared__ float part[32];
    const float *xr = x + blockIdx.x * dim;
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss, part);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    float *yr = y + blockIdx.x * dim;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) yr[j] = xr[j] * inv * (w ? w[j] : 1.0f);
}

void ec_rmsnorm_rows(const float *x, const float *w, float *y, int64_t n, int64_t dim, float eps, cudaStream_t stream) {
    const int threads = dim >= 1024 ? 256 : (dim >= 256 ? 128 : 64);
    rmsnorm_kernel<<<(unsigned)n, threads, 0, stream>>>(x, w, y, dim, eps);
}

__global__ void add_bias_kernel(float *y, const float *b, int64_t n, int64_t dim) {
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n * dim) y[t] += b[t % dim];
}
__global__ void scale_kernel(float *x, float scale, int64_t n) {
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) x[t] *= scale;
}
__global__ void add_kernel(float *y, const float *x, int64_t n) {
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) y[t] += x[t];
}

static unsigned grid_for(int64_t n) { return (unsigned)((n + 255) / 256); }

void ec_add_bias_rows(float *y, const float *b, int64_t n, int64_t dim, cudaStream_t stream) {
    add_bias_kernel<<<grid_for(n * dim), 256, 0, stream>>>(y, b, n, dim);
}
void ec_scale(float *x, float scale, int64_t n, cudaStream_t stream) {
    scale_kernel<<<grid_for(n), 256, 0, stream>>>(x, scale, n);
}
void ec_add(float *y, const float *x, int64_t n, cudaStream_t stream) {
    add_kernel<<<grid_for(n), 256, 0, stream>>>(y, x, n);
}

/* SiLU(g) = g / (1 + e^-g); GELU's tanh form 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))). */
__global__ void gated_act_kernel(int act, const float *gate, const float *up, float *out, int64_t n) {
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const float g = gate[t];
    const float a = act == EK_ACT_GELU ? 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)))
                                       : g / (1.0f + expf(-g));
    out[t] = up ? a * up[t] : a;
}

void ec_gated_act(int act, const float *gate, const float *up, float *out, int64_t n, cudaStream_t stream) {
    gated_act_kernel<<<grid_for(n), 256, 0, stream>>>(act, gate, up, out, n);
}

/* One block per row; thread t rotates pair t of every head (q heads, then k heads), then the
   row's k and v go to the cache as f16 (round to nearest even, as ek_kv_store). */
__global__ void rope_store_kernel(float *q, float *k, const float *v, const float *table, const int32_t *pos,
                                  int n_head, int n_head_kv, int hd, int n_rot, int mode, __half *k_cache,
                                  __half *v_cache) {
    const int64_t i = blockIdx.x;
    const int half = n_rot / 2, kv_dim = n_head_kv * hd;
    const float *cosv = table + i * n_rot, *sinv = cosv + half;
    for (int t = threadIdx.x; t < (n_head + n_head_kv) * half; t += blockDim.x) {
        const int h = t / half, p = t % half;
        float *vec = h < n_head ? q + (i * n_head + h) * hd : k + (i * n_head_kv + (h - n_head)) * hd;
        const int a = mode == EK_ROPE_NEOX ? p : 2 * p, b = mode == EK_ROPE_NEOX ? p + half : 2 * p + 1;
        const float x0 = vec[a], x1 = vec[b];
        vec[a] = x0 * cosv[p] - x1 * sinv[p];
        vec[b] = x0 * sinv[p] + x1 * cosv[p];
    }
    __syncthreads();
    const int64_t row = (int64_t)pos[i] * kv_dim;
    for (int j = threadIdx.x; j < kv_dim; j += blockDim.x) {
        k_cache[row + j] = __float2half_rn(k[i * kv_dim + j]);
        v_cache[row + j] = __float2half_rn(v[i * kv_dim + j]);
    }
}

void ec_rope_store(float *q, float *k, const float *v, const float *table, const int32_t *pos, int64_t n, int n_head,
                   int n_head_kv, int hd, int n_rot, int mode, __half *k_cache, __half *v_cache, cudaStream_t stream) {
    rope_store_kernel<<<(unsigned)n, 128, 0, stream>>>(q, k, v, table, pos, n_head, n_head_kv, hd, n_rot, mode,
                                                       k_cache, v_cache);
}

#define ATT_WARPS 4

/* One block per (head, row). Each warp takes every ATT_WARPS-th position and keeps an online
   softmax (running max, sum of weights, weighted sum of v with hd / 32 values a lane); the
   warps' partial results are merged at the end. */
template <int PER_LANE> /* hd / 32: the values of q, k, v each lane holds, in registers */
__global__ void attention_kernel(const float *q, const __half *k_cache, const __half *v_cache, const int32_t *pos,
                                 int n_head, int n_head_kv, int n_swa, float scale, float *att) {
    const int hd = 32 * PER_LANE, per_lane = PER_LANE;
    const int h = blockIdx.x;
    const int64_t i = blockIdx.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int kv_dim = n_head_kv * hd, hk = h / (n_head / n_head_kv);
    const int p = pos[i];
    const int lo = n_swa > 0 && p - n_swa + 1 > 0 ? p - n_swa + 1 : 0;
    const float *qv = q + (i * n_head + h) * hd;
    float qr[PER_LANE], acc[PER_LANE];
    for (int t = 0; t < per_lane; t++) qr[t] = qv[lane + 32 * t], acc[t] = 0.0f;
    float mx = -INFINITY, l = 0.0f;
    for (int j = lo + warp; j <= p; j += ATT_WARPS) {
        const __half *kr = k_cache + (int64_t)j * kv_dim + hk * hd, *vr = v_cache + (int64_t)j * kv_dim + hk * hd;
        float s = 0.0f;
        for (int t = 0; t < per_lane; t++) s += qr[t] * __half2float(kr[lane + 32 * t]);
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        s *= scale;
        const float mnew = fmaxf(mx, s), corr = expf(mx - mnew), w = expf(s - mnew);
        l = l * corr + w;
        for (int t = 0; t < per_lane; t++) acc[t] = acc[t] * corr + w * __half2float(vr[lane + 32 * t]);
        mx = mnew;
    }
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
    __shared__ float wacc[ATT_WARPS][EC_MAX_HEAD_DIM];
    if (lane == 0) wm[warp] = mx, wl[warp] = l;
    for (int t = 0; t < per_lane; t++) wacc[warp][lane + 32 * t] = acc[t];
    __syncthreads();
    float gm = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) gm = fmaxf(gm, wm[w]);
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) {
            if (wm[w] == -INFINITY) continue; /* a warp that saw no position */
            const float f = expf(wm[w] - gm);
            num += f * wacc[w][c];
            den += f * wl[w];
        }
        att[(i * n_head + h) * hd + c] = num / den;
    }
}

typedef void (*attention_fn)(const float *, const __half *, const __half *, const int32_t *, int, int, int, float,
                             float *);
static const attention_fn ATTENTION_KERNELS[EC_MAX_HEAD_DIM / 32] = {
    attention_kernel<1>, attention_kernel<2>, attention_kernel<3>, attention_kernel<4>,
    attention_kernel<5>, attention_kernel<6>, attention_kernel<7>, attention_kernel<8>};

void ec_attention(const float *q, const __half *k_cache, const __half *v_cache, const int32_t *pos, int64_t n,
                  int n_head, int n_head_kv, int hd, int n_swa, float scale, float *att, cudaStream_t stream) {
    const dim3 grid((unsigned)n_head, (unsigned)n);
    /* hd is a multiple of 32 up to EC_MAX_HEAD_DIM (the caller checked) */
    ATTENTION_KERNELS[hd / 32 - 1]<<<grid, 32 * ATT_WARPS, 0, stream>>>(q, k_cache, v_cache, pos, n_head, n_head_kv,
                                                                      n_swa, scale, att);
}
