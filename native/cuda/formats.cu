/* GPU weight layouts (edgecuda.h describes them): sizes, the conversion from GGUF blocks, and
 * the host decoder the tests compare with ek_dequantize. Host code only; the decoders are
 * internal.cuh's, the same functions the kernels call.
 */
#include "internal.cuh"

/* native/src/kernels.h is C11: its block structs (GGUF's exact layouts) and Q4_K's scale
   unpacking are read here through C++'s spelling of the static assertion. */
#define _Static_assert static_assert
extern "C" {
#include "kernels.h"
}
#undef _Static_assert

int64_t ec_gguf_bytes(int type, int64_t n_rows, int64_t n_cols) {
    size_t block;
    switch (type) {
    case EK_TYPE_Q4_0: block = sizeof(block_q4_0); break;
    case EK_TYPE_Q4_1: block = sizeof(block_q4_1); break;
    case EK_TYPE_Q5_0: block = sizeof(block_q5_0); break;
    case EK_TYPE_Q8_0: block = sizeof(block_q8_0); break;
    case EK_TYPE_Q4_K: block = sizeof(block_q4_k); break;
    case EK_TYPE_Q6_K: block = sizeof(block_q6_k); break;
    case EK_TYPE_F16: block = 64; break; /* 32 halves: the layout's block */
    case EK_TYPE_F32: block = 128; break;
    default: return 0;
    }
    return n_rows * (n_cols / ec_layout_of(type).block_elems) * (int64_t)block;
}

static int64_t blocks_of(int type, int64_t n_rows, int64_t n_cols) {
    const ec_layout_info li = ec_layout_of(type);
    if (li.block_elems == 0 || n_rows <= 0 || n_cols <= 0 || n_cols % li.block_elems) return 0;
    return n_rows * (n_cols / li.block_elems);
}

int64_t ec_layout_bytes(int type, int64_t n_rows, int64_t n_cols) {
    const ec_layout_info li = ec_layout_of(type);
    return blocks_of(type, n_rows, n_cols) * (li.q_bytes + 2 * li.n_halves);
}

/* Block i of GGUF bytes src into quant bytes q and scales h. */
static void convert_block(int type, const uint8_t *src, int64_t i, uint8_t *q, uint16_t *h) {
    switch (type) {
    case EK_TYPE_Q4_0: {
        const block_q4_0 *b = (const block_q4_0 *)src + i;
        memcpy(q, b->qs, 16);
        h[0] = b->d;
        break;
    }
    case EK_TYPE_Q4_1: {
        const block_q4_1 *b = (const block_q4_1 *)src + i;
        memcpy(q, b->qs, 16);
        h[0] = b->d, h[1] = b->m;
        break;
    }
    case EK_TYPE_Q5_0: {
        const block_q5_0 *b = (const block_q5_0 *)src + i;
        memcpy(q, b->qs, 16);
        memcpy(q + 16, b->qh, 4);
        h[0] = b->d;
        break;
    }
    case EK_TYPE_Q8_0: {
        const block_q8_0 *b = (const block_q8_0 *)src + i;
        memcpy(q, b->qs, 32);
        h[0] = b->d;
        break;
    }
    case EK_TYPE_Q4_K: {
        const block_q4_k *b = (const block_q4_k *)src + i;
        memcpy(q, b->qs, 128);
        for (int j = 0; j < 8; j++) ek_q4_k_scale_min(j, b->scales, &q[128 + j], &q[136 + j]);
        h[0] = b->d, h[1] = b->dmin;
        break;
    }
    case EK_TYPE_Q6_K: {
        const block_q6_k *b = (const block_q6_k *)src + i;
        memcpy(q, b->ql, 128);
        memcpy(q + 128, b->qh, 64);
        memcpy(q + 192, b->scales, 16);
        h[0] = b->d;
        break;
    }
    case EK_TYPE_F16: memcpy(q, src + i * 64, 64); break;
    case EK_TYPE_F32: memcpy(q, src + i * 128, 128); break;
    default: break;
    }
}

int ec_layout_from_gguf(int type, const void *src, int64_t n_rows, int64_t n_cols, void *dst) {
    const int64_t n_blocks = blocks_of(type, n_rows, n_cols);
    if (n_blocks == 0) return ec_layout_of(type).block_elems ? EK_ERR_INVALID_ARG : EK_ERR_UNSUPPORTED;
    const ec_layout_info li = ec_layout_of(type);
    uint8_t *q = (uint8_t *)dst;
    uint16_t *h = (uint16_t *)(q + n_blocks * li.q_bytes);
    for (int64_t i = 0; i < n_blocks; i++)
        convert_block(type, (const uint8_t *)src, i, q + i * li.q_bytes, h + i * li.n_halves);
    return EK_OK;
}

int ec_layout_dequantize(int type, const void *layout, int64_t n_rows, int64_t n_cols, int64_t r0, int64_t n,
                         float *dst) {
    const int64_t n_blocks = blocks_of(type, n_rows, n_cols);
    if (n_blocks == 0) return ec_layout_of(type).block_elems ? EK_ERR_INVALID_ARG : EK_ERR_UNSUPPORTED;
    if (r0 < 0 || n < 0 || r0 + n > n_rows) return EK_ERR_INVALID_ARG;
    const ec_layout_info li = ec_layout_of(type);
    const uint8_t *q = (const uint8_t *)layout;
    const __half *h = (const __half *)(q + n_blocks * li.q_bytes);
    const int64_t nb = n_cols / li.block_elems, steps = li.block_elems / EC_QK;
    for (int64_t r = r0; r < r0 + n; r++)
        for (int64_t b = 0; b < nb; b++)
            for (int s = 0; s < steps; s++)
                ec_decode32(type, ec_block_q(q, li, r * nb + b), ec_block_h(h, li, r * nb + b), s,
                            dst + (r - r0) * n_cols + b * li.block_elems + s * EC_QK);
    return EK_OK;
}
