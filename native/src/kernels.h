/* Internal to native/: GGUF block layouts, our activation formats, and the
 * kernel table that dispatch.c fills once per ISA. Shared by every ISA file
 * (scalar, AVX2, AVX-512, NEON). Nothing here is exported from the library.
 */
#ifndef EK_KERNELS_H
#define EK_KERNELS_H

#include "edgekern.h"

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------ GGUF blocks, exact layout */

#define QK32 32   /* elements per block of Q4_0, Q4_1, Q5_0, Q8_0 */
#define QK_K 256  /* elements per super-block of Q4_K, Q6_K */

/* Q4_0: w = d * (q - 8), q in 0..15.
   Byte j holds q[j] in its low nibble and q[j + 16] in its high nibble. */
typedef struct { uint16_t d; uint8_t qs[16]; } block_q4_0;

/* Q4_1: w = d * q + m, q in 0..15, nibbles as Q4_0. */
typedef struct { uint16_t d, m; uint8_t qs[16]; } block_q4_1;

/* Q5_0: w = d * (q - 16), q in 0..31. Low 4 bits as Q4_0; bit 4 of q[j] is
   bit j of the little-endian 32-bit qh. */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0;

/* Q8_0: w = d * q, q in -128..127. */
typedef struct { uint16_t d; int8_t qs[32]; } block_q8_0;

/* Q4_K: 256 weights in 8 sub-blocks of 32; w = d * sc[j] * q - dmin * m[j],
   q in 0..15, (sc, m) 6-bit each, packed in `scales` (see ek_q4_k_scale_min).
   qs: 4 chunks of 32 bytes; chunk c holds sub-block 2c in low nibbles and
   sub-block 2c+1 in high nibbles. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } block_q4_k;

/* Q6_K: 256 weights in 16 sub-blocks of 16; w = d * scales[k] * (q - 32),
   q in 0..63 = 4 low bits from ql, 2 high bits from qh. Two halves of 128:
   half h uses ql[64h..64h+64), qh[32h..32h+32), scales[8h..8h+8); within a half,
   element l + 32 * s (l < 32, s < 4) takes ql[l + 32 * (s & 1)] (low nibble
   for s < 2, high for s >= 2) and bits 2s..2s+1 of qh[l]. */
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } block_q6_k;

_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");
_Static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");
_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(block_q4_k) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(block_q6_k) == 210, "Q6_K block is 210 bytes");

/* --------------------------------------------- activation (x) block formats
 *
 * The matmul quantizes each activation row once to 8 bits, in blocks that line
 * up with the weight's blocks, so the inner loop is an integer dot product.
 *
 * q8_32 (for Q4_0, Q4_1, Q5_0, Q8_0 weights): 32 values, x ~= d * qs,
 *   d = max|x| / 127, and s = d * sum(qs), which folds the weight's offset
 *   (Q4_0's -8, Q5_0's -16) or min (Q4_1's m) into one multiply per block.
 * q8_k (for Q4_K, Q6_K weights): 256 values, x ~= d * qs, and bsums[k] the
 *   integer sum of qs[16k..16k+16), for the sub-block mins/offsets.
 * F32, F16 and BF16 weights take the activation row as f32, unquantized.
 */
typedef struct { float d; float s; int8_t qs[32]; } block_q8_32;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } block_q8_k;

_Static_assert(sizeof(block_q8_32) == 40, "q8_32 block is 40 bytes");
_Static_assert(sizeof(block_q8_k) == 292, "q8_k block is 292 bytes");

/* How an activation row is laid out for a weight type. */
typedef enum { EK_ACT_F32 = 0, EK_ACT_Q8_32 = 1, EK_ACT_Q8_K = 2 } ek_act_format;

/* ----------------------------------------------------- repacked weights
 *
 * Repacked layouts interleave EK_REPACK_ROWS consecutive rows block by block,
 * so one 256-bit vector holds 4 bytes of each of 8 rows and a dot product
 * with a broadcast 4-byte piece of x accumulates one row per 32-bit lane: no
 * horizontal sums, scales of 8 rows in one load, and each decoded weight
 * vector reused for several activation rows. Rows past n_rows in the last
 * group are zero blocks. A group is nblocks "slices"; slice b holds block b of
 * each of the group's 8 rows: the f16 fields as arrays of 8, then the quant
 * bytes with byte j of row r at qs[(j / 4) * 32 + 4 * r + j % 4].
 *   q4_0x8 slice: d[8], qs[128]          (144 bytes = 8 Q4_0 blocks)
 *   q4_1x8 slice: d[8], m[8], qs[128]    (160 bytes = 8 Q4_1 blocks)
 *   q8_0x8 slice: d[8], qs[256]          (272 bytes = 8 Q8_0 blocks)
 *   q5_0x8 slice: d[8], qh[32], qs[128]  (176 bytes = 8 Q5_0 blocks); qh holds row r's
 *     32 fifth bits as a 32-bit word at qh[4r], bit-permuted so that byte i, bit k is
 *     the fifth bit of the element whose low nibble is in byte i of qs vector k's
 *     lane (k < 4: element 4k + i, low nibbles; k >= 4: element 16 + 4(k - 4) + i):
 *     one shift and mask gives each vector's 0x10s.
 *   q4_kx8 slice: d[8], dmin[8], sc[64], m[64], qs[1024]  (1184 bytes, 8 Q4_K blocks are
 *     1152): the 6-bit scales and mins unpacked to bytes, sub-block j of row r at
 *     [ek_repack_pair_index(r, j)] (pairs of sub-blocks side by side per row, so one
 *     zero-extension gives the int16 pairs a madd wants); qs: the 128 GGUF bytes.
 *   q6_kx8 slice: d[8], sc[128], q[1536]  (1680 bytes = 8 Q6_K blocks): scales at
 *     [ek_repack_pair_index(r, k)]; q holds ql's 32 and qh's 16 interleaved 32-byte
 *     vectors in the order the kernel reads them (ek_q6_kx8_index), so a GEMV
 *     streams each slice front to back.
 * Nothing the GGUF blocks hold is lost: ek_unpack_row inverts exactly (Q4_K's
 * 12 scale bytes are 16 six-bit fields, packed back bit for bit). Rows of a
 * group are row_stride = slice bytes * blocks per row / 8 apart on average; the
 * kernels address group g at w + g * EK_REPACK_ROWS * row_stride. */
#define EK_REPACK_ROWS 8
typedef struct { uint16_t d[8]; uint8_t qs[128]; } block_q4_0x8;
typedef struct { uint16_t d[8]; uint16_t m[8]; uint8_t qs[128]; } block_q4_1x8;
typedef struct { uint16_t d[8]; int8_t qs[256]; } block_q8_0x8;
typedef struct { uint16_t d[8]; uint8_t qh[32]; uint8_t qs[128]; } block_q5_0x8;
typedef struct { uint16_t d[8], dmin[8]; uint8_t sc[64]; uint8_t m[64]; uint8_t qs[1024]; } block_q4_kx8;
typedef struct { uint16_t d[8]; int8_t sc[128]; uint8_t q[1536]; } block_q6_kx8;

_Static_assert(sizeof(block_q5_0x8) == 176, "q5_0x8 slice is 176 bytes");
_Static_assert(sizeof(block_q4_kx8) == 1184, "q4_kx8 slice is 1184 bytes");
_Static_assert(sizeof(block_q6_kx8) == 1680, "q6_kx8 slice is 1680 bytes");

static inline size_t ek_repack_index(int row, int byte) { return (size_t)(byte / 4) * 32 + 4 * (size_t)row + byte % 4; }
/* Q6_K slice: byte j of row r's ql (is_qh 0) or qh (is_qh 1) in q. Vectors come in
   16 triples n = 8h + p (half h, 4-byte piece p): ql piece p, ql piece 8 + p of half
   h, then qh piece p of half h, i.e. everything elements 4p.. of the half need. */
static inline size_t ek_q6_kx8_index(int row, int byte, int is_qh) {
    const int v = byte / 4;
    const int n = is_qh ? v : 8 * (v / 16) + v % 8, which = is_qh ? 2 : (v % 16) / 8;
    return (size_t)(96 * n + 32 * which + 4 * row + byte % 4);
}
/* Per-sub-block bytes (K-quant scales, mins) of 8 rows: sub-blocks 2p and 2p + 1 of row r side by side. */
static inline size_t ek_repack_pair_index(int row, int sub) { return (size_t)(sub / 2) * 16 + 2 * (size_t)row + sub % 2; }

/* --------------------------------------------------------- kernel table */

/* y[i * ldy + r] = dot(W row r, activation row i) for r in [r0, r1), i in [0, m).
   w: row 0 of the weight (plain layout: row r at w + r * w_row_bytes; repacked:
   group g at w + g * EK_REPACK_ROWS * w_row_bytes with w_row_bytes the repacked
   row stride, r0 a multiple of EK_REPACK_ROWS).
   x: m activation rows in the weight's activation format, x_row_bytes apart.
   The result of each (i, r) must not depend on r0, r1 or m (the thread split). */
typedef void (*ek_gemm_fn)(const void *w, size_t w_row_bytes, const void *x, size_t x_row_bytes,
                           float *y, int64_t ldy, int64_t r0, int64_t r1, int64_t m, int64_t n_cols);

/* Quantize n floats (a multiple of the block size) to the activation format. */
typedef void (*ek_quantize_act_fn)(const float *x, void *xq, int64_t n);

#define EK_TYPE_SLOTS 31 /* ek_type ids are below this */

/* The f32 building blocks, with edgekern.h's contracts (ek_rmsnorm, ek_silu_mul and
   ek_gelu_mul, ek_softmax, ek_attention) for any n: tails are the kernel's business. */
typedef void (*ek_rmsnorm_fn)(const float *x, const float *w, float *y, int64_t n, float eps);
typedef void (*ek_gated_act_fn)(const float *gate, const float *up, float *out, int64_t n);
typedef void (*ek_softmax_fn)(float *x, int64_t n);
/* ek_attention for one KV row type: F16 rows take any head_dim, Q8_0 rows a multiple of 32. */
typedef void (*ek_attention_fn)(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi,
                                int64_t n_q, const void *k, const void *v, size_t row_bytes, int64_t head_dim,
                                float scale, float *scratch);

/* The tiled attention kernels (attention_tile_body.h) take keys ATTN_KEY_BLOCK at a time and
   pad head_dim to ATTN_PAD floats (a multiple of every ISA's lane count). */
#define ATTN_KEY_BLOCK 16
#define ATTN_PAD 16
static inline int64_t ek_attn_padded_dim(int64_t head_dim) { return (head_dim + ATTN_PAD - 1) / ATTN_PAD * ATTN_PAD; }
static inline int64_t ek_attn_padded_queries(int64_t n_q) { return (n_q + ATTN_PAD - 1) / ATTN_PAD * ATTN_PAD; }

typedef struct ek_kernels {
    int isa;
    ek_quantize_act_fn quantize_q8_32;
    ek_quantize_act_fn quantize_q8_k;
    ek_gemm_fn gemm[EK_TYPE_SLOTS];          /* plain GGUF layout, by ek_type; NULL: unsupported */
    ek_gemm_fn gemm_repacked[EK_TYPE_SLOTS]; /* EK_REPACK_ROWS-interleaved layout; NULL: no repack */
    /* Sum, as 64-bit words, of n bytes (a multiple of 64) at each of n_streams 64-byte
       aligned pointers, one cache line of every stream in turn: the bandwidth probe. */
    uint64_t (*read_sum)(const uint8_t *const *streams, int n_streams, size_t n);
    ek_rmsnorm_fn rmsnorm;
    ek_gated_act_fn silu_mul, gelu_mul;
    ek_softmax_fn softmax;
    ek_attention_fn attention_f16, attention_q8_0;
    /* y[0..n) = the n halves at h as floats, each exactly ek_fp16_to_fp32's (a NaN's payload
       may come out quieted): ek_quantize_rows widens F16 rows with it, the hot loop of
       quantizing an F16 model. */
    void (*f16_to_f32)(const uint16_t *h, float *y, int64_t n);
} ek_kernels;

/* The table of the active ISA, or of a given one (NULL when not compiled/available). */
const ek_kernels *ek_kernels_active(void);
const ek_kernels *ek_kernels_for(int isa);

/* Each ISA file fills its table (dispatch.c calls these once). */
void ek_fill_kernels_scalar(ek_kernels *k);
void ek_fill_kernels_avx2(ek_kernels *k);
void ek_fill_kernels_avx512(ek_kernels *k);
void ek_fill_kernels_avx512_vnni(ek_kernels *k);
void ek_fill_kernels_neon(ek_kernels *k);
void ek_fill_kernels_neon_dotprod(ek_kernels *k);

/* ------------------------------------------------ shared scalar helpers */

float ek_fp16_to_fp32(uint16_t h);
uint16_t ek_fp32_to_fp16(float f);
float ek_bf16_to_fp32(uint16_t h);

/* (scale, min) of sub-block j (0..7) of a Q4_K block. */
static inline void ek_q4_k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

ek_act_format ek_act_format_for(int type);
size_t ek_act_row_bytes(int type, int64_t n_cols); /* bytes of one quantized activation row */

/* Scalar activation quantizers (the reference the SIMD ones must match). */
void ek_quantize_q8_32_scalar(const float *x, void *xq, int64_t n);
void ek_quantize_q8_k_scalar(const float *x, void *xq, int64_t n);

/* Repack n_rows rows (row_bytes apart) of a Q4_0/Q4_1/Q8_0/Q5_0/Q4_K/Q6_K weight
   into ceil(n_rows / 8) groups of slices at dst; unpack one row back. */
int ek_repack_supported(int type);
size_t ek_repack_slice_bytes(int type); /* bytes of one slice (8 rows x 1 block); 0: no repack */
/* Bytes of the owned copy ek_weight_create(type, n_rows, n_cols, _, flags) makes on the
   active ISA; 0 when the weight stays mapped. */
size_t ek_weight_repacked_bytes(int type, int64_t n_rows, int64_t n_cols, uint32_t flags);

/* ys[p] (m, ws[p] rows) = x (m, n_cols) @ ws[p]^T for p < n_weights <= EK_MATMUL_MAX_PARTS,
   weights of the same n_cols: x is quantized once and all products share one pool run
   (the engine's Q/K/V and gate/up). Weights needing different activation formats are
   multiplied one after another. Each output is bit-identical to ek_matmul's. */
#define EK_MATMUL_MAX_PARTS 3
ek_status ek_matmul_shared_input(const ek_weight *const *ws, float *const *ys, int n_weights, const float *x,
                                 int64_t m, ek_pool *pool);
void ek_repack(int type, const void *src, int64_t n_rows, int64_t n_cols, void *dst);
void ek_unpack_row(int type, const void *packed, int64_t row, int64_t n_cols, void *dst_row);

#endif /* EK_KERNELS_H */
