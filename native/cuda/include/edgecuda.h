/* edgecuda — edgesdk's CUDA kernel layer: the public C API of libedgecuda.so.
 *
 * A sibling of edgekern.h for NVIDIA GPUs (Jetson Orin's integrated sm_87, data-centre
 * sm_90 and others): the same status codes, tensor types and model description
 * (ek_model_desc), so the Python side describes a model once for both engines.
 * Sections: status, devices, GPU weight layouts (host functions, usable without a GPU),
 * single products on the device (for tests), the inference engine.
 *
 * Built by nvcc with cudart linked statically (tools/build_cuda.py): loading the library
 * needs no CUDA installation, and on a machine without a driver ec_device_count() answers
 * 0 with the CUDA error that says why.
 *
 * Trust model as edgekern.h: the caller (edgesdk/_cuda.py and the cuda backend) checks
 * shapes, types and sizes; C reports what only it can see (CUDA errors, allocation).
 */
#ifndef EDGECUDA_H
#define EDGECUDA_H

#include "edgekern.h" /* ek_status, ek_type, ek_model_desc, EK_API */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status */

/* ek_status values, plus EC_ERR_CUDA_BASE + cudaError_t for an error the CUDA runtime
   reported (ec_status_str names it). */
#define EC_ERR_CUDA_BASE 1000
EK_API const char *ec_status_str(int status);

/* Bumped with any change to a declaration below that a binding would misread. */
#define EC_ABI_VERSION 1
EK_API int ec_abi_version(void);
/* sizeof the edgekern.h struct `which` (EK_STRUCT_TENSOR_DESC, EK_STRUCT_MODEL_DESC) as this library
   was compiled, for bindings to compare with the native library's; 0 for another `which`. */
EK_API size_t ec_struct_size(int which);

/* --------------------------------------------------------------- devices */

/* Devices the runtime sees; 0 when there is none or no driver, with the CUDA error (or 0)
   in *cuda_error so that the reason can be shown. */
EK_API int ec_device_count(int *cuda_error);

typedef struct ec_device_props {
    char name[256];
    uint64_t total_bytes;   /* global memory */
    uint64_t free_bytes;    /* cudaMemGetInfo now (creates the context) */
    int32_t cc_major, cc_minor;
    int32_t integrated;     /* shares system RAM with the CPU (Jetson) */
    int32_t multiprocessors;
    int32_t driver_version, runtime_version; /* 12060 = 12.6 */
} ec_device_props;

EK_API int ec_device_props_get(int device, ec_device_props *out);
/* EK_OK when this library has code device `device` can run (its architecture's, or PTX it can
   compile), else the CUDA error (EC_ERR_CUDA_BASE + cudaErrorNoKernelImageForDevice, ...). */
EK_API int ec_device_supported(int device);

/* --------------------------------------------------------- GPU layouts
 *
 * A matrix (n_rows, n_cols) of a GGUF type is stored on the GPU as two arrays, blocks in
 * row-major order (block b of row r is block r * nb + b, nb = n_cols / block size):
 *   q: every block's quant bytes, q_bytes per block (a multiple of 4, 32-bit aligned loads),
 *   h: every block's f16 scales, n_halves per block, after q.
 *     Q4_0  q: qs[16]                            h: d
 *     Q4_1  q: qs[16]                            h: d, m
 *     Q5_0  q: qs[16], qh[4]                     h: d
 *     Q8_0  q: qs[32]                            h: d
 *     Q4_K  q: qs[128], sc[8], m[8] (6-bit scales and mins unpacked to bytes)   h: d, dmin
 *     Q6_K  q: ql[128], qh[64], scales[16]       h: d
 *     F16   32 values per block: q = 64 bytes, no h (plain row-major halves)
 *     F32   32 values per block: q = 128 bytes, no h (plain row-major floats)
 * The quant bytes keep GGUF's order within a block, so a warp reading consecutive blocks
 * reads consecutive memory. Lossless: ec_layout_dequantize gives ek_dequantize's floats
 * bit for bit. F16 and F32 matrices need n_cols % 32 == 0. */
EK_API int64_t ec_layout_bytes(int type, int64_t n_rows, int64_t n_cols); /* 0: unsupported type or shape */
EK_API int ec_layout_from_gguf(int type, const void *src, int64_t n_rows, int64_t n_cols, void *dst);
/* dst (n, n_cols) = rows r0..r0+n of a layout, decoded on the host by the functions the
   kernels decode with. */
EK_API int ec_layout_dequantize(int type, const void *layout, int64_t n_rows, int64_t n_cols, int64_t r0,
                                int64_t n, float *dst);

/* The DP4A path's block dot products (the very functions the kernel calls, with DP4A's
   definition on the host) for y (m, n_rows) = xq @ W^T: W a GPU layout of a quantized type, xq m
   rows of the CPU engine's activation blocks, {float d; float s; int8 qs[32]} for Q4_0, Q4_1,
   Q5_0 and Q8_0 (s = d * sum(qs)), {float d; int8 qs[256]; int16 bsums[16]} for Q4_K and Q6_K. */
EK_API int ec_dot_host(int type, const void *layout, int64_t n_rows, int64_t n_cols, const void *xq, int64_t m,
                       float *y);

/* --------------------------------------------- single products on the device */

/* Paths of a matrix product. */
#define EC_MATMUL_AUTO 0  /* what the engine does: DP4A below EC_MMA_MIN_ROWS rows, MMA from there */
#define EC_MATMUL_DP4A 1  /* activations quantized to 8 bits per block (as the CPU engine), int8 dots */
#define EC_MATMUL_MMA 2   /* weights decoded to f16 tiles, activations f16 (per-row power-of-two scaled),
                             tensor-core products accumulated in f32 */
#define EC_MMA_MIN_ROWS 64

/* y (m, n_rows) = x (m, n_cols) @ W^T on device `device`, everything on the host: W in GGUF
   bytes is converted, uploaded, multiplied and y downloaded. For tests and tools. */
EK_API int ec_matmul_host(int device, int type, const void *gguf_data, int64_t n_rows, int64_t n_cols,
                          const float *x, int64_t m, float *y, int path);

/* ------------------------------------------------------ inference engine */

/* Rows of one pass at most (desc->n_batch): grids are launched with a row per block in y. */
#define EC_MAX_BATCH 4096

/* Bytes the engine allocates on the device for desc (kv_type F16 only, n_seq 1, n_batch <= EC_MAX_BATCH):
   weights in GPU layout, K and V of every layer for n_ctx positions, activations of
   n_batch rows, and the pinned host buffer a pass exchanges (ids, RoPE tables, logits). */
typedef struct ec_model_memory {
    uint64_t weights;      /* matrices in GPU layout and the f32 vectors */
    uint64_t kv_cache;
    uint64_t scratch;      /* device activations, quantized inputs, logits */
    uint64_t host_pinned;  /* page-locked host memory of one pass */
    uint64_t host_staging; /* the largest matrix converted on the host before its upload */
} ec_model_memory;

typedef struct ec_model ec_model;

EK_API int ec_model_memory_needs(const ek_model_desc *desc, ec_model_memory *out);
/* Uploads every weight (converted to the GPU layout on the host, one matrix at a time). With
   EK_WEIGHT_RELEASE_SOURCE in desc->weight_flags, the pages of the file mapping wholly inside
   each uploaded matrix are dropped from the resident set (madvise MADV_DONTNEED), so that on
   integrated memory the weights are held once, by the GPU copy. */
EK_API int ec_model_create(const ek_model_desc *desc, int device, ec_model **out);
EK_API void ec_model_free(ec_model *model);
/* As ek_model_eval: ids[0..n) at positions start.. (start + n <= n_ctx, ids < n_vocab: checked by
   the caller); one synchronisation per call (every layer runs on the device). */
EK_API int ec_model_eval(ec_model *model, const int32_t *ids, int64_t n, int64_t start, float *logits,
                         int all_logits);
/* The KV cache of positions [0, n_past) as ek_model_state_save lays it out for an F16 cache
   (per layer: K rows, then V rows), through host copies. */
EK_API uint64_t ec_model_state_bytes(const ec_model *model, int64_t n_past);
EK_API int ec_model_state_save(const ec_model *model, int64_t n_past, void *dst);
EK_API int ec_model_state_load(ec_model *model, int64_t n_past, const void *src);

#ifdef __cplusplus
}
#endif
#endif /* EDGECUDA_H */
