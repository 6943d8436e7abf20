/* A persistent pool of n_threads - 1 pthreads plus the calling thread.
 *
 * A job is published by bumping `generation` under the mutex and broadcasting
 * `wake`. Workers spin briefly on the generation (token generation issues a
 * job every few tens of microseconds, and a sleep/wake round trip costs about
 * as much), then sleep on the condition variable: an idle pool burns no CPU.
 * The caller runs share 0 itself, then waits for `pending` to reach zero the
 * same way (short spin, then `done`).
 */
#define _GNU_SOURCE
#include "edgekern.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 50000 /* spin at most 50 us before sleeping */

struct ek_pool {
    int n_threads;
    pthread_t *workers; /* (n_threads - 1) */
    pthread_mutex_t lock;
    pthread_cond_t wake; /* workers: a new generation or shutdown */
    pthread_cond_t done; /* caller: pending reached 0 */
    atomic_uint_fast64_t generation;
    atomic_int pending; /* workers still running the current job */
    int shutdown;
    ek_task_fn fn;
    void *ctx;
};

typedef struct { ek_pool *pool; int ith; } worker_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("pause");
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Spin until *generation differs from seen (workers) or *pending is 0 (caller),
   for at most SPIN_NS; the callers then sleep on their condition variable.
   Time-based because a pause instruction costs 10 to 140 cycles by CPU. */
static void spin_until_changed(atomic_uint_fast64_t *generation, uint64_t seen) {
    const uint64_t deadline = now_ns() + SPIN_NS;
    for (int i = 1; atomic_load(generation) == seen; i++) {
        cpu_relax();
        if (i % 64 == 0 && now_ns() > deadline) return;
    }
}

static void spin_until_zero(atomic_int *pending) {
    const uint64_t deadline = now_ns() + SPIN_NS;
    for (int i = 1; atomic_load(pending) > 0; i++) {
        cpu_relax();
        if (i % 64 == 0 && now_ns() > deadline) return;
    }
}

static void *worker_main(void *arg_) {
    worker_arg arg = *(worker_arg *)arg_;
    free(arg_);
    ek_pool *p = arg.pool;
    uint64_t seen = 0;
    for (;;) {
        spin_until_changed(&p->generation, seen);
        pthread_mutex_lock(&p->lock);
        while (atomic_load(&p->generation) == seen && !p->shutdown) pthread_cond_wait(&p->wake, &p->lock);
        if (p->shutdown) {
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        seen = atomic_load(&p->generation);
        ek_task_fn fn = p->fn;
        void *ctx = p->ctx;
        pthread_mutex_unlock(&p->lock);

        fn(ctx, arg.ith, p->n_threads);

        if (atomic_fetch_sub(&p->pending, 1) == 1) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
}

int ek_default_threads(void) {
    char path[160];
    int n_cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n_cpus < 1) return 1;
    long max_capacity = -1;
    int count = 0;
    /* (package, core) pairs seen, to count SMT siblings once. */
    long *seen = calloc((size_t)n_cpus * 2, sizeof(long));
    if (!seen) return n_cpus;
    int n_seen = 0;
    for (int cpu = 0; cpu < n_cpus; cpu++) {
        long capacity = 0, core = cpu, package = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/cpu_capacity", cpu);
        FILE *f = fopen(path, "r");
        if (f) { if (fscanf(f, "%ld", &capacity) != 1) capacity = 0; fclose(f); }
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        if ((f = fopen(path, "r"))) { if (fscanf(f, "%ld", &core) != 1) core = cpu; fclose(f); }
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        if ((f = fopen(path, "r"))) { if (fscanf(f, "%ld", &package) != 1) package = 0; fclose(f); }
        if (capacity > max_capacity) { max_capacity = capacity; count = 0; n_seen = 0; }
        if (capacity < max_capacity) continue;
        int duplicate = 0;
        for (int i = 0; i < n_seen; i++)
            if (seen[2 * i] == package && seen[2 * i + 1] == core) duplicate = 1;
        if (duplicate) continue;
        seen[2 * n_seen] = package;
        seen[2 * n_seen + 1] = core;
        n_seen++;
        count++;
    }
    free(seen);
    return count > 0 ? count : n_cpus;
}

ek_status ek_pool_create(int n_threads, ek_pool **out) {
    *out = NULL;
    if (n_threads <= 0) n_threads = ek_default_threads();
    ek_pool *p = calloc(1, sizeof *p);
    if (!p) return EK_ERR_NO_MEMORY;
    p->n_threads = n_threads;
    if (n_threads > 1) {
        p->workers = calloc((size_t)(n_threads - 1), sizeof(pthread_t));
        if (!p->workers) { free(p); return EK_ERR_NO_MEMORY; }
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (arg) *arg = (worker_arg){p, i};
        if (!arg || pthread_create(&p->workers[i - 1], NULL, worker_main, arg) != 0) {
            const ek_status status = arg ? EK_ERR_THREADS : EK_ERR_NO_MEMORY;
            free(arg);
            p->n_threads = i; /* join only the ones started */
            ek_pool_free(p);
            return status;
        }
    }
    *out = p;
    return EK_OK;
}

void ek_pool_free(ek_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->shutdown = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_threads - 1; i++) pthread_join(pool->workers[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    free(pool->workers);
    free(pool);
}

int ek_pool_threads(const ek_pool *pool) { return pool ? pool->n_threads : 1; }

void ek_pool_run(ek_pool *pool, ek_task_fn fn, void *ctx) {
    if (!pool || pool->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store(&pool->pending, pool->n_threads - 1);
    atomic_fetch_add(&pool->generation, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);

    fn(ctx, 0, pool->n_threads);

    spin_until_zero(&pool->pending);
    pthread_mutex_lock(&pool->lock);
    while (atomic_load(&pool->pending) > 0) pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}
