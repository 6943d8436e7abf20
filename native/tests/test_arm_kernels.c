/* The active kernel family (EDGESDK_ISA) against float64 and against the scalar path.
 *
 * Written for the aarch64 run under qemu (scalar, neon, neon_dotprod), but portable C11: it
 * runs on any host and tests whatever family EDGESDK_ISA selects.
 *
 * Weights are random *bytes* of each GGUF block format (every nibble and bit pattern occurs),
 * with the fp16 scale fields drawn from a realistic range, so no quantizer of ours is involved.
 * The float64 expectation dequantizes those bytes with the decoder in this file, written from
 * the format description, independently of native/src. Activations are random floats.
 *
 * Checked for every weight type, odd row counts and block counts, GEMV (m = 1) and GEMM (m > 1,
 * with tails), with and without repack, with 1 to 3 threads:
 *   - ek_dequantize equals the float64 decode (to float rounding);
 *   - ek_vec_dot and ek_matmul agree with float64 within the error that 8-bit activations allow;
 *   - the same calls on the scalar family agree within float summation-order noise;
 *   - ek_matmul gives bit-identical results with 1, 2 and 3 threads;
 *   - no kernel reads past the weights or the activations: both end right before an
 *     inaccessible page (AddressSanitizer does not see NEON loads, a guard page does);
 *   - the family's activation quantizers produce the scalar quantizer's bytes exactly
 *     (round half to even included), and its bandwidth probe sums what the scalar one does;
 *   - the f32 building blocks of its table (RMSNorm, softmax, SiLU and GELU gates, attention
 *     over f16 and q8_0 KV rows) agree with float64 and with the scalar table on lengths that
 *     are not multiples of any vector width, read and write nothing outside their buffers,
 *     and are what the public entry points (ek_rmsnorm, ...) run.
 */
#define _DEFAULT_SOURCE /* mmap, mprotect, sysconf */
#include "arm_check.h"
#include "edgekern.h"
#include "kernels.h" /* internal: the activation quantizers of each family */

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ------------------------------------------------------------ random data */

static uint64_t rng_state;

static uint32_t rng_u32(void) { /* xorshift64*: fixed seed, same stream on every host */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float rng_uniform(float lo, float hi) { return lo + (hi - lo) * (float)(rng_u32() >> 8) / 16777216.0f; }

/* A normal fp16 bit pattern with the given sign choice and exponent in [e_lo, e_hi] (biased). */
static uint16_t rng_half(int allow_negative, int e_lo, int e_hi) {
    const uint32_t sign = allow_negative ? (rng_u32() & 1) : 0;
    const uint32_t exponent = (uint32_t)e_lo + rng_u32() % (uint32_t)(e_hi - e_lo + 1);
    const uint32_t mantissa = rng_u32() & 0x3ff;
    return (uint16_t)((sign << 15) | (exponent << 10) | mantissa);
}

/* fp16 exponent field 15 is 2^0; scales of quantized weights sit around 2^-8 .. 2^-4. */
#define HALF_EXP_SCALE_LO 7
#define HALF_EXP_SCALE_HI 11
/* F16 weights: magnitudes 2^-4 .. 2^1. */
#define HALF_EXP_WEIGHT_LO 11
#define HALF_EXP_WEIGHT_HI 16

static void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static double half_to_double(uint16_t h) {
    const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    double v;
    if (exponent == 0) v = ldexp((double)mantissa, -24);
    else v = ldexp(1.0 + mantissa / 1024.0, exponent - 15); /* inf/nan never generated */
    return sign ? -v : v;
}

/* --------------------------------------- the formats, as GGUF defines them */

typedef struct {
    int type;
    const char *name;
    int block_elems, block_bytes;
} format_desc;

static const format_desc formats[] = {
    {EK_TYPE_F32, "f32", 1, 4},     {EK_TYPE_F16, "f16", 1, 2},     {EK_TYPE_Q4_0, "q4_0", 32, 18},
    {EK_TYPE_Q4_1, "q4_1", 32, 20}, {EK_TYPE_Q5_0, "q5_0", 32, 22}, {EK_TYPE_Q8_0, "q8_0", 32, 34},
    {EK_TYPE_Q4_K, "q4_k", 256, 144}, {EK_TYPE_Q6_K, "q6_k", 256, 210}, {EK_TYPE_BF16, "bf16", 1, 2},
};
#define N_FORMATS ((int)(sizeof formats / sizeof formats[0]))

/* Fill one block of `type` with random content. */
static void random_block(int type, uint8_t *b) {
    switch (type) {
    case EK_TYPE_F32: {
        const float v = rng_uniform(-1.0f, 1.0f);
        memcpy(b, &v, 4);
        break;
    }
    case EK_TYPE_F16: put_u16(b, rng_half(1, HALF_EXP_WEIGHT_LO, HALF_EXP_WEIGHT_HI)); break;
    case EK_TYPE_BF16: { /* the top half of a random float in [-1, 1) */
        const float v = rng_uniform(-1.0f, 1.0f);
        uint32_t u;
        memcpy(&u, &v, 4);
        put_u16(b, (uint16_t)(u >> 16));
        break;
    }
    case EK_TYPE_Q4_0: /* d, qs[16] */
        put_u16(b, rng_half(1, HALF_EXP_SCALE_LO, HALF_EXP_SCALE_HI));
        for (int i = 2; i < 18; i++) b[i] = (uint8_t)rng_u32();
        break;
    case EK_TYPE_Q4_1: /* d, m, qs[16] */
        put_u16(b, rng_half(0, HALF_EXP_SCALE_LO, HALF_EXP_SCALE_HI));
        put_u16(b + 2, rng_half(1, HALF_EXP_SCALE_LO + 2, HALF_EXP_SCALE_HI + 2));
        for (int i = 4; i < 20; i++) b[i] = (uint8_t)rng_u32();
        break;
    case EK_TYPE_Q5_0: /* d, qh[4], qs[16] */
        put_u16(b, rng_half(1, HALF_EXP_SCALE_LO, HALF_EXP_SCALE_HI));
        for (int i = 2; i < 22; i++) b[i] = (uint8_t)rng_u32();
        break;
    case EK_TYPE_Q8_0: /* d, qs[32]: the whole int8 range, -128 included */
        put_u16(b, rng_half(1, HALF_EXP_SCALE_LO - 3, HALF_EXP_SCALE_HI - 3));
        for (int i = 2; i < 34; i++) b[i] = (uint8_t)rng_u32();
        break;
    case EK_TYPE_Q4_K: /* d, dmin, scales[12] (6-bit scales and mins), qs[128] */
        put_u16(b, rng_half(0, HALF_EXP_SCALE_LO - 5, HALF_EXP_SCALE_HI - 5));
        put_u16(b + 2, rng_half(0, HALF_EXP_SCALE_LO - 5, HALF_EXP_SCALE_HI - 5));
        for (int i = 4; i < 144; i++) b[i] = (uint8_t)rng_u32();
        break;
    case EK_TYPE_Q6_K: /* ql[128], qh[64], scales[16] (int8), d */
        for (int i = 0; i < 208; i++) b[i] = (uint8_t)rng_u32();
        put_u16(b + 208, rng_half(1, HALF_EXP_SCALE_LO - 6, HALF_EXP_SCALE_HI - 6));
        break;
    }
}

/* Q4_K's 6-bit scale and min of sub-block j (0..7), packed in 12 bytes:
   bytes 0..3 low 6 bits: scales 0..3; bytes 4..7 low 6 bits: mins 0..3;
   bytes 8..11: low nibble scale j+4, high nibble min j+4, whose top 2 bits are
   the top 2 bits of bytes j (scale) and j+4 (min). */
static void q4_k_scale_min(const uint8_t *s, int j, int *scale, int *min) {
    if (j < 4) {
        *scale = s[j] & 63;
        *min = s[j + 4] & 63;
    } else {
        *scale = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* The block_elems values of one block, in float64. */
static void decode_block_f64(int type, const uint8_t *b, double *out) {
    switch (type) {
    case EK_TYPE_F32: {
        float v;
        memcpy(&v, b, 4);
        out[0] = v;
        break;
    }
    case EK_TYPE_F16: out[0] = half_to_double(get_u16(b)); break;
    case EK_TYPE_BF16: {
        const uint32_t u = (uint32_t)get_u16(b) << 16;
        float v;
        memcpy(&v, &u, 4);
        out[0] = v;
        break;
    }
    case EK_TYPE_Q4_0: { /* w = d * (q - 8); byte j: element j low nibble, element j+16 high */
        const double d = half_to_double(get_u16(b));
        for (int j = 0; j < 16; j++) {
            out[j] = d * ((b[2 + j] & 0x0f) - 8);
            out[j + 16] = d * ((b[2 + j] >> 4) - 8);
        }
        break;
    }
    case EK_TYPE_Q4_1: { /* w = d * q + m */
        const double d = half_to_double(get_u16(b)), m = half_to_double(get_u16(b + 2));
        for (int j = 0; j < 16; j++) {
            out[j] = d * (b[4 + j] & 0x0f) + m;
            out[j + 16] = d * (b[4 + j] >> 4) + m;
        }
        break;
    }
    case EK_TYPE_Q5_0: { /* w = d * (q - 16), bit 4 of element i is bit i of the little-endian qh */
        const double d = half_to_double(get_u16(b));
        const uint32_t qh = (uint32_t)b[2] | ((uint32_t)b[3] << 8) | ((uint32_t)b[4] << 16) | ((uint32_t)b[5] << 24);
        for (int j = 0; j < 16; j++) {
            const int lo = (b[6 + j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
            const int hi = (b[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            out[j] = d * (lo - 16);
            out[j + 16] = d * (hi - 16);
        }
        break;
    }
    case EK_TYPE_Q8_0: {
        const double d = half_to_double(get_u16(b));
        for (int j = 0; j < 32; j++) out[j] = d * (int8_t)b[2 + j];
        break;
    }
    case EK_TYPE_Q4_K: { /* 8 sub-blocks of 32: w = d * scale_j * q - dmin * min_j.
                            Each 32 bytes of qs hold sub-block 2c (low nibbles) and 2c+1 (high). */
        const double d = half_to_double(get_u16(b)), dmin = half_to_double(get_u16(b + 2));
        const uint8_t *scales = b + 4, *qs = b + 16;
        for (int c = 0; c < 4; c++) {
            int sc_lo, mn_lo, sc_hi, mn_hi;
            q4_k_scale_min(scales, 2 * c, &sc_lo, &mn_lo);
            q4_k_scale_min(scales, 2 * c + 1, &sc_hi, &mn_hi);
            for (int l = 0; l < 32; l++) {
                out[64 * c + l] = d * sc_lo * (qs[32 * c + l] & 0x0f) - dmin * mn_lo;
                out[64 * c + 32 + l] = d * sc_hi * (qs[32 * c + l] >> 4) - dmin * mn_hi;
            }
        }
        break;
    }
    case EK_TYPE_Q6_K: { /* w = d * scale[i / 16] * (q - 32), q 6 bits: 4 from ql, 2 from qh.
                            Per half of 128: ql[l] holds elements l (low) and l+64 (high),
                            ql[l+32] elements l+32 and l+96; qh[l] bits 0-1, 2-3, 4-5, 6-7 are
                            the top bits of elements l, l+32, l+64, l+96. */
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *scales = (const int8_t *)(b + 192);
        const double d = half_to_double(get_u16(b + 208));
        for (int half = 0; half < 2; half++) {
            const uint8_t *hl = ql + 64 * half, *hh = qh + 32 * half;
            double *o = out + 128 * half;
            for (int l = 0; l < 32; l++) {
                const int q[4] = {
                    (hl[l] & 0x0f) | ((hh[l] & 3) << 4),
                    (hl[l + 32] & 0x0f) | (((hh[l] >> 2) & 3) << 4),
                    (hl[l] >> 4) | (((hh[l] >> 4) & 3) << 4),
                    (hl[l + 32] >> 4) | (((hh[l] >> 6) & 3) << 4),
                };
                for (int k = 0; k < 4; k++) {
                    const int i = l + 32 * k; /* index within this half */
                    o[i] = d * scales[8 * half + i / 16] * (q[k] - 32);
                }
            }
        }
        break;
    }
    }
}

/* ----------------------------------------------------------- tolerances */

/* Float rounding of a dequantized value: a few float operations on values whose exact result is
   at most max(|d*q|, |m|)-sized terms. */
#define DEQUANT_RTOL 1e-6
/* Quantized weights see activations quantized to 8 bits per block with scale amax/127 (a float):
   each element moves by at most half a step, amax/254. The float32 products and sums of the
   kernel add at most FLOAT_ACCUM_RTOL of sum |w x| (a few hundred roundings of 2^-24 at most).
   The bound gets 1% slack for the float64 arithmetic that computes it. */
#define ACT_HALF_STEP (1.0 / 254.0)
#define FLOAT_ACCUM_RTOL 1e-5
#define ACT_BOUND_SLACK 1.01
/* Float accumulation differences between two paths that see the same quantized activations
   (block sums are exact integers; only the order of float multiply-adds differs). */
#define ISA_VS_SCALAR_RTOL 2e-5
/* Below this, the sums are too small for relative tolerances to mean anything. */
#define ABS_FLOOR 1e-6

/* Bound on |kernel - exact| for a row dot of n values. Float weights (block_elems 1) take x as
   f32: only accumulation error. For K formats the activation block is the 256-value super-block,
   so amax is taken over the wider of 32 and block_elems. */
static double act_quant_error_bound(const double *w, const float *x, int64_t n, int block_elems) {
    double bound = 0.0;
    for (int64_t i = 0; i < n; i++) bound += fabs(w[i] * x[i]) * FLOAT_ACCUM_RTOL;
    if (block_elems > 1) {
        const int64_t span = block_elems > 32 ? block_elems : 32;
        for (int64_t b0 = 0; b0 < n; b0 += span) {
            const int64_t b1 = b0 + span < n ? b0 + span : n;
            double amax = 0.0, wsum = 0.0;
            for (int64_t i = b0; i < b1; i++) {
                if (fabs(x[i]) > amax) amax = fabs(x[i]);
                wsum += fabs(w[i]);
            }
            bound += wsum * amax * ACT_HALF_STEP;
        }
    }
    return bound * ACT_BOUND_SLACK + ABS_FLOOR;
}

static double abs_dot(const double *w, const float *x, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += fabs(w[i] * x[i]);
    return s;
}

/* ------------------------------------------------------------ test data */

/* n bytes that end exactly where an inaccessible page begins, so a read past the end faults.
   n is even for every buffer here, which keeps the fp16 fields aligned. */
static void *guarded_alloc(size_t n) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), span = (n + page - 1) / page * page;
    uint8_t *base = mmap(NULL, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return NULL;
    if (mprotect(base + span, page, PROT_NONE) != 0) {
        munmap(base, span + page);
        return NULL;
    }
    return base + span - n;
}

static void guarded_free(void *p, size_t n) {
    if (!p) return;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), span = (n + page - 1) / page * page;
    munmap((uint8_t *)p + n - span, span + page);
}

typedef struct {
    const format_desc *fmt;
    int64_t n_rows, n_cols;
    uint8_t *bytes;  /* (n_rows, n_cols / block_elems * block_bytes), guarded */
    size_t n_bytes;
    double *w64;     /* (n_rows, n_cols) exact values */
} weight_case;

static void build_weight_case(weight_case *wc, const format_desc *fmt, int64_t n_rows, int64_t n_cols) {
    wc->fmt = fmt;
    wc->n_rows = n_rows;
    wc->n_cols = n_cols;
    const int64_t blocks_per_row = n_cols / fmt->block_elems;
    wc->n_bytes = (size_t)(n_rows * blocks_per_row * fmt->block_bytes);
    wc->bytes = guarded_alloc(wc->n_bytes);
    wc->w64 = malloc((size_t)(n_rows * n_cols) * sizeof(double));
    for (int64_t b = 0; b < n_rows * blocks_per_row; b++) {
        uint8_t *block = wc->bytes + b * fmt->block_bytes;
        random_block(fmt->type, block);
        decode_block_f64(fmt->type, block, wc->w64 + b * fmt->block_elems);
    }
}

/* Integer fields at their largest magnitude (Q4_0 q - 8 = -8, Q5_0 -16, Q8_0 -128, Q4_K q 15
   with scales and mins 63, Q6_K q - 32 = -32 with scale -128), scales kept random: with
   activations all equal, every integer product and partial sum is as large as the format allows. */
static void make_extreme(weight_case *wc) {
    const format_desc *fmt = wc->fmt;
    const int64_t n_blocks = wc->n_rows * (wc->n_cols / fmt->block_elems);
    for (int64_t b = 0; b < n_blocks; b++) {
        uint8_t *p = wc->bytes + b * fmt->block_bytes;
        switch (fmt->type) {
        case EK_TYPE_Q4_0: memset(p + 2, 0x00, 16); break;
        case EK_TYPE_Q4_1: memset(p + 4, 0xff, 16); break;
        case EK_TYPE_Q5_0: memset(p + 2, 0x00, 20); break;
        case EK_TYPE_Q8_0: memset(p + 2, 0x80, 32); break;
        case EK_TYPE_Q4_K: memset(p + 4, 0xff, 140); break;
        case EK_TYPE_Q6_K: memset(p, 0x00, 192); memset(p + 192, 0x80, 16); break;
        default: break; /* float types: nothing to saturate */
        }
        decode_block_f64(fmt->type, p, wc->w64 + b * fmt->block_elems);
    }
}

static void free_weight_case(weight_case *wc) {
    guarded_free(wc->bytes, wc->n_bytes);
    free(wc->w64);
}

/* Guarded; free with guarded_free(x, n * sizeof(float)). */
static float *random_floats(int64_t n) {
    float *x = guarded_alloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = rng_uniform(-1.0f, 1.0f);
    return x;
}

/* ----------------------------------------------------------------- checks */

static void check_dequantize(const weight_case *wc) {
    const int64_t n = wc->n_rows * wc->n_cols;
    float *got = malloc((size_t)n * sizeof(float));
    const ek_status st = ek_dequantize(wc->fmt->type, wc->bytes, got, n);
    CHECK(st == EK_OK, "%s dequantize status %d", wc->fmt->name, st);
    int64_t worst = 0;
    double worst_err = -1.0;
    for (int64_t i = 0; i < n && st == EK_OK; i++) {
        const double err = fabs(got[i] - wc->w64[i]) - DEQUANT_RTOL * (fabs(wc->w64[i]) + 1e-3);
        if (err > worst_err) {
            worst_err = err;
            worst = i;
        }
    }
    CHECK(st != EK_OK || worst_err <= 0.0, "%s dequantize element %lld: got %.9g expected %.9g",
          wc->fmt->name, (long long)worst, got[worst], wc->w64[worst]);
    free(got);
}

static double exact_dot(const double *w, const float *x, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

/* ek_vec_dot on each row: against float64 and against the scalar family. */
static void check_vec_dot(const weight_case *wc, const float *x, int isa) {
    const format_desc *fmt = wc->fmt;
    const int64_t row_bytes = wc->n_cols / fmt->block_elems * fmt->block_bytes;
    for (int64_t r = 0; r < wc->n_rows; r++) {
        const uint8_t *row = wc->bytes + r * row_bytes;
        const double *w = wc->w64 + r * wc->n_cols;
        float got = 0.0f, scalar = 0.0f;
        ek_isa_set(isa);
        const ek_status st = ek_vec_dot(fmt->type, row, x, wc->n_cols, &got);
        ek_isa_set(EK_ISA_SCALAR);
        const ek_status st_scalar = ek_vec_dot(fmt->type, row, x, wc->n_cols, &scalar);
        ek_isa_set(isa);
        CHECK(st == EK_OK && st_scalar == EK_OK, "%s vec_dot status %d / scalar %d", fmt->name, st, st_scalar);
        const double expected = exact_dot(w, x, wc->n_cols);
        const double bound = act_quant_error_bound(w, x, wc->n_cols, fmt->block_elems);
        CHECK(fabs(got - expected) <= bound, "%s vec_dot n=%lld row %lld: got %.7g, float64 %.7g, bound %.3g",
              fmt->name, (long long)wc->n_cols, (long long)r, got, expected, bound);
        const double scalar_tol = ISA_VS_SCALAR_RTOL * abs_dot(w, x, wc->n_cols) + ABS_FLOOR;
        CHECK(fabs(got - scalar) <= scalar_tol, "%s vec_dot n=%lld row %lld: %s %.9g, scalar %.9g",
              fmt->name, (long long)wc->n_cols, (long long)r, ek_isa_name(isa), got, scalar);
    }
}

/* y (m, n_rows) = x (m, n_cols) @ W^T on the active family with `threads` threads. */
/* The repack is lossless: unpacking every row of the interleaved copy gives the GGUF bytes back. */
static void check_repack_round_trip(const weight_case *wc) {
    const int type = wc->fmt->type;
    if (!ek_repack_supported(type)) return;
    const int64_t nb = wc->n_cols / wc->fmt->block_elems, n_groups = (wc->n_rows + EK_REPACK_ROWS - 1) / EK_REPACK_ROWS;
    const size_t row_bytes = (size_t)(nb * wc->fmt->block_bytes);
    uint8_t *packed = malloc((size_t)(n_groups * nb) * ek_repack_slice_bytes(type));
    uint8_t *row = malloc(row_bytes);
    ek_repack(type, wc->bytes, wc->n_rows, wc->n_cols, packed);
    for (int64_t r = 0; r < wc->n_rows; r++) {
        ek_unpack_row(type, packed, r, wc->n_cols, row);
        const int same = memcmp(row, wc->bytes + (size_t)r * row_bytes, row_bytes) == 0;
        CHECK(same, "%s %lldx%lld: row %lld differs after repack and unpack", wc->fmt->name, (long long)wc->n_rows,
              (long long)wc->n_cols, (long long)r);
        if (!same) break;
    }
    free(packed);
    free(row);
}

/* *repacked (when not NULL) says whether the weight got an owned, interleaved copy. */
static ek_status run_matmul_repacked(const weight_case *wc, uint32_t flags, const float *x, int64_t m, int threads,
                                     float *y, int *repacked) {
    ek_weight *w = NULL;
    ek_pool *pool = NULL;
    ek_status st = ek_weight_create(wc->fmt->type, wc->n_rows, wc->n_cols, wc->bytes, flags, &w);
    if (st == EK_OK && repacked) *repacked = ek_weight_owned_bytes(w) > 0;
    if (st == EK_OK && threads > 1) st = ek_pool_create(threads, &pool);
    if (st == EK_OK) st = ek_matmul(w, x, m, y, pool);
    ek_pool_free(pool);
    ek_weight_free(w);
    return st;
}

static ek_status run_matmul(const weight_case *wc, uint32_t flags, const float *x, int64_t m, int threads, float *y) {
    return run_matmul_repacked(wc, flags, x, m, threads, y, NULL);
}

/* A weight is repacked when allowed and the family has a kernel for the interleaved layout.
   The NEON families have one for Q4_0, Q4_1 and Q8_0; Q5_0, Q4_K and Q6_K stay plain there. */
static int repack_expected(int type, int isa, uint32_t flags) {
    const ek_kernels *k = ek_kernels_for(isa);
    if (isa == EK_ISA_NEON || isa == EK_ISA_NEON_DOTPROD)
        CHECK((k && k->gemm_repacked[type] != NULL) ||
                  !(type == EK_TYPE_Q4_0 || type == EK_TYPE_Q4_1 || type == EK_TYPE_Q8_0),
              "%s has no repacked kernel for type %d",
              ek_isa_name(isa), type);
    return (flags & EK_WEIGHT_ALLOW_REPACK) && ek_repack_supported(type) && k && k->gemm_repacked[type] != NULL;
}

static void check_matmul(const weight_case *wc, const float *x, int64_t m, int isa, uint32_t flags, int threads) {
    const format_desc *fmt = wc->fmt;
    const int64_t n_out = m * wc->n_rows;
    float *got = malloc((size_t)n_out * sizeof(float)), *scalar = malloc((size_t)n_out * sizeof(float));
    for (int64_t i = 0; i < n_out; i++) got[i] = scalar[i] = NAN; /* every output must be written */
    ek_isa_set(EK_ISA_SCALAR);
    const ek_status st_scalar = run_matmul(wc, 0, x, m, 1, scalar);
    ek_isa_set(isa);
    int repacked = 0;
    const ek_status st = run_matmul_repacked(wc, flags, x, m, threads, got, &repacked);
    CHECK(st == EK_OK && st_scalar == EK_OK, "%s matmul status %d / scalar %d", fmt->name, st, st_scalar);
    CHECK(repacked == repack_expected(fmt->type, isa, flags), "%s on %s with flags %u: repacked=%d", fmt->name,
          ek_isa_name(isa), flags, repacked);
    int failures = 0;
    for (int64_t i = 0; i < m; i++) {
        for (int64_t r = 0; r < wc->n_rows; r++) {
            const double *w = wc->w64 + r * wc->n_cols;
            const float *xi = x + i * wc->n_cols;
            const float g = got[i * wc->n_rows + r], s = scalar[i * wc->n_rows + r];
            const double expected = exact_dot(w, xi, wc->n_cols);
            const double bound = act_quant_error_bound(w, xi, wc->n_cols, fmt->block_elems);
            const double scalar_tol = ISA_VS_SCALAR_RTOL * abs_dot(w, xi, wc->n_cols) + ABS_FLOOR;
            const int ok = fabs(g - expected) <= bound && fabs(g - s) <= scalar_tol;
            failures += !ok;
            if (ok || failures <= 3) /* the first few failures say enough */
                CHECK(ok, "%s matmul %lldx%lld m=%lld repack=%u threads=%d y[%lld,%lld]: %s %.9g scalar %.9g "
                      "float64 %.9g (bound %.3g)", fmt->name, (long long)wc->n_rows, (long long)wc->n_cols,
                  (long long)m, flags, threads, (long long)i, (long long)r, ek_isa_name(isa), g, s, expected, bound);
        }
    }
    free(got);
    free(scalar);
}

/* The active family gives the same bits whatever the thread count (rows split differently). */
static void check_thread_independence(const weight_case *wc, const float *x, int64_t m, uint32_t flags) {
    const int64_t n_out = m * wc->n_rows;
    float *one = malloc((size_t)n_out * sizeof(float)), *many = malloc((size_t)n_out * sizeof(float));
    const ek_status st1 = run_matmul(wc, flags, x, m, 1, one);
    for (int threads = 2; threads <= 3; threads++) {
        const ek_status st = run_matmul(wc, flags, x, m, threads, many);
        CHECK(st1 == EK_OK && st == EK_OK && memcmp(one, many, (size_t)n_out * sizeof(float)) == 0,
              "%s matmul %lldx%lld m=%lld repack=%u: %d threads differ from 1 thread", wc->fmt->name,
              (long long)wc->n_rows, (long long)wc->n_cols, (long long)m, flags, threads);
    }
    free(one);
    free(many);
}

/* Blocks of activations with the cases that matter for bit-exactness: random values, a block of
   zeros (scale 0), exact halves after scaling (127 * k / 254 with amax 127: ties to even), and
   tiny and large magnitudes. */
static void fill_quantizer_input(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = rng_uniform(-3.0f, 3.0f);
    for (int64_t i = 32; i < 64 && i < n; i++) x[i] = 0.0f;
    if (n >= 128) {
        x[64] = 127.0f; /* amax of this block is 127, so x * 127 / amax = x exactly */
        for (int64_t i = 65; i < 96; i++) x[i] = (float)((i % 9) - 4) + 0.5f;
        for (int64_t i = 96; i < 128; i++) x[i] *= 1e-20f;
    }
    if (n >= 256) for (int64_t i = 128; i < 160; i++) x[i] *= 1e20f;
}

static void check_quantizers(int isa) {
    const ek_kernels *k = ek_kernels_for(isa), *ref = ek_kernels_for(EK_ISA_SCALAR);
    CHECK(k != NULL && ref != NULL, "no kernel table for %s", ek_isa_name(isa));
    if (!k || !ref) return;
    static const int64_t lengths[] = {256, 512 + 256, 32 * 3}; /* the last only for q8_32 */
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
        const int64_t n = lengths[li];
        float *x = guarded_alloc((size_t)n * sizeof(float));
        fill_quantizer_input(x, n);
        const size_t bytes32 = (size_t)(n / 32) * sizeof(block_q8_32), bytesk = (size_t)(n / 256) * sizeof(block_q8_k);
        uint8_t *got = calloc(1, bytes32 + bytesk), *want = calloc(1, bytes32 + bytesk);
        k->quantize_q8_32(x, got, n);
        ref->quantize_q8_32(x, want, n);
        CHECK(memcmp(got, want, bytes32) == 0, "%s quantize_q8_32 n=%lld differs from scalar", ek_isa_name(isa),
              (long long)n);
        if (n % 256 == 0) {
            memset(got, 0, bytesk);
            memset(want, 0, bytesk);
            k->quantize_q8_k(x, got, n);
            ref->quantize_q8_k(x, want, n);
            CHECK(memcmp(got, want, bytesk) == 0, "%s quantize_q8_k n=%lld differs from scalar", ek_isa_name(isa),
                  (long long)n);
        }
        guarded_free(x, (size_t)n * sizeof(float));
        free(got);
        free(want);
    }
}

/* The bandwidth probe's sum of 64-bit words equals the scalar one (wrapping arithmetic). */
static void check_read_sum(int isa) {
    const ek_kernels *k = ek_kernels_for(isa), *ref = ek_kernels_for(EK_ISA_SCALAR);
    if (!k || !ref) return;
    const size_t n = 64 * 37;
    uint64_t *buf = guarded_alloc(n);
    for (size_t i = 0; i < n / 8; i++) buf[i] = ((uint64_t)rng_u32() << 32) | rng_u32();
    for (size_t len = 64; len <= n; len += 64 * 9) {
        CHECK(k->read_sum((const uint8_t *const[]){(const uint8_t *)buf}, 1, len) ==
                  ref->read_sum((const uint8_t *const[]){(const uint8_t *)buf}, 1, len),
              "%s read_sum of %zu bytes differs from scalar", ek_isa_name(isa), len);
        /* three streams over the same buffer, read side by side, sum three times its words */
        const uint8_t *three[3] = {(const uint8_t *)buf, (const uint8_t *)buf + 64 * 12, (const uint8_t *)buf + 64 * 24};
        const size_t part = len / 64 < 12 ? len : 64 * 12;
        uint64_t want = 0;
        for (int s = 0; s < 3; s++) want += ref->read_sum(&three[s], 1, part);
        CHECK(k->read_sum(three, 3, part) == want, "%s read_sum of 3 streams x %zu bytes differs", ek_isa_name(isa),
              part);
    }
    guarded_free(buf, n);
}

/* Every finite half widens to the scalar conversion's float, bit for bit, at lengths that
   leave every tail (the 8-wide loop and 0..7 values one by one). */
static void check_f16_to_f32(int isa) {
    const ek_kernels *k = ek_kernels_for(isa), *ref = ek_kernels_for(EK_ISA_SCALAR);
    if (!k || !ref) return;
    const int64_t n_all = 1 << 16;
    uint16_t *h = guarded_alloc((size_t)n_all * sizeof *h);
    int64_t n = 0;
    for (int64_t i = 0; i < n_all; i++)
        if (((i >> 10) & 0x1F) != 0x1F) h[n++] = (uint16_t)i; /* NaN payloads may be quieted */
    float *got = guarded_alloc((size_t)n * sizeof *got), *want = guarded_alloc((size_t)n * sizeof *want);
    ref->f16_to_f32(h, want, n);
    for (int64_t len = n - 15; len <= n; len++) {
        k->f16_to_f32(h + (n - len), got, len);
        CHECK(memcmp(got, want + (n - len), (size_t)len * sizeof *got) == 0, "%s f16_to_f32 of %lld halves differs",
              ek_isa_name(isa), (long long)len);
    }
    guarded_free(h, (size_t)n_all * sizeof *h);
    guarded_free(got, (size_t)n * sizeof *got);
    guarded_free(want, (size_t)n * sizeof *want);
}

/* ---------------------------------------------------- f32 building blocks */

/* Each op's result against float64, per element. A family passes when it is within the bound
   of float64; two families within it are within twice it of each other, which is what the
   comparison with the scalar table allows (the scalar ops use libm's expf and tanhf, the
   vector ones a polynomial exp, so they never agree bit for bit). */

/* RMSNorm: the sum of n squares is accumulated in float lanes of up to a few hundred terms
   (n <= 4101 here, 4 or 8 lanes); its relative error is a few hundred roundings of 2^-24 at
   worst, 1/sqrt halves it, and y = x * scale * w adds two more roundings. */
#define RMSNORM_RTOL 1e-5
/* SiLU and GELU gates: the vector exp is a polynomial with relative error ~2e-7, then a division
   and up to three products, each 2^-24: a few 1e-7 in all, with 4x slack. */
#define ACT_RTOL 2e-6
/* GELU's 1 + tanh(y) cancels for negative gates: an error of 1 ulp of 1 in tanh, times 0.5|g|
   (|g| <= 8 where the result is not already 0), is at most 5e-7 of |up|. */
#define ACT_ATOL 1e-6
/* Softmax: exp as for the gates, the sum in double, one division and one product. */
#define SOFTMAX_RTOL 2e-6
/* Weights far below the largest underflow: the vector exp stops at e^-87.3 (~1e-38). */
#define SOFTMAX_ATOL 1e-30

/* n floats from the sum of three uniforms (a bell shape), times `spread`; guarded. */
static float *bell_floats(int64_t n, float spread) {
    float *x = guarded_alloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        x[i] = spread * (rng_uniform(-1.0f, 1.0f) + rng_uniform(-1.0f, 1.0f) + rng_uniform(-1.0f, 1.0f));
    return x;
}

static float *nan_floats(int64_t n) { /* guarded, every element must be overwritten */
    float *y = guarded_alloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) y[i] = NAN;
    return y;
}

/* Lengths: 1 and short vectors, one less and more than 4, 8 and 16 lanes, and long rows with
   every remainder after the widest step. */
static const int64_t op_lengths[] = {1, 3, 7, 8, 9, 15, 17, 31, 257, 1003, 2050, 4101};
#define N_OP_LENGTHS ((int)(sizeof op_lengths / sizeof op_lengths[0]))

static void check_rmsnorm(int isa) {
    const ek_kernels *k = ek_kernels_for(isa), *ref = ek_kernels_for(EK_ISA_SCALAR);
    for (int li = 0; li < N_OP_LENGTHS; li++) {
        const int64_t n = op_lengths[li];
        const float eps = 1e-6f;
        float *x = bell_floats(n, 2.0f), *w = bell_floats(n, 1.0f);
        float *y = nan_floats(n), *y_ref = nan_floats(n), *y_pub = nan_floats(n), *inplace = nan_floats(n);
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
        const double scale = 1.0 / sqrt(sum / (double)n + eps);
        for (int with_w = 0; with_w < 2; with_w++) {
            const float *wp = with_w ? w : NULL;
            k->rmsnorm(x, wp, y, n, eps);
            ref->rmsnorm(x, wp, y_ref, n, eps);
            ek_rmsnorm(x, wp, y_pub, n, eps);
            memcpy(inplace, x, (size_t)n * sizeof(float));
            k->rmsnorm(inplace, wp, inplace, n, eps);
            int bad = 0;
            for (int64_t i = 0; i < n && bad < 3; i++) {
                const double want = x[i] * scale * (wp ? wp[i] : 1.0);
                const double tol = RMSNORM_RTOL * fabs(want);
                const int ok = fabs(y[i] - want) <= tol && fabs(y[i] - y_ref[i]) <= 2 * tol &&
                               y_pub[i] == y[i] && inplace[i] == y[i];
                bad += !ok;
                CHECK(ok, "%s rmsnorm n=%lld w=%d [%lld]: %.9g, scalar %.9g, entry point %.9g, in place %.9g, "
                      "float64 %.9g", ek_isa_name(isa), (long long)n, with_w, (long long)i, y[i], y_ref[i],
                      y_pub[i], inplace[i], want);
            }
        }
        guarded_free(x, (size_t)n * sizeof(float));
        guarded_free(w, (size_t)n * sizeof(float));
        guarded_free(y, (size_t)n * sizeof(float));
        guarded_free(y_ref, (size_t)n * sizeof(float));
        guarded_free(y_pub, (size_t)n * sizeof(float));
        guarded_free(inplace, (size_t)n * sizeof(float));
    }
}

static double silu64(double g) { return g / (1.0 + exp(-g)); }
static double gelu64(double g) { return 0.5 * g * (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (g + 0.044715 * g * g * g))); }

static void check_gated_act(int isa, int gelu) {
    const ek_kernels *k = ek_kernels_for(isa), *ref = ek_kernels_for(EK_ISA_SCALAR);
    const ek_gated_act_fn fn = gelu ? k->gelu_mul : k->silu_mul, fn_ref = gelu ? ref->gelu_mul : ref->silu_mul;
    void (*const entry)(const float *, const float *, float *, int64_t) = gelu ? ek_gelu_mul : ek_silu_mul;
    const char *name = gelu ? "gelu_mul" : "silu_mul";
    for (int li = 0; li < N_OP_LENGTHS; li++) {
        const int64_t n = op_lengths[li];
        float *g = bell_floats(n, 2.5f), *up = bell_floats(n, 1.0f);
        /* both saturations and zero, where they fit */
        const float special[] = {-30.0f, 30.0f, 0.0f, -88.0f, 89.0f};
        for (int i = 0; i < 5 && i < n; i++) g[(i * 7) % n] = special[i];
        float *y = nan_floats(n), *y_ref = nan_floats(n), *y_pub = nan_floats(n), *inplace = nan_floats(n);
        for (int with_up = 0; with_up < 2; with_up++) {
            const float *upp = with_up ? up : NULL;
            fn(g, upp, y, n);
            fn_ref(g, upp, y_ref, n);
            entry(g, upp, y_pub, n);
            memcpy(inplace, g, (size_t)n * sizeof(float));
            fn(inplace, upp, inplace, n);
            int bad = 0;
            for (int64_t i = 0; i < n && bad < 3; i++) {
                const double u = upp ? upp[i] : 1.0;
                const double want = (gelu ? gelu64(g[i]) : silu64(g[i])) * u;
                const double tol = ACT_RTOL * fabs(want) + ACT_ATOL * fabs(u);
                const int ok = fabs(y[i] - want) <= tol && fabs(y[i] - y_ref[i]) <= 2 * tol &&
                               y_pub[i] == y[i] && inplace[i] == y[i];
                bad += !ok;
                CHECK(ok, "%s %s n=%lld up=%d [%lld] g=%.9g: %.9g, scalar %.9g, entry point %.9g, in place %.9g, "
                      "float64 %.9g", ek_isa_name(isa), name, (long long)n, with_up, (long long)i, g[i], y[i],
                      y_ref[i], y_pub[i], inplace[i], want);
            }
        }
        guarded_free(g, (size_t)n * sizeof(float));
        guarded_free(up, (size_t)n * sizeof(float));
        guarded_free(y, (size_t)n * sizeof(float));
        guarded_free(y_ref, (size_t)n * sizeof(float));
        guarded_free(y_pub, (size_t)n * sizeof(float));
        guarded_free(inplace, (size_t)n * sizeof(float));
    }
}

static void check_softmax(int isa) {
    const ek_kernels *k = ek_kernels_for(isa), *ref = ek_kernels_for(EK_ISA_SCALAR);
    for (int li = 0; li < N_OP_LENGTHS; li++) {
        const int64_t n = op_lengths[li];
        float *x = bell_floats(n, 6.0f); /* logits spread over ~36 nats: weights down to ~1e-16 */
        float *y = guarded_alloc((size_t)n * sizeof(float)), *y_ref = guarded_alloc((size_t)n * sizeof(float));
        float *y_pub = guarded_alloc((size_t)n * sizeof(float));
        memcpy(y, x, (size_t)n * sizeof(float));
        memcpy(y_ref, x, (size_t)n * sizeof(float));
        memcpy(y_pub, x, (size_t)n * sizeof(float));
        k->softmax(y, n);
        ref->softmax(y_ref, n);
        ek_softmax(y_pub, n);
        double maxv = -INFINITY, sum = 0.0;
        for (int64_t i = 0; i < n; i++) maxv = x[i] > maxv ? x[i] : maxv;
        for (int64_t i = 0; i < n; i++) sum += exp(x[i] - maxv);
        int bad = 0;
        for (int64_t i = 0; i < n && bad < 3; i++) {
            const double want = exp(x[i] - maxv) / sum;
            const double tol = SOFTMAX_RTOL * want + SOFTMAX_ATOL;
            const int ok = fabs(y[i] - want) <= tol && fabs(y[i] - y_ref[i]) <= 2 * tol && y_pub[i] == y[i];
            bad += !ok;
            CHECK(ok, "%s softmax n=%lld [%lld]: %.9g, scalar %.9g, entry point %.9g, float64 %.9g", ek_isa_name(isa),
                  (long long)n, (long long)i, y[i], y_ref[i], y_pub[i], want);
        }
        guarded_free(x, (size_t)n * sizeof(float));
        guarded_free(y, (size_t)n * sizeof(float));
        guarded_free(y_ref, (size_t)n * sizeof(float));
        guarded_free(y_pub, (size_t)n * sizeof(float));
    }
}

/* Tiled attention over a cache of n_pos rows of n_heads heads, on the last head (its rows end
   where the buffer does on the last position): group queries for each of n_tok tokens at the
   cache's end, token t seeing positions [lo, n_pos - n_tok + t + 1) with lo the sliding window's
   first (window 0: all). KV values are random f16 bit patterns, or random q8_0 blocks (f16 scale,
   int8 values), decoded exactly here.
   Bound: each score is a float dot of head_dim products (error <= FLOAT_ACCUM_RTOL of
   scale * sum |q k|); a score error delta moves its softmax weight by a factor within
   e^(+-2 max delta), so out[i] moves by at most 2 max delta * sum_j p_j |v_ji|; the weighted
   sum of V adds FLOAT_ACCUM_RTOL of the same sum (exp, the rescaling and the final division). */
static void check_attention_case(int isa, int kv_type, int64_t head_dim, int64_t n_pos, int n_heads, int n_tok,
                                 int group, int64_t window) {
    const ek_kernels *k = ek_kernels_for(isa), *ref = ek_kernels_for(EK_ISA_SCALAR);
    const ek_attention_fn fn = kv_type == EK_TYPE_Q8_0 ? k->attention_q8_0 : k->attention_f16;
    const ek_attention_fn fn_ref = kv_type == EK_TYPE_Q8_0 ? ref->attention_q8_0 : ref->attention_f16;
    const size_t head_bytes = (size_t)ek_kv_row_bytes(kv_type, head_dim), row_bytes = head_bytes * (size_t)n_heads;
    const size_t cache_bytes = row_bytes * (size_t)n_pos;
    uint8_t *kc = guarded_alloc(cache_bytes), *vc = guarded_alloc(cache_bytes);
    for (size_t i = 0; i < cache_bytes; i += 2) {
        if (kv_type == EK_TYPE_F16) { /* magnitudes 2^-3 .. 2^1 */
            put_u16(kc + i, rng_half(1, 12, 15));
            put_u16(vc + i, rng_half(1, 12, 15));
        } else if (i % sizeof(block_q8_0) == 0) { /* scale 2^-8 .. 2^-6: values up to 127/64 */
            put_u16(kc + i, rng_half(1, 7, 9));
            put_u16(vc + i, rng_half(1, 7, 9));
        } else {
            put_u16(kc + i, (uint16_t)rng_u32());
            put_u16(vc + i, (uint16_t)rng_u32());
        }
    }
    const size_t head_off = head_bytes * (size_t)(n_heads - 1);
    double *kd = malloc((size_t)(n_pos * head_dim) * sizeof(double)), *vd = malloc((size_t)(n_pos * head_dim) * sizeof(double));
    for (int64_t j = 0; j < n_pos; j++) {
        const uint8_t *kr = kc + (size_t)j * row_bytes + head_off, *vr = vc + (size_t)j * row_bytes + head_off;
        if (kv_type == EK_TYPE_F16) {
            for (int64_t i = 0; i < head_dim; i++) {
                kd[j * head_dim + i] = half_to_double(get_u16(kr + 2 * i));
                vd[j * head_dim + i] = half_to_double(get_u16(vr + 2 * i));
            }
        } else {
            for (int64_t b = 0; b < head_dim / 32; b++) {
                decode_block_f64(EK_TYPE_Q8_0, kr + b * sizeof(block_q8_0), kd + j * head_dim + 32 * b);
                decode_block_f64(EK_TYPE_Q8_0, vr + b * sizeof(block_q8_0), vd + j * head_dim + 32 * b);
            }
        }
    }
    const int64_t n_q = (int64_t)n_tok * group;
    const float **q = malloc((size_t)n_q * sizeof *q);
    float **out = malloc((size_t)n_q * sizeof *out), **out_ref = malloc((size_t)n_q * sizeof *out),
          **out_pub = malloc((size_t)n_q * sizeof *out);
    int64_t *lo = malloc((size_t)n_q * sizeof *lo), *hi = malloc((size_t)n_q * sizeof *hi);
    for (int64_t i = 0; i < n_q; i++) {
        const int64_t pos = n_pos - n_tok + i / group;
        lo[i] = window && pos - window + 1 > 0 ? pos - window + 1 : 0;
        hi[i] = pos + 1;
        q[i] = bell_floats(head_dim, 1.0f);
        out[i] = nan_floats(head_dim);
        out_ref[i] = nan_floats(head_dim);
        out_pub[i] = nan_floats(head_dim);
    }
    const float scale = 1.0f / sqrtf((float)head_dim);
    const size_t scratch_bytes = (size_t)ek_attention_scratch_floats(n_q, head_dim) * sizeof(float);
    float *scratch = guarded_alloc(scratch_bytes);
    fn(q, out, lo, hi, n_q, kc + head_off, vc + head_off, row_bytes, head_dim, scale, scratch);
    fn_ref(q, out_ref, lo, hi, n_q, kc + head_off, vc + head_off, row_bytes, head_dim, scale, scratch);
    ek_attention(q, out_pub, lo, hi, n_q, kc + head_off, vc + head_off, kv_type, row_bytes, head_dim, scale, scratch);

    double *p = malloc((size_t)n_pos * sizeof(double));
    int bad = 0;
    for (int64_t qi = 0; qi < n_q && bad < 3; qi++) {
        double maxs = -INFINITY, sum = 0.0, delta = 0.0;
        for (int64_t j = lo[qi]; j < hi[qi]; j++) {
            double sd = 0.0, s_abs = 0.0;
            for (int64_t i = 0; i < head_dim; i++) {
                sd += q[qi][i] * kd[j * head_dim + i];
                s_abs += fabs(q[qi][i] * kd[j * head_dim + i]);
            }
            p[j] = scale * sd;
            maxs = p[j] > maxs ? p[j] : maxs;
            delta = FLOAT_ACCUM_RTOL * scale * s_abs > delta ? FLOAT_ACCUM_RTOL * scale * s_abs : delta;
        }
        for (int64_t j = lo[qi]; j < hi[qi]; j++) sum += (p[j] = exp(p[j] - maxs));
        for (int64_t i = 0; i < head_dim && bad < 3; i++) {
            double want = 0.0, weighted_abs = 0.0;
            for (int64_t j = lo[qi]; j < hi[qi]; j++) {
                want += p[j] / sum * vd[j * head_dim + i];
                weighted_abs += p[j] / sum * fabs(vd[j * head_dim + i]);
            }
            const double tol = (2.0 * delta + FLOAT_ACCUM_RTOL) * weighted_abs + ABS_FLOOR;
            const float o = out[qi][i], o_ref = out_ref[qi][i], o_pub = out_pub[qi][i];
            const int ok = fabs(o - want) <= tol && fabs(o - o_ref) <= 2 * tol && o_pub == o;
            bad += !ok;
            CHECK(ok, "%s attention %s head_dim=%lld n_pos=%lld query %lld of %lld keys [%lld, %lld) [%lld]: %.9g, "
                  "scalar %.9g, entry point %.9g, float64 %.9g (bound %.3g)", ek_isa_name(isa),
                  kv_type == EK_TYPE_F16 ? "f16" : "q8_0", (long long)head_dim, (long long)n_pos, (long long)qi,
                  (long long)n_q, (long long)lo[qi], (long long)hi[qi], (long long)i, o, o_ref, o_pub, want, tol);
        }
    }
    for (int64_t i = 0; i < n_q; i++) {
        guarded_free((void *)q[i], (size_t)head_dim * sizeof(float));
        guarded_free(out[i], (size_t)head_dim * sizeof(float));
        guarded_free(out_ref[i], (size_t)head_dim * sizeof(float));
        guarded_free(out_pub[i], (size_t)head_dim * sizeof(float));
    }
    free(q), free(out), free(out_ref), free(out_pub), free(lo), free(hi), free(p), free(kd), free(vd);
    guarded_free(scratch, scratch_bytes);
    guarded_free(kc, cache_bytes);
    guarded_free(vc, cache_bytes);
}

static void check_attention(int isa) {
    /* F16 rows take any head_dim: the common ones and a few with every tail after 16, 8, 4
       lanes; q8_0 rows come in blocks of 32. Positions: 1, odd, past a key block (16) and past
       a few hundred; tiles of one query up to 5 tokens x GQA groups of 1..7, causal, and with
       sliding windows shorter and longer than a key block. */
    static const int64_t f16_dims[] = {64, 80, 128, 256, 36, 13, 5, 1}, q8_dims[] = {32, 64, 96, 256};
    static const int64_t positions[] = {1, 7, 33, 300};
    static const int groups[] = {1, 3, 4, 7}, tokens[] = {1, 5, 2, 3};
    static const int64_t windows[] = {0, 0, 5, 40};
    for (size_t pi = 0; pi < sizeof positions / sizeof positions[0]; pi++) {
        for (size_t di = 0; di < sizeof f16_dims / sizeof f16_dims[0]; di++) {
            const int n_tok = tokens[di % 4] < positions[pi] ? tokens[di % 4] : (int)positions[pi];
            check_attention_case(isa, EK_TYPE_F16, f16_dims[di], positions[pi], 1 + (int)(di % 3), n_tok,
                                 groups[(di + pi) % 4], windows[(di + 2 * pi) % 4]);
        }
        for (size_t di = 0; di < sizeof q8_dims / sizeof q8_dims[0]; di++) {
            const int n_tok = tokens[(di + 1) % 4] < positions[pi] ? tokens[(di + 1) % 4] : (int)positions[pi];
            check_attention_case(isa, EK_TYPE_Q8_0, q8_dims[di], positions[pi], 1 + (int)(di % 3), n_tok,
                                 groups[(di + pi + 1) % 4], windows[(di + pi) % 4]);
        }
    }
}

/* Row counts: below, at and above thread counts and SIMD row groups, all odd or off by one. */
static const int64_t row_counts[] = {1, 7, 13, 37};
/* Blocks per row: 1, odd, and enough for several unrolled iterations plus a tail. */
static const int64_t blocks_per_row[] = {1, 3, 9};
/* Activation rows: GEMV and GEMM with tails against any tile of 2, 4 or 8. */
static const int64_t m_values[] = {1, 2, 5, 11};

int main(void) {
    const char *isa_env = getenv("EDGESDK_ISA");
    if (!isa_env) {
        fprintf(stderr, "test_arm_kernels: set EDGESDK_ISA to the family under test\n");
        return 2;
    }
    const int isa = ek_isa_from_name(isa_env);
    if (isa >= 0 && !ek_isa_available(isa)) { /* hardware this machine lacks: say so, not a failure */
        printf("test_arm_kernels (%s): skipped, this CPU cannot run it\n", isa_env);
        return 0;
    }
    CHECK(isa >= 0 && ek_isa_current() == isa, "EDGESDK_ISA=%s but the library runs %s", isa_env,
          ek_isa_name(ek_isa_current()));
    if (isa < 0 || ek_isa_current() != isa) return check_summary("test_arm_kernels");

    rng_state = 0x243F6A8885A308D3ull;
    check_quantizers(isa);
    check_read_sum(isa);
    check_f16_to_f32(isa);
    check_rmsnorm(isa);
    check_gated_act(isa, 0);
    check_gated_act(isa, 1);
    check_softmax(isa);
    check_attention(isa);

    for (int f = 0; f < N_FORMATS; f++) {
        const format_desc *fmt = &formats[f];
        rng_state = 0x9E3779B97F4A7C15ull ^ (uint64_t)(f + 1); /* a fixed stream per format */
        for (size_t bi = 0; bi < sizeof blocks_per_row / sizeof blocks_per_row[0]; bi++) {
            /* Float "blocks" are single values: lengths whose remainders after 8-wide steps are
               7, 5 and 3, so the 4-wide step and the scalar tail run alone and together. */
            const int64_t n_cols = fmt->block_elems == 1 ? 32 * blocks_per_row[bi] + 7 - 2 * (int64_t)bi
                                                         : fmt->block_elems * blocks_per_row[bi];
            for (size_t ri = 0; ri < sizeof row_counts / sizeof row_counts[0]; ri++) {
                weight_case wc;
                build_weight_case(&wc, fmt, row_counts[ri], n_cols);
                check_dequantize(&wc);
                check_repack_round_trip(&wc);
                float *x = random_floats(n_cols * m_values[3]);
                check_vec_dot(&wc, x, isa);
                for (size_t mi = 0; mi < sizeof m_values / sizeof m_values[0]; mi++) {
                    check_matmul(&wc, x, m_values[mi], isa, 0, 1);
                    check_matmul(&wc, x, m_values[mi], isa, EK_WEIGHT_ALLOW_REPACK, 1 + (int)(mi % 3));
                }
                if (row_counts[ri] > 8) {
                    check_thread_independence(&wc, x, 1, 0);
                    check_thread_independence(&wc, x, m_values[2], EK_WEIGHT_ALLOW_REPACK);
                }
                guarded_free(x, (size_t)(n_cols * m_values[3]) * sizeof(float));
                free_weight_case(&wc);
            }
        }
    }
    /* Saturated integers against constant activations (every activation quantizes to 127). */
    for (int f = 0; f < N_FORMATS; f++) {
        const format_desc *fmt = &formats[f];
        if (fmt->block_elems == 1) continue;
        const int64_t n_cols = fmt->block_elems * 9, m = 3;
        weight_case wc;
        build_weight_case(&wc, fmt, 13, n_cols);
        make_extreme(&wc);
        check_repack_round_trip(&wc);
        float *x = guarded_alloc((size_t)(n_cols * m) * sizeof(float));
        for (int64_t i = 0; i < n_cols * m; i++) x[i] = 0.75f;
        check_vec_dot(&wc, x, isa);
        check_matmul(&wc, x, m, isa, 0, 2);
        check_matmul(&wc, x, m, isa, EK_WEIGHT_ALLOW_REPACK, 2);
        guarded_free(x, (size_t)(n_cols * m) * sizeof(float));
        free_weight_case(&wc);
    }

    char title[64];
    snprintf(title, sizeof title, "test_arm_kernels (%s)", isa_env);
    return check_summary(title);
}
