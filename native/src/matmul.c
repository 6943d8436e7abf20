/* Quantized weights (ek_weight), the matrix product over the thread pool,
 * embedding row lookup, single-row dots, and the memory read-bandwidth probe.
 *
 * The product is cut into work items (an activation chunk x a row chunk whose
 * bounds are multiples of ROW_UNIT) that threads claim from a shared counter:
 * a thread the OS pauses (a busy device, a little core) leaves its share to
 * the others instead of holding everyone up. Each output element is computed
 * by exactly one thread with the same operations whatever the item bounds, so
 * results are bit-identical for any thread count and any claiming order.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* madvise's MADV_DONTNEED */
#include "kernels.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#define ROW_UNIT 16       /* row chunks are multiples of this; a multiple of 2 * EK_REPACK_ROWS */
#define ROW_CHUNK_MAX 64  /* rows of an item when there are plenty */
#define ITEMS_PER_THREAD 8 /* enough items that an early finisher can take over work */
#define ACT_CHUNK 64      /* activation rows per chunk: their q8 rows stay in L2 */
#define SIMD_ALIGN 64
#define REPACK_CHUNK_ROWS 4096 /* rows repacked between releases of their source pages; a multiple of 8 */

struct ek_weight {
    int type;
    int64_t n_rows, n_cols;
    size_t row_bytes;         /* bytes of one row in the GGUF layout */
    size_t packed_row_bytes;  /* row stride the repacked kernels take (1/8 of a group) */
    const void *data;         /* GGUF layout (not owned), or NULL when repacked */
    void *packed;             /* owned interleaved copy, or NULL */
    size_t packed_bytes;
    size_t packed_mapped;     /* bytes mapped for it by alloc_streamed, or 0 when from the heap */
    const ek_kernels *kernels; /* the ISA the weight was prepared for */
};

static void *aligned_alloc_bytes(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, SIMD_ALIGN, n ? n : SIMD_ALIGN) != 0) return NULL;
    return p;
}

#define HUGE_PAGE_BYTES ((size_t)2 << 20)

/* Memory streamed once per token (the repacked weights). On Linux it gets its own mapping,
   2 MiB aligned and advised into transparent huge pages: the TLB then covers it and the
   hardware prefetcher is not stopped at every 4 KiB page boundary. Only whole huge pages
   inside the mapping are used, so no page beyond the rounding to 4 KiB is committed.
   Elsewhere, or when the mapping fails, the heap. *mapped gets the bytes mapped (0: heap). */
static void *alloc_streamed(size_t n, size_t *mapped) {
    *mapped = 0;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const long page_size = sysconf(_SC_PAGESIZE);
    if (n >= HUGE_PAGE_BYTES && page_size > 0 && n <= SIZE_MAX - 2 * HUGE_PAGE_BYTES) {
        const size_t page = (size_t)page_size, len = (n + page - 1) / page * page;
        uint8_t *raw = mmap(NULL, len + HUGE_PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                            -1, 0);
        if (raw != MAP_FAILED) {
            uint8_t *p = (uint8_t *)(((uintptr_t)raw + HUGE_PAGE_BYTES - 1) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES);
            if (p > raw) (void)munmap(raw, (size_t)(p - raw));
            if (raw + HUGE_PAGE_BYTES > p) (void)munmap(p + len, (size_t)(raw + HUGE_PAGE_BYTES - p));
            (void)madvise(p, len, MADV_HUGEPAGE); /* advice: failure only keeps small pages */
            *mapped = len;
            return p;
        }
    }
#endif
    return aligned_alloc_bytes(n);
}

static void free_streamed(void *p, size_t mapped) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (mapped) { (void)munmap(p, mapped); return; }
#endif
    (void)mapped;
    free(p);
}

size_t ek_weight_repacked_bytes(int type, int64_t n_rows, int64_t n_cols, uint32_t flags) {
    const int64_t be = ek_type_block_elems(type);
    const ek_kernels *k = ek_kernels_active();
    if (!(flags & EK_WEIGHT_ALLOW_REPACK) || be == 0 || n_rows <= 0 || n_cols % be != 0 ||
        !ek_repack_supported(type) || !k->gemm_repacked[type])
        return 0;
    const int64_t n_groups = (n_rows + EK_REPACK_ROWS - 1) / EK_REPACK_ROWS;
    return (size_t)n_groups * ek_repack_slice_bytes(type) * (size_t)(n_cols / be);
}

/* Drop the resident pages wholly inside [p, p + n) of a read-only file mapping:
   the kernel re-reads them from the file if anything touches them again. Pages
   at the ends may hold a neighbouring tensor, so only the aligned interior goes. */
static void release_mapped_pages(const void *p, size_t n) {
#if (defined(__unix__) || defined(__APPLE__)) && defined(MADV_DONTNEED)
    const long page_size = sysconf(_SC_PAGESIZE);
    if (page_size <= 0) return;
    const uintptr_t page = (uintptr_t)page_size, begin = (uintptr_t)p, end = begin + n;
    const uintptr_t lo = (begin + page - 1) / page * page, hi = end / page * page;
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED); /* advice: failure only keeps pages */
#else
    (void)p, (void)n;
#endif
}

ek_status ek_weight_create(int type, int64_t n_rows, int64_t n_cols, const void *data, uint32_t flags,
                           ek_weight **out) {
    *out = NULL;
    const int64_t be = ek_type_block_elems(type);
    if (be == 0) return EK_ERR_UNSUPPORTED;
    if (n_rows <= 0 || n_cols <= 0 || n_cols % be != 0 || !data) return EK_ERR_INVALID_ARG;
    const ek_kernels *k = ek_kernels_active();
    if (!k->gemm[type]) return EK_ERR_UNSUPPORTED;
    ek_weight *w = calloc(1, sizeof *w);
    if (!w) return EK_ERR_NO_MEMORY;
    w->type = type;
    w->n_rows = n_rows;
    w->n_cols = n_cols;
    w->row_bytes = (size_t)(n_cols / be) * (size_t)ek_type_block_bytes(type);
    w->data = data;
    w->kernels = k;
    w->packed_bytes = ek_weight_repacked_bytes(type, n_rows, n_cols, flags);
    if (w->packed_bytes) {
        w->packed_row_bytes = ek_repack_slice_bytes(type) * (size_t)(n_cols / be) / EK_REPACK_ROWS;
        w->packed = alloc_streamed(w->packed_bytes, &w->packed_mapped);
        if (!w->packed) { free(w); return EK_ERR_NO_MEMORY; }
        /* In chunks of whole groups, each chunk's source pages released once it is copied, so a
           large tensor (a 262k-row output head) is never resident twice at once. */
        const size_t group_bytes = EK_REPACK_ROWS * w->packed_row_bytes;
        for (int64_t r0 = 0; r0 < n_rows; r0 += REPACK_CHUNK_ROWS) {
            const int64_t rows = n_rows - r0 < REPACK_CHUNK_ROWS ? n_rows - r0 : REPACK_CHUNK_ROWS;
            const uint8_t *src = (const uint8_t *)data + (size_t)r0 * w->row_bytes;
            ek_repack(type, src, rows, n_cols, (uint8_t *)w->packed + (size_t)(r0 / EK_REPACK_ROWS) * group_bytes);
            if (flags & EK_WEIGHT_RELEASE_SOURCE) release_mapped_pages(src, (size_t)rows * w->row_bytes);
        }
        w->data = NULL;
    }
    *out = w;
    return EK_OK;
}

void ek_weight_free(ek_weight *w) {
    if (!w) return;
    free_streamed(w->packed, w->packed_mapped);
    free(w);
}

size_t ek_weight_owned_bytes(const ek_weight *w) { return w->packed ? w->packed_bytes : 0; }

int ek_weight_isa(const ek_weight *w) { return w->kernels->isa; }

/* ------------------------------------------------------------ matmul */

/* One weight of a job and where its items start in the job's item numbering. */
typedef struct {
    const ek_weight *w;
    float *y;                   /* (m, w->n_rows) */
    int64_t row_chunk;          /* rows per work item, a multiple of ROW_UNIT */
    int64_t n_row_chunks;
    int64_t first_item, end_item;
} matmul_part;

/* Products of up to EK_MATMUL_MAX_PARTS weights with the same input x, one
   quantized copy of x and one pool run for all of them. */
typedef struct {
    matmul_part part[EK_MATMUL_MAX_PARTS];
    int n_parts;
    const float *x;  /* (m, n_cols) */
    void *xq;        /* (m, act_row_bytes): x in the weights' activation format */
    size_t act_row_bytes;
    int64_t m, n_cols;
    int type;        /* of part 0: picks the activation format */
    int64_t n_items;
    atomic_int_fast64_t next_item; /* items are claimed in order: part, then activation chunk major */
} matmul_job;

static void split(int64_t n_units, int ith, int nth, int64_t *u0, int64_t *u1) {
    *u0 = n_units * ith / nth;
    *u1 = n_units * (ith + 1) / nth;
}

static void quantize_task(void *ctx, int ith, int nth) {
    matmul_job *job = ctx;
    const ek_kernels *k = job->part[0].w->kernels;
    const ek_quantize_act_fn quantize =
        ek_act_format_for(job->type) == EK_ACT_Q8_K ? k->quantize_q8_k : k->quantize_q8_32;
    int64_t i0, i1;
    split(job->m, ith, nth, &i0, &i1);
    for (int64_t i = i0; i < i1; i++)
        quantize(job->x + i * job->n_cols, (uint8_t *)job->xq + (size_t)i * job->act_row_bytes, job->n_cols);
}

static void gemm_task(void *ctx, int ith, int nth) {
    (void)ith, (void)nth;
    matmul_job *job = ctx;
    int p = 0;
    for (int64_t item; (item = atomic_fetch_add(&job->next_item, 1)) < job->n_items;) {
        while (item >= job->part[p].end_item) p++; /* claimed items only increase */
        const matmul_part *part = &job->part[p];
        const ek_weight *w = part->w;
        const ek_gemm_fn gemm = w->packed ? w->kernels->gemm_repacked[w->type] : w->kernels->gemm[w->type];
        const void *wdata = w->packed ? w->packed : w->data;
        const int64_t local = item - part->first_item;
        const int64_t i0 = local / part->n_row_chunks * ACT_CHUNK, r0 = local % part->n_row_chunks * part->row_chunk;
        const int64_t mi = job->m - i0 < ACT_CHUNK ? job->m - i0 : ACT_CHUNK;
        const int64_t r1 = r0 + part->row_chunk < w->n_rows ? r0 + part->row_chunk : w->n_rows;
        gemm(wdata, w->packed ? w->packed_row_bytes : w->row_bytes,
             (const uint8_t *)job->xq + (size_t)i0 * job->act_row_bytes, job->act_row_bytes,
             part->y + i0 * w->n_rows, w->n_rows, r0, r1, mi, w->n_cols);
    }
}

/* Rows per item: at most ROW_CHUNK_MAX, small enough for ITEMS_PER_THREAD items each. */
static int64_t row_chunk_for(int64_t n_rows, int64_t n_act_chunks, int n_threads) {
    const int64_t want_row_chunks = (ITEMS_PER_THREAD * (int64_t)n_threads + n_act_chunks - 1) / n_act_chunks;
    int64_t chunk = (n_rows + want_row_chunks - 1) / want_row_chunks;
    chunk = (chunk + ROW_UNIT - 1) / ROW_UNIT * ROW_UNIT;
    return chunk < ROW_CHUNK_MAX ? chunk : ROW_CHUNK_MAX;
}

ek_status ek_matmul_shared_input(const ek_weight *const *ws, float *const *ys, int n_weights, const float *x,
                                 int64_t m, ek_pool *pool) {
    if (m <= 0 || n_weights <= 0 || n_weights > EK_MATMUL_MAX_PARTS) return EK_ERR_INVALID_ARG;
    const int type = ws[0]->type;
    for (int p = 1; p < n_weights; p++) {
        /* Different activation formats need separate quantized inputs: one product at a time. */
        if (ws[p]->n_cols != ws[0]->n_cols || ek_act_format_for(ws[p]->type) != ek_act_format_for(type)) {
            for (int q = 0; q < n_weights; q++) {
                const ek_status st = ek_matmul_shared_input(&ws[q], &ys[q], 1, x, m, pool);
                if (st != EK_OK) return st;
            }
            return EK_OK;
        }
    }
    matmul_job job = {.n_parts = n_weights, .x = x, .act_row_bytes = ek_act_row_bytes(type, ws[0]->n_cols),
                      .m = m, .n_cols = ws[0]->n_cols, .type = type};
    const int64_t n_act_chunks = (m + ACT_CHUNK - 1) / ACT_CHUNK;
    for (int p = 0; p < n_weights; p++) {
        matmul_part *part = &job.part[p];
        part->w = ws[p];
        part->y = ys[p];
        part->row_chunk = row_chunk_for(ws[p]->n_rows, n_act_chunks, ek_pool_threads(pool));
        part->n_row_chunks = (ws[p]->n_rows + part->row_chunk - 1) / part->row_chunk;
        part->first_item = job.n_items;
        job.n_items += n_act_chunks * part->n_row_chunks;
        part->end_item = job.n_items;
    }
    atomic_init(&job.next_item, 0);
    void *scratch = NULL;
    if (ek_act_format_for(type) == EK_ACT_F32) {
        job.xq = (void *)x;
    } else {
        scratch = aligned_alloc_bytes((size_t)m * job.act_row_bytes);
        if (!scratch) return EK_ERR_NO_MEMORY;
        job.xq = scratch;
        if (m == 1) quantize_task(&job, 0, 1); /* not worth waking the pool */
        else ek_pool_run(pool, quantize_task, &job);
    }
    ek_pool_run(pool, gemm_task, &job);
    free(scratch);
    return EK_OK;
}

ek_status ek_matmul(const ek_weight *w, const float *x, int64_t m, float *y, ek_pool *pool) {
    return ek_matmul_shared_input(&w, &y, 1, x, m, pool);
}

/* ---------------------------------------------------- rows and dots */

ek_status ek_weight_get_rows(const ek_weight *w, const int32_t *ids, int64_t n, float *out) {
    void *row = NULL;
    if (w->packed && !(row = malloc(w->row_bytes))) return EK_ERR_NO_MEMORY;
    ek_status status = EK_OK;
    for (int64_t i = 0; i < n && status == EK_OK; i++) {
        if (ids[i] < 0 || ids[i] >= w->n_rows) { status = EK_ERR_INVALID_ARG; break; }
        const void *src;
        if (w->packed) {
            ek_unpack_row(w->type, w->packed, ids[i], w->n_cols, row);
            src = row;
        } else {
            src = (const uint8_t *)w->data + (size_t)ids[i] * w->row_bytes;
        }
        status = ek_dequantize(w->type, src, out + i * w->n_cols, w->n_cols);
    }
    free(row);
    return status;
}

ek_status ek_vec_dot(int type, const void *w, const float *x, int64_t n, float *out) {
    const int64_t be = ek_type_block_elems(type);
    if (be == 0) return EK_ERR_UNSUPPORTED;
    if (n <= 0 || n % be != 0) return EK_ERR_INVALID_ARG;
    ek_weight *weight;
    ek_status status = ek_weight_create(type, 1, n, w, 0, &weight);
    if (status != EK_OK) return status;
    status = ek_matmul(weight, x, 1, out, NULL);
    ek_weight_free(weight);
    return status;
}

/* ------------------------------------------------------ bandwidth */

/* Each thread reads its share as READ_STREAMS equal runs side by side, a line of each
   in turn: with several sequential streams a core keeps more lines in flight than with
   one (benchmarks/RESULTS_kernels.md), and the GEMV kernels read several row groups side
   by side the same way. */
#define READ_STREAMS 4

typedef struct {
    const uint8_t *buf;
    size_t bytes;
    uint64_t (*read_sum)(const uint8_t *const *, int, size_t);
    uint64_t sums[256]; /* per thread, so the reads are not optimized away */
} read_job;

static void read_task(void *ctx, int ith, int nth) {
    read_job *job = ctx;
    const size_t n_lines = job->bytes / 64;
    const size_t l0 = n_lines * (size_t)ith / (size_t)nth, l1 = n_lines * (size_t)(ith + 1) / (size_t)nth;
    const size_t run = (l1 - l0) / READ_STREAMS; /* lines per stream; the few left over as one stream */
    const uint8_t *streams[READ_STREAMS];
    for (int k = 0; k < READ_STREAMS; k++) streams[k] = job->buf + (l0 + (size_t)k * run) * 64;
    const uint8_t *rest = job->buf + (l0 + READ_STREAMS * run) * 64;
    job->sums[ith % 256] += job->read_sum(streams, READ_STREAMS, run * 64) +
                            job->read_sum(&rest, 1, (l1 - l0 - READ_STREAMS * run) * 64);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double ek_measure_read_bandwidth(size_t bytes, int repeats, ek_pool *pool) {
    bytes -= bytes % 64;
    if (bytes == 0 || repeats <= 0) return 0.0;
    size_t mapped; /* the same kind of memory as the weights it bounds */
    uint8_t *buf = alloc_streamed(bytes, &mapped);
    double *times = malloc((size_t)repeats * sizeof(double));
    if (!buf || !times) { if (buf) free_streamed(buf, mapped); free(times); return 0.0; }
    memset(buf, 1, bytes); /* fault every page in before timing */
    read_job job = {buf, bytes, ek_kernels_active()->read_sum, {0}};
    ek_pool_run(pool, read_task, &job); /* warm-up pass */
    for (int i = 0; i < repeats; i++) {
        const double t0 = now_seconds();
        ek_pool_run(pool, read_task, &job);
        times[i] = now_seconds() - t0;
    }
    qsort(times, (size_t)repeats, sizeof(double), compare_doubles);
    const double median = repeats % 2 ? times[repeats / 2] : 0.5 * (times[repeats / 2 - 1] + times[repeats / 2]);
    free_streamed(buf, mapped);
    free(times);
    return median > 0.0 ? (double)bytes / median : 0.0;
}
