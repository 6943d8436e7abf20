/* Real model weights on the active family (EDGESDK_ISA): rows sliced from the GGUF files of
 * SmolLM2 and Gemma-3 by tests/test_native_arm.py, with float64 expectations and error bounds
 * it computed with numpy, are multiplied here by ek_matmul (plain and repacked, 1 and 2
 * threads) and compared. Usage: test_arm_gguf_rows CASES_FILE
 *
 * CASES_FILE, little-endian: "EKRW", u32 n_cases, then per case:
 *   char name[48] (NUL-padded), i32 type, i64 n_rows, i64 n_cols, i64 m, u64 weight_bytes,
 *   u8 weight[weight_bytes], f32 x[m][n_cols], f64 expected[m][n_rows], f64 bound[m][n_rows]
 */
#include "arm_check.h"
#include "edgekern.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char name[49];
    int32_t type;
    int64_t n_rows, n_cols, m;
    uint64_t weight_bytes;
    uint8_t *weight; /* (n_rows, row bytes) */
    float *x;        /* (m, n_cols) */
    double *expected, *bound; /* (m, n_rows) */
} rows_case;

static int read_exact(FILE *f, void *dst, size_t n) { return fread(dst, 1, n, f) == n; }

static void *read_array(FILE *f, size_t n) {
    void *p = malloc(n ? n : 1);
    if (p && !read_exact(f, p, n)) {
        free(p);
        return NULL;
    }
    return p;
}

/* Reads one case; 0 on a malformed or truncated file. */
static int read_case(FILE *f, rows_case *c) {
    memset(c, 0, sizeof *c);
    if (!read_exact(f, c->name, 48) || !read_exact(f, &c->type, 4) || !read_exact(f, &c->n_rows, 8) ||
        !read_exact(f, &c->n_cols, 8) || !read_exact(f, &c->m, 8) || !read_exact(f, &c->weight_bytes, 8))
        return 0;
    if (c->n_rows <= 0 || c->n_cols <= 0 || c->m <= 0 || c->n_rows > (1 << 20) || c->n_cols > (1 << 20) ||
        c->m > 4096 || c->weight_bytes > (1u << 30))
        return 0;
    c->weight = read_array(f, c->weight_bytes);
    c->x = read_array(f, (size_t)(c->m * c->n_cols) * sizeof(float));
    c->expected = read_array(f, (size_t)(c->m * c->n_rows) * sizeof(double));
    c->bound = read_array(f, (size_t)(c->m * c->n_rows) * sizeof(double));
    return c->weight && c->x && c->expected && c->bound;
}

static void free_case(rows_case *c) {
    free(c->weight);
    free(c->x);
    free(c->expected);
    free(c->bound);
}

static void check_case(const rows_case *c, uint32_t flags, int threads) {
    const int64_t n_out = c->m * c->n_rows;
    float *y = malloc((size_t)n_out * sizeof(float));
    for (int64_t i = 0; i < n_out; i++) y[i] = NAN;
    ek_weight *w = NULL;
    ek_pool *pool = NULL;
    ek_status st = ek_weight_create(c->type, c->n_rows, c->n_cols, c->weight, flags, &w);
    if (st == EK_OK && threads > 1) st = ek_pool_create(threads, &pool);
    if (st == EK_OK) st = ek_matmul(w, c->x, c->m, y, pool);
    CHECK(st == EK_OK, "%s: status %d", c->name, st);
    int failures = 0;
    for (int64_t i = 0; i < n_out && st == EK_OK; i++) {
        const int ok = fabs(y[i] - c->expected[i]) <= c->bound[i];
        failures += !ok;
        if (ok || failures <= 3)
            CHECK(ok, "%s (%lldx%lld, m=%lld, flags %u, %d threads) y[%lld, %lld] = %.9g, numpy %.9g, bound %.3g",
                  c->name, (long long)c->n_rows, (long long)c->n_cols, (long long)c->m, flags, threads,
                  (long long)(i / c->n_rows), (long long)(i % c->n_rows), y[i], c->expected[i], c->bound[i]);
    }
    ek_pool_free(pool);
    ek_weight_free(w);
    free(y);
}

int main(int argc, char **argv) {
    const char *isa_env = getenv("EDGESDK_ISA");
    if (argc != 2 || !isa_env) {
        fprintf(stderr, "usage: EDGESDK_ISA=<family> test_arm_gguf_rows CASES_FILE\n");
        return 2;
    }
    CHECK(ek_isa_from_name(isa_env) == ek_isa_current(), "EDGESDK_ISA=%s but the library runs %s", isa_env,
          ek_isa_name(ek_isa_current()));
    FILE *f = fopen(argv[1], "rb");
    char magic[4] = {0};
    uint32_t n_cases = 0;
    CHECK(f && read_exact(f, magic, 4) && memcmp(magic, "EKRW", 4) == 0 && read_exact(f, &n_cases, 4),
          "%s is not a cases file", argv[1]);
    for (uint32_t k = 0; f && k < n_cases; k++) {
        rows_case c;
        const int ok = read_case(f, &c);
        CHECK(ok, "case %u of %s is truncated or malformed", k, argv[1]);
        if (ok) {
            check_case(&c, 0, 1);
            check_case(&c, EK_WEIGHT_ALLOW_REPACK, 2);
        }
        free_case(&c);
        if (!ok) break;
    }
    if (f) fclose(f);
    CHECK(n_cases > 0, "no cases in %s", argv[1]);
    char title[64];
    snprintf(title, sizeof title, "test_arm_gguf_rows (%s, %u tensors)", isa_env, n_cases);
    return check_summary(title);
}
