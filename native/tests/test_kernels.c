/* C tests of the kernel layer through its public API, for every ISA family
 * this CPU has (or only EDGESDK_ISA's, which must then be available): matmul
 * against a double-precision reference on dequantized weights, fast paths
 * against scalar, thread-count invariance, repacked vs plain, row lookup,
 * single dots, quantize round trips, fp16 corner cases and the pool.
 * Runs natively, under sanitizers, and under qemu-aarch64. Exit status 0 = pass.
 *
 * Dequantization itself is checked against independent numpy code in
 * tests/test_kernels_formats.py; here it is the reference the kernels meet.
 */
#include "edgekern.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            failures++;                                                         \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
        }                                                                       \
    } while (0)

/* Fast paths sum in another order than scalar: float32 re-association only. */
#define FAST_VS_SCALAR_RTOL 2e-5
/* Float weights: float32 accumulation over a few hundred terms. */
#define FLOAT_ACCUM_RTOL 1e-5

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng_u32(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float rng_uniform(float lo, float hi) { return lo + (hi - lo) * (float)(rng_u32() >> 8) / 16777216.0f; }
static float rng_normalish(void) { return rng_uniform(-1, 1) + rng_uniform(-1, 1) + rng_uniform(-1, 1); }

static uint16_t to_f16(float f) {
    uint16_t h;
    ek_quantize(EK_TYPE_F16, &f, &h, 1);
    return h;
}

static const int all_types[] = {EK_TYPE_F32, EK_TYPE_F16, EK_TYPE_BF16, EK_TYPE_Q4_0, EK_TYPE_Q4_1,
                                EK_TYPE_Q5_0, EK_TYPE_Q8_0, EK_TYPE_Q4_K, EK_TYPE_Q6_K};
static const char *type_name(int t) {
    switch (t) {
    case EK_TYPE_F32: return "F32"; case EK_TYPE_F16: return "F16"; case EK_TYPE_BF16: return "BF16";
    case EK_TYPE_Q4_0: return "Q4_0"; case EK_TYPE_Q4_1: return "Q4_1"; case EK_TYPE_Q5_0: return "Q5_0";
    case EK_TYPE_Q8_0: return "Q8_0"; case EK_TYPE_Q4_K: return "Q4_K"; case EK_TYPE_Q6_K: return "Q6_K";
    default: return "?";
    }
}

/* Random weight bytes of `type` for n values: random quants, finite f16 scales. */
static void *random_weights(int type, int64_t n) {
    const int64_t be = ek_type_block_elems(type), bb = ek_type_block_bytes(type), nb = n / be;
    uint8_t *raw = malloc((size_t)(nb * bb));
    if (type == EK_TYPE_F32 || type == EK_TYPE_F16) {
        float *f = malloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < n; i++) f[i] = rng_normalish();
        ek_quantize(type, f, raw, n);
        free(f);
        return raw;
    }
    if (type == EK_TYPE_BF16) {
        for (int64_t i = 0; i < n; i++) {
            float f = rng_normalish();
            uint32_t u;
            memcpy(&u, &f, 4);
            const uint16_t h = (uint16_t)(u >> 16);
            memcpy(raw + 2 * i, &h, 2);
        }
        return raw;
    }
    for (int64_t i = 0; i < nb * bb; i++) raw[i] = (uint8_t)rng_u32();
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = raw + b * bb;
        const float sign = (rng_u32() & 1) ? 1.0f : -1.0f;
        const uint16_t d = to_f16(sign * rng_uniform(0.01f, 0.05f)), pos = to_f16(rng_uniform(0.01f, 0.05f));
        switch (type) {
        case EK_TYPE_Q4_1: memcpy(blk, &pos, 2); memcpy(blk + 2, &d, 2); break;
        case EK_TYPE_Q4_K: memcpy(blk, &pos, 2); memcpy(blk + 2, &pos, 2); break;
        case EK_TYPE_Q6_K: memcpy(blk + 208, &d, 2); break;
        default: memcpy(blk, &d, 2); break;
        }
    }
    return raw;
}

static int act_block(int type) {
    switch (type) {
    case EK_TYPE_Q4_0: case EK_TYPE_Q4_1: case EK_TYPE_Q5_0: case EK_TYPE_Q8_0: return 32;
    case EK_TYPE_Q4_K: case EK_TYPE_Q6_K: return 256;
    default: return 0;
    }
}

/* Largest |y - reference| allowed for one output: activation rounding (each x
   moves by at most half its block's step, max|x| / 127 / 2) plus float32 sums. */
static double error_bound(int type, const float *w, const float *x, int64_t n) {
    double bound = 1e-6, magnitude = 0.0;
    const int blk = act_block(type);
    for (int64_t b = 0; blk && b < n / blk; b++) {
        double amax = 0.0, wsum = 0.0;
        for (int j = 0; j < blk; j++) {
            amax = fmax(amax, fabs(x[b * blk + j]));
            wsum += fabs(w[b * blk + j]);
        }
        bound += 1.001 * wsum * amax / 127.0 / 2.0;
    }
    for (int64_t j = 0; j < n; j++) magnitude += fabs((double)w[j] * x[j]);
    return bound + FLOAT_ACCUM_RTOL * magnitude;
}

typedef struct {
    int type;
    int64_t n_rows, n_cols, m;
    void *raw;
    float *w;   /* (n_rows, n_cols) dequantized */
    float *x;   /* (m, n_cols) */
} problem;

static problem make_problem(int type, int64_t n_rows, int64_t n_cols, int64_t m) {
    problem p = {type, n_rows, n_cols, m, random_weights(type, n_rows * n_cols), NULL, NULL};
    p.w = malloc((size_t)(n_rows * n_cols) * sizeof(float));
    p.x = malloc((size_t)(m * n_cols) * sizeof(float));
    ek_dequantize(type, p.raw, p.w, n_rows * n_cols);
    for (int64_t i = 0; i < m * n_cols; i++) p.x[i] = rng_normalish();
    return p;
}

static void free_problem(problem *p) {
    free(p->raw);
    free(p->w);
    free(p->x);
}

static float *run_matmul(const problem *p, uint32_t flags, ek_pool *pool, size_t *owned) {
    ek_weight *w;
    float *y = malloc((size_t)(p->m * p->n_rows) * sizeof(float));
    ek_status st = ek_weight_create(p->type, p->n_rows, p->n_cols, p->raw, flags, &w);
    CHECK(st == EK_OK, "ek_weight_create(%s) = %d", type_name(p->type), st);
    if (st != EK_OK) { memset(y, 0, (size_t)(p->m * p->n_rows) * sizeof(float)); return y; }
    CHECK(ek_weight_isa(w) == ek_isa_current(), "weight isa %d != current %d", ek_weight_isa(w), ek_isa_current());
    st = ek_matmul(w, p->x, p->m, y, pool);
    CHECK(st == EK_OK, "ek_matmul = %d", st);
    if (owned) *owned = ek_weight_owned_bytes(w);
    ek_weight_free(w);
    return y;
}

static void check_against_reference(const problem *p, const float *y, const char *what) {
    for (int64_t i = 0; i < p->m; i++)
        for (int64_t r = 0; r < p->n_rows; r++) {
            double ref = 0.0;
            const float *wr = p->w + r * p->n_cols, *xi = p->x + i * p->n_cols;
            for (int64_t j = 0; j < p->n_cols; j++) ref += (double)wr[j] * xi[j];
            const double err = fabs(y[i * p->n_rows + r] - ref), bound = error_bound(p->type, wr, xi, p->n_cols);
            if (err > bound) {
                CHECK(0, "%s %s %s [%lld,%lld]: |%g - %g| = %g > %g", ek_isa_name(ek_isa_current()), type_name(p->type),
                      what, (long long)i, (long long)r, y[i * p->n_rows + r], ref, err, bound);
                return;
            }
        }
}

static int64_t cols_for(int type) {
    const int64_t be = ek_type_block_elems(type);
    return be == 1 ? 227 : be == 32 ? 32 * 7 : 256 * 3; /* odd block counts, float tails */
}

static void test_isa(int isa, ek_pool *pool1, ek_pool *pool3) {
    for (size_t t = 0; t < sizeof all_types / sizeof all_types[0]; t++) {
        const int type = all_types[t];
        const int64_t m_values[] = {1, 6};
        for (int mi = 0; mi < 2; mi++) {
            problem p = make_problem(type, 37, cols_for(type), m_values[mi]);
            CHECK(ek_isa_set(EK_ISA_SCALAR) == EK_OK, "scalar always available");
            float *y_scalar = run_matmul(&p, 0, NULL, NULL);
            CHECK(ek_isa_set(isa) == EK_OK, "set isa %d", isa);
            float *y1 = run_matmul(&p, 0, pool1, NULL);
            float *y3 = run_matmul(&p, 0, pool3, NULL);
            size_t owned = 0;
            float *y_packed = run_matmul(&p, EK_WEIGHT_ALLOW_REPACK, pool3, &owned);
            float *y_packed1 = run_matmul(&p, EK_WEIGHT_ALLOW_REPACK, pool1, NULL);
            check_against_reference(&p, y1, "plain");
            check_against_reference(&p, y_packed, "repacked");
            CHECK(memcmp(y1, y3, (size_t)(p.m * p.n_rows) * sizeof(float)) == 0,
                  "%s %s: 1 and 3 threads differ", ek_isa_name(isa), type_name(type));
            CHECK(memcmp(y_packed, y_packed1, (size_t)(p.m * p.n_rows) * sizeof(float)) == 0,
                  "%s %s repacked: 1 and 3 threads differ", ek_isa_name(isa), type_name(type));
            for (int64_t i = 0; i < p.m; i++)
                for (int64_t r = 0; r < p.n_rows; r++) {
                    double magnitude = 0.0;
                    for (int64_t j = 0; j < p.n_cols; j++)
                        magnitude += fabs((double)p.w[r * p.n_cols + j] * p.x[i * p.n_cols + j]);
                    const double tol = FAST_VS_SCALAR_RTOL * magnitude + 1e-6;
                    const int64_t k = i * p.n_rows + r;
                    if (fabs(y1[k] - y_scalar[k]) > tol || fabs(y_packed[k] - y_scalar[k]) > tol) {
                        CHECK(0, "%s %s [%lld,%lld]: fast %g / repacked %g vs scalar %g (tol %g)", ek_isa_name(isa),
                              type_name(type), (long long)i, (long long)r, y1[k], y_packed[k], y_scalar[k], tol);
                        i = p.m;
                        break;
                    }
                }
            free(y_scalar), free(y1), free(y3), free(y_packed), free(y_packed1);
            free_problem(&p);
        }
    }
}

static void test_get_rows_and_vec_dot(void) {
    for (size_t t = 0; t < sizeof all_types / sizeof all_types[0]; t++) {
        const int type = all_types[t];
        problem p = make_problem(type, 11, cols_for(type), 1);
        for (int flags = 0; flags < 2; flags++) {
            ek_weight *w;
            CHECK(ek_weight_create(type, p.n_rows, p.n_cols, p.raw, (uint32_t)flags, &w) == EK_OK, "create");
            const int32_t ids[3] = {10, 0, 4};
            float *rows = malloc((size_t)(3 * p.n_cols) * sizeof(float));
            CHECK(ek_weight_get_rows(w, ids, 3, rows) == EK_OK, "get_rows");
            for (int k = 0; k < 3; k++)
                CHECK(memcmp(rows + k * p.n_cols, p.w + ids[k] * p.n_cols, (size_t)p.n_cols * sizeof(float)) == 0,
                      "%s get_rows row %d (flags %d)", type_name(type), ids[k], flags);
            const int32_t bad = 11;
            CHECK(ek_weight_get_rows(w, &bad, 1, rows) == EK_ERR_INVALID_ARG, "out-of-range id is refused");
            free(rows);
            ek_weight_free(w);
        }
        float dot;
        CHECK(ek_vec_dot(type, p.raw, p.x, p.n_cols, &dot) == EK_OK, "vec_dot");
        double ref = 0.0;
        for (int64_t j = 0; j < p.n_cols; j++) ref += (double)p.w[j] * p.x[j];
        CHECK(fabs(dot - ref) <= error_bound(type, p.w, p.x, p.n_cols), "%s vec_dot %g vs %g", type_name(type), dot, ref);
        free_problem(&p);
    }
}

static void test_formats(void) {
    CHECK(ek_type_block_elems(EK_TYPE_Q4_K) == 256 && ek_type_block_bytes(EK_TYPE_Q4_K) == 144, "Q4_K block");
    CHECK(ek_type_block_bytes(EK_TYPE_Q6_K) == 210 && ek_type_block_bytes(EK_TYPE_Q5_0) == 22, "block bytes");
    CHECK(ek_type_block_elems(7) == 0, "Q5_1 is not supported");
    float x[64], back[64];
    for (int i = 0; i < 64; i++) x[i] = rng_normalish();
    uint8_t q[2 * 34];
    CHECK(ek_quantize(EK_TYPE_Q8_0, x, q, 64) == EK_OK, "quantize q8_0");
    CHECK(ek_dequantize(EK_TYPE_Q8_0, q, back, 64) == EK_OK, "dequantize q8_0");
    for (int b = 0; b < 2; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * b + j]));
        for (int j = 0; j < 32; j++)  /* half a step, plus the f16 rounding of the scale */
            CHECK(fabsf(back[32 * b + j] - x[32 * b + j]) <= amax / 127 * 0.5f + amax * 1e-3f, "q8_0 round trip");
    }
    CHECK(ek_quantize(EK_TYPE_Q8_0, x, q, 33) == EK_ERR_INVALID_ARG, "partial block refused");
    CHECK(ek_quantize(7 /* Q5_1 */, x, q, 64) == EK_ERR_UNSUPPORTED, "Q5_1 quantize is not offered");
    /* fp16 corners: largest normal, smallest subnormal, overflow, round-half-even */
    const float f[] = {65504.0f, 5.9604645e-8f, 70000.0f, 1.0f + 1.0f / 2048.0f, -0.0f};
    const uint16_t expect[] = {0x7BFF, 0x0001, 0x7C00, 0x3C00, 0x8000};
    for (int i = 0; i < 5; i++) CHECK(to_f16(f[i]) == expect[i], "f16(%g) = 0x%04x", f[i], to_f16(f[i]));
}

static void test_pool(void) {
    for (int n = 1; n <= 4; n++) {
        ek_pool *pool;
        CHECK(ek_pool_create(n, &pool) == EK_OK, "pool %d", n);
        CHECK(ek_pool_threads(pool) == n, "pool threads");
        ek_pool_free(pool);
    }
    ek_pool *pool;
    CHECK(ek_pool_create(0, &pool) == EK_OK && ek_pool_threads(pool) >= 1, "default pool");
    ek_pool_free(pool);
    CHECK(ek_measure_read_bandwidth(1 << 20, 3, NULL) > 0.0, "bandwidth probe");
}

int main(void) {
    test_formats();
    test_pool();
    const char *env = getenv("EDGESDK_ISA");
    ek_pool *pool1, *pool3;
    if (ek_pool_create(1, &pool1) != EK_OK || ek_pool_create(3, &pool3) != EK_OK) {
        fprintf(stderr, "FAIL: cannot create pools\n");
        return 1;
    }
    int tested = 0;
    for (int isa = EK_ISA_SCALAR; isa <= EK_ISA_NEON_DOTPROD; isa++) {
        if (env && *env && ek_isa_from_name(env) != isa) continue;
        if (!ek_isa_available(isa)) {
            CHECK(!(env && *env), "EDGESDK_ISA=%s is not available on this CPU", env);
            continue;
        }
        test_isa(isa, pool1, pool3);
        CHECK(ek_isa_set(isa) == EK_OK, "set isa");
        test_get_rows_and_vec_dot();
        printf("%s: tested\n", ek_isa_name(isa));
        tested++;
    }
    CHECK(tested > 0, "no ISA tested (EDGESDK_ISA=%s)", env ? env : "");
    ek_pool_free(pool1);
    ek_pool_free(pool3);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all kernel tests passed\n");
    return 0;
}
