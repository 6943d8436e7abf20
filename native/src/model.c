/* The inference engine: one forward pass for the llama family (llama, qwen2)
 * and gemma3, on the kernel layer's ek_matmul, the ops of its kernel table and ops.c's RoPE and KV rows.
 *
 * Names follow llama2.c once mapped here:
 *   x    (n, n_embd)          residual stream of the n tokens in this batch
 *   xb   (n, n_embd)          normed input of a block, then a block's output
 *   q    (n, n_head*hd)       queries; k, v (n, n_head_kv*hd) keys and values
 *   att  (n, n_head*hd)       attention output before the output projection
 *   hb, hb2 (n, n_ff)         gate and up projections of the feed-forward block
 *   attn_scratch (n_threads, ek_attention_scratch_floats) one attention tile's scratch per worker
 *   rope (2, n, n_rot)        cos|sin of each position, for global then sliding layers
 * The KV cache holds n_seq sequences of n_ctx positions each. A pass takes up to n_batch
 * rows, row i being token row_ids[i] of sequence row_seq[i] at position row_pos[i]: the
 * matrix products see every row at once (one decode step of N sequences is a GEMM with
 * m = N), while RoPE, the cache rows written and the positions attended are each row's own.
 * A prompt goes through in passes of at most n_batch tokens (GEMM, m > 1); generation of
 * one sequence is the same path with n = 1 (GEMV).
 */
#include "edgekern.h"
#include "kernels.h" /* ek_act_row_bytes, ek_matmul_shared_input: one job for Q/K/V and gate/up */
#include "ops_internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct layer {
    ek_weight *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
    const float *attn_norm, *q_bias, *k_bias, *v_bias, *q_norm, *k_norm;
    const float *post_attn_norm, *ffn_norm, *post_ffn_norm;
    int is_swa;
} layer;

struct ek_model {
    ek_model_desc d; /* copy; d.layers is not kept */
    ek_pool *pool;
    const ek_kernels *kernels; /* the active ISA's table at creation: the ops run on the weights' ISA */
    ek_weight *tok_embd, *output; /* output == tok_embd when tied */
    const float *output_norm;
    layer *layers;
    int64_t kv_dim;          /* n_head_kv * head_dim */
    int64_t kv_row_bytes;    /* one position of one layer's K (or V) */
    int64_t kv_head_bytes;   /* one head's slice of such a row */
    uint8_t *k_cache, *v_cache; /* (n_layer, n_seq, n_ctx, kv_row_bytes) */
    float *scratch;             /* one block holding the buffers below */
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2, *attn_scratch, *rope;
    int64_t attn_scratch_floats; /* per worker */
    int32_t *row_ids, *row_seq, *row_pos; /* (n_batch) each: the rows of one pass */
    int32_t *out_rows;                    /* (n_batch) rows of the pass whose logits are asked */
    ops_rope_scaling rope_global, rope_sliding; /* angle scaling of global / sliding-window layers */
    uint64_t weights_owned, weights_mapped; /* as ek_model_memory_needs counts them */
    uint64_t matmul_act_bytes;
    double *act_sums; /* NULL, or the caller's ek_model_activation_sums_len() sums (see the header) */
    atomic_int abort_requested; /* set by ek_model_abort, seen between layers and attention tiles */
};

/* ------------------------------------------------------------ sizes */

static int64_t q_dim(const ek_model_desc *d) { return (int64_t)d->n_head * d->head_dim; }
static int64_t kv_dim(const ek_model_desc *d) { return (int64_t)d->n_head_kv * d->head_dim; }

/* Float counts of each scratch buffer, rounded up to 64 bytes so every buffer stays aligned. */
static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* An attention tile is up to ATTN_TILE_QUERIES queries sharing one KV head: heads of a GQA
   group, for several tokens, so each K and V row read serves all of them. */
#define ATTN_TILE_QUERIES 32

static int64_t attn_scratch_floats(const ek_model_desc *d) {
    return round16(ek_attention_scratch_floats(ATTN_TILE_QUERIES, d->head_dim));
}

static int64_t scratch_floats(const ek_model_desc *d) {
    const int64_t nb = d->n_batch;
    return 2 * round16(nb * d->n_embd) + 2 * round16(nb * q_dim(d)) + 2 * round16(nb * kv_dim(d)) +
           2 * round16(nb * d->n_ff) + (int64_t)d->n_threads * attn_scratch_floats(d) + round16(2 * nb * d->n_rot) +
           4 * round16(nb); /* the int32 row arrays, float-sized */
}

static uint64_t kv_cache_bytes(const ek_model_desc *d) {
    return 2ull * (uint64_t)d->n_layer * (uint64_t)d->n_seq * (uint64_t)d->n_ctx *
           (uint64_t)ek_kv_row_bytes(d->kv_type, kv_dim(d));
}

/* ek_matmul quantizes its input into a buffer it allocates per call: the largest
   one (n_batch rows of the widest activation format) is part of the engine's peak. */
static uint64_t matmul_act_bytes(const ek_model_desc *d) {
    uint64_t worst = 0;
    const ek_tensor_desc *heads[] = {&d->tok_embd, &d->output};
    for (int i = 0; i < 2; i++)
        if (heads[i]->data && ek_act_format_for(heads[i]->type) != EK_ACT_F32) {
            const uint64_t b = ek_act_row_bytes(heads[i]->type, heads[i]->n_cols);
            worst = b > worst ? b : worst;
        }
    for (int64_t t = 0; d->layers && t < (int64_t)d->n_layer * EK_LT_COUNT; t++) {
        const ek_tensor_desc *w = &d->layers[t];
        if (!w->data || w->n_rows <= 1 || ek_act_format_for(w->type) == EK_ACT_F32) continue;
        const uint64_t b = ek_act_row_bytes(w->type, w->n_cols);
        worst = b > worst ? b : worst;
    }
    return worst * (uint64_t)d->n_batch;
}

/* Matrix bytes of desc split into repacked copies (owned) and what stays mapped. */
static void weight_bytes(const ek_model_desc *d, uint64_t *owned, uint64_t *mapped) {
    *owned = *mapped = 0;
    const ek_tensor_desc *heads[] = {&d->tok_embd, &d->output};
    const int64_t n_layer_tensors = d->layers ? (int64_t)d->n_layer * EK_LT_COUNT : 0;
    for (int64_t t = -2; t < n_layer_tensors; t++) {
        const ek_tensor_desc *w = t < 0 ? heads[t + 2] : &d->layers[t];
        const int64_t be = ek_type_block_elems(w->type);
        if (!w->data || w->n_rows <= 1 || be == 0) continue; /* absent, or a vector */
        const uint32_t flags = t == -2 && d->output.data ? 0 : d->weight_flags; /* see embd_flags */
        const size_t packed = ek_weight_repacked_bytes(w->type, w->n_rows, w->n_cols, flags);
        if (packed) *owned += packed;
        else *mapped += (uint64_t)w->n_rows * (uint64_t)(w->n_cols / be) * (uint64_t)ek_type_block_bytes(w->type);
    }
}

ek_status ek_model_memory_needs(const ek_model_desc *desc, ek_model_memory *out) {
    if (!desc || !out) return EK_ERR_INVALID_ARG;
    out->kv_cache = kv_cache_bytes(desc);
    out->scratch = (uint64_t)scratch_floats(desc) * sizeof(float) + matmul_act_bytes(desc);
    weight_bytes(desc, &out->weights_owned, &out->weights_mapped);
    return EK_OK;
}

/* ------------------------------------------------------- create / free */

/* One matrix to prepare at create: repacking copies every byte of the file's
   tensors, so the matrices are shared out over the pool (claimed one at a time:
   sizes differ by 100x, from a KV projection to the output head). */
typedef struct {
    const ek_tensor_desc *t;
    uint32_t flags;
    ek_weight **out;
} weight_slot;

typedef struct {
    weight_slot *slots;
    int64_t n_slots;
    atomic_int_fast64_t next;
    atomic_int failed; /* an ek_status; the first failure stops the others claiming */
} weight_job;

static void make_weights_task(void *ctx, int ith, int nth) {
    (void)ith, (void)nth;
    weight_job *job = ctx;
    for (int64_t i; atomic_load(&job->failed) == EK_OK && (i = atomic_fetch_add(&job->next, 1)) < job->n_slots;) {
        const weight_slot *s = &job->slots[i];
        if (!s->t->data) continue;
        const ek_status st = ek_weight_create(s->t->type, s->t->n_rows, s->t->n_cols, s->t->data,
                                              s->flags, s->out);
        if (st != EK_OK) {
            int expected = EK_OK;
            atomic_compare_exchange_strong(&job->failed, &expected, (int)st);
        }
    }
}

static const float *vec(const ek_tensor_desc *t) { return (const float *)t->data; }

void ek_model_free(ek_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int il = 0; il < m->d.n_layer; il++) {
            layer *L = &m->layers[il];
            ek_weight *ws[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) ek_weight_free(ws[i]);
        }
        free(m->layers);
    }
    if (m->output != m->tok_embd) ek_weight_free(m->output);
    ek_weight_free(m->tok_embd);
    ek_pool_free(m->pool);
    free(m->k_cache);
    free(m->v_cache);
    free(m->scratch);
    free(m);
}

ek_status ek_model_create(const ek_model_desc *desc, ek_model **out) {
    *out = NULL;
    if (desc->kv_type != EK_TYPE_F16 && desc->kv_type != EK_TYPE_Q8_0) return EK_ERR_UNSUPPORTED;
    if (desc->head_dim > 1024 || desc->n_rot > desc->head_dim || desc->n_seq < 1) return EK_ERR_INVALID_ARG;
    if (desc->kv_type == EK_TYPE_Q8_0 && desc->head_dim % 32) return EK_ERR_UNSUPPORTED;
    if (desc->yarn_ext_factor != 0.0f &&
        !(desc->yarn_n_ctx_orig > 0 && desc->yarn_beta_fast > 0.0f && desc->yarn_beta_slow > 0.0f))
        return EK_ERR_INVALID_ARG; /* the correction range would be a log of <= 0 */
    ek_model *m = calloc(1, sizeof *m);
    if (!m) return EK_ERR_NO_MEMORY;
    m->d = *desc;
    m->d.layers = NULL;
    m->kernels = ek_kernels_active();
    m->matmul_act_bytes = matmul_act_bytes(desc);
    ops_rope_scalings(desc, &m->rope_global, &m->rope_sliding);
    uint64_t planned_owned;
    weight_bytes(desc, &planned_owned, &m->weights_mapped);
    ek_status st = ek_pool_create(desc->n_threads, &m->pool);
    if (st != EK_OK) goto fail;

    const uint32_t flags = desc->weight_flags;
    /* An embedding that is not also the output head is only read a few rows per batch:
       repacking it would make all of it resident for no faster product. */
    const uint32_t embd_flags = desc->output.data ? 0 : flags;
    m->layers = calloc((size_t)desc->n_layer, sizeof(layer));
    weight_slot *slots = malloc((size_t)(2 + 7 * (int64_t)desc->n_layer) * sizeof *slots);
    if (!m->layers || !slots) { free(slots); st = EK_ERR_NO_MEMORY; goto fail; }
    weight_job job = {.slots = slots};
    /* the biggest first (output head, embedding): the others fill in around them */
    slots[job.n_slots++] = (weight_slot){&desc->output, flags, &m->output};
    slots[job.n_slots++] = (weight_slot){&desc->tok_embd, embd_flags, &m->tok_embd};
    for (int il = 0; il < desc->n_layer; il++) {
        const ek_tensor_desc *t = desc->layers + (size_t)il * EK_LT_COUNT;
        layer *L = &m->layers[il];
        ek_weight **mats[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        const int idx[] = {EK_LT_Q, EK_LT_K, EK_LT_V, EK_LT_O, EK_LT_GATE, EK_LT_UP, EK_LT_DOWN};
        for (int i = 0; i < 7; i++) slots[job.n_slots++] = (weight_slot){&t[idx[i]], flags, mats[i]};
    }
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, EK_OK);
    ek_pool_run(m->pool, make_weights_task, &job);
    /* each slot is a distinct weight (a tied head has no slot of its own) */
    for (int64_t i = 0; i < job.n_slots; i++)
        if (*slots[i].out) m->weights_owned += ek_weight_owned_bytes(*slots[i].out);
    free(slots);
    /* created weights are freed by ek_model_free whatever failed */
    if ((st = (ek_status)atomic_load(&job.failed)) != EK_OK) goto fail;
    if (!desc->output.data) m->output = m->tok_embd;
    m->output_norm = vec(&desc->output_norm);

    for (int il = 0; il < desc->n_layer; il++) {
        const ek_tensor_desc *t = desc->layers + (size_t)il * EK_LT_COUNT;
        layer *L = &m->layers[il];
        L->attn_norm = vec(&t[EK_LT_ATTN_NORM]);
        L->q_bias = vec(&t[EK_LT_Q_BIAS]);
        L->k_bias = vec(&t[EK_LT_K_BIAS]);
        L->v_bias = vec(&t[EK_LT_V_BIAS]);
        L->q_norm = vec(&t[EK_LT_Q_NORM]);
        L->k_norm = vec(&t[EK_LT_K_NORM]);
        L->post_attn_norm = vec(&t[EK_LT_POST_ATTN_NORM]);
        L->ffn_norm = vec(&t[EK_LT_FFN_NORM]);
        L->post_ffn_norm = vec(&t[EK_LT_POST_FFN_NORM]);
        L->is_swa = desc->n_swa > 0 && desc->swa_pattern > 0 && (il + 1) % desc->swa_pattern != 0;
    }

    m->kv_dim = kv_dim(desc);
    m->kv_row_bytes = ek_kv_row_bytes(desc->kv_type, m->kv_dim);
    m->kv_head_bytes = ek_kv_row_bytes(desc->kv_type, desc->head_dim);
    /* malloc, not calloc+touch: pages of positions never used stay unmapped. */
    const size_t kv_bytes = (size_t)desc->n_layer * (size_t)desc->n_seq * (size_t)desc->n_ctx * (size_t)m->kv_row_bytes;
    m->k_cache = malloc(kv_bytes);
    m->v_cache = malloc(kv_bytes);
    const size_t scratch_bytes = (size_t)scratch_floats(desc) * sizeof(float);
    m->scratch = aligned_alloc(64, (scratch_bytes + 63) / 64 * 64);
    if (!m->k_cache || !m->v_cache || !m->scratch) { st = EK_ERR_NO_MEMORY; goto fail; }

    const int64_t nb = desc->n_batch;
    float *p = m->scratch;
    m->x = p;   p += round16(nb * desc->n_embd);
    m->xb = p;  p += round16(nb * desc->n_embd);
    m->q = p;   p += round16(nb * q_dim(desc));
    m->att = p; p += round16(nb * q_dim(desc));
    m->k = p;   p += round16(nb * m->kv_dim);
    m->v = p;   p += round16(nb * m->kv_dim);
    m->hb = p;  p += round16(nb * desc->n_ff);
    m->hb2 = p; p += round16(nb * desc->n_ff);
    m->attn_scratch = p; p += (int64_t)desc->n_threads * attn_scratch_floats(desc);
    m->attn_scratch_floats = attn_scratch_floats(desc);
    m->rope = p;   p += round16(2 * nb * desc->n_rot);
    m->row_ids = (int32_t *)p;  p += round16(nb);
    m->row_seq = (int32_t *)p;  p += round16(nb);
    m->row_pos = (int32_t *)p;  p += round16(nb);
    m->out_rows = (int32_t *)p;
    *out = m;
    return EK_OK;
fail:
    ek_model_free(m);
    return st;
}

void ek_model_memory_used(const ek_model *m, ek_model_memory *out) {
    out->kv_cache = kv_cache_bytes(&m->d);
    out->scratch = (uint64_t)scratch_floats(&m->d) * sizeof(float) + m->matmul_act_bytes;
    out->weights_owned = m->weights_owned;
    out->weights_mapped = m->weights_mapped;
}

/* ------------------------------------------------------------ attention */

/* Position 0 of sequence seq in layer il of cache (m->k_cache or m->v_cache). */
static uint8_t *kv_rows(const ek_model *m, uint8_t *cache, int il, int32_t seq) {
    return cache + ((size_t)il * (size_t)m->d.n_seq + (size_t)seq) * (size_t)m->d.n_ctx * (size_t)m->kv_row_bytes;
}

typedef struct attn_job {
    ek_model *m;
    int il;
    int64_t n;
    int64_t tok_per_tile, heads_per_tile, n_tok_tiles, n_head_tiles; /* n_head_tiles per KV head */
} attn_job;

/* Tiles of the n rows: heads_per_tile heads of a group for tok_per_tile rows. The group is
   split over tiles only when whole groups would leave workers idle (generation on few KV heads). */
static attn_job attn_plan(ek_model *m, int il, int64_t n) {
    const ek_model_desc *d = &m->d;
    const int64_t group = d->n_head / d->n_head_kv;
    attn_job job = {m, il, n, 0, 0, 0, 0};
    for (int64_t split = (group + ATTN_TILE_QUERIES - 1) / ATTN_TILE_QUERIES;; split++) {
        job.heads_per_tile = (group + split - 1) / split;
        job.n_head_tiles = (group + job.heads_per_tile - 1) / job.heads_per_tile;
        job.tok_per_tile = ATTN_TILE_QUERIES / job.heads_per_tile;
        job.n_tok_tiles = (n + job.tok_per_tile - 1) / job.tok_per_tile;
        if (job.n_tok_tiles * job.n_head_tiles * d->n_head_kv >= d->n_threads || job.heads_per_tile == 1) return job;
    }
}

/* Tiles are dealt round-robin, late (long causal) token tiles first in each round. A tile's rows
   may belong to several sequences (one decode row each): each run of one sequence's rows is one
   kernel call on that sequence's cache, positions lo..row_pos[i]. */
static void attn_task(void *ctx, int ith, int nth) {
    const attn_job *job = ctx;
    ek_model *m = job->m;
    const ek_model_desc *d = &m->d;
    const layer *L = &m->layers[job->il];
    const int64_t hd = d->head_dim, group = d->n_head / d->n_head_kv;
    float *scratch = m->attn_scratch + (size_t)ith * m->attn_scratch_floats;
    const ek_attention_fn attend = d->kv_type == EK_TYPE_Q8_0 ? m->kernels->attention_q8_0 : m->kernels->attention_f16;
    const float *q[ATTN_TILE_QUERIES];
    float *out[ATTN_TILE_QUERIES];
    int64_t lo[ATTN_TILE_QUERIES], hi[ATTN_TILE_QUERIES];
    const int64_t per_kv = job->n_tok_tiles * job->n_head_tiles;
    for (int64_t item = ith; item < per_kv * d->n_head_kv; item += nth) {
        /* a long prompt's attention is most of a layer: an abort is seen between tiles too */
        if (atomic_load_explicit(&m->abort_requested, memory_order_relaxed)) return;
        const int64_t kvh = item % d->n_head_kv, rest = item / d->n_head_kv;
        const int64_t tt = job->n_tok_tiles - 1 - rest / job->n_head_tiles, ht = rest % job->n_head_tiles;
        const int64_t h0 = kvh * group + ht * job->heads_per_tile;
        const int64_t h1 = h0 + job->heads_per_tile < (kvh + 1) * group ? h0 + job->heads_per_tile : (kvh + 1) * group;
        const int64_t t0 = tt * job->tok_per_tile, t1 = t0 + job->tok_per_tile < job->n ? t0 + job->tok_per_tile : job->n;
        const size_t head_off = (size_t)kvh * m->kv_head_bytes;
        for (int64_t r0 = t0, r1; r0 < t1; r0 = r1) {
            const int32_t seq = m->row_seq[r0];
            for (r1 = r0 + 1; r1 < t1 && m->row_seq[r1] == seq; r1++) {}
            int64_t n_q = 0;
            for (int64_t i = r0; i < r1; i++) {
                const int64_t pos = m->row_pos[i];
                /* Sliding window: positions pos - n_swa + 1 .. pos (llama.cpp masks p_q - p_k >= n_swa). */
                const int64_t first = L->is_swa && pos - d->n_swa + 1 > 0 ? pos - d->n_swa + 1 : 0;
                for (int64_t h = h0; h < h1; h++, n_q++) {
                    q[n_q] = m->q + i * q_dim(d) + h * hd;
                    out[n_q] = m->att + i * q_dim(d) + h * hd;
                    lo[n_q] = first;
                    hi[n_q] = pos + 1;
                }
            }
            const uint8_t *kc = kv_rows(m, m->k_cache, job->il, seq), *vc = kv_rows(m, m->v_cache, job->il, seq);
            attend(q, out, lo, hi, n_q, kc + head_off, vc + head_off, (size_t)m->kv_row_bytes, hd, d->attn_scale,
                   scratch);
        }
    }
}

/* ------------------------------------------------------------ forward */

static void add_rows(float *y, const float *b, int64_t n, int64_t dim) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < dim; j++) y[i * dim + j] += b[j];
}

static void norm_rows(const ek_model *m, const float *x, const float *w, float *y, int64_t n, int64_t dim) {
    for (int64_t i = 0; i < n; i++) m->kernels->rmsnorm(x + i * dim, w, y + i * dim, dim, m->d.norm_eps);
}

/* ------------------------------------------- activation statistics */

/* Per layer: the inputs of Q/K/V (n_embd), of the output projection (q_dim), of gate/up
   (n_embd) and of down (n_ff); then the output head's input (n_embd). */
static int64_t act_layer_stride(const ek_model_desc *d) { return 2 * (int64_t)d->n_embd + q_dim(d) + d->n_ff; }

int64_t ek_model_activation_sums_len(const ek_model *m) {
    return m->d.n_layer * act_layer_stride(&m->d) + m->d.n_embd;
}

void ek_model_set_activation_sums(ek_model *m, double *sums) { m->act_sums = sums; }

/* sums[j] += x[i, j]^2 over the n rows of x (n, dim), at `offset` in the model's sums. */
static void add_squares(const ek_model *m, int64_t offset, const float *x, int64_t n, int64_t dim) {
    if (!m->act_sums) return;
    double *sums = m->act_sums + offset;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < dim; j++) sums[j] += (double)x[i * dim + j] * x[i * dim + j];
}

/* One transformer block for the n rows of the pass; x updated in place. */
static ek_status block_forward(ek_model *m, int il, int64_t n) {
    const ek_model_desc *d = &m->d;
    const layer *L = &m->layers[il];
    const int64_t E = d->n_embd, QD = q_dim(d), KD = m->kv_dim, hd = d->head_dim;
    ek_status st;

    const int64_t act = il * act_layer_stride(d);
    norm_rows(m, m->x, L->attn_norm, m->xb, n, E);
    add_squares(m, act, m->xb, n, E);
    const ek_weight *qkv[] = {L->wq, L->wk, L->wv};
    float *const qkv_out[] = {m->q, m->k, m->v};
    if ((st = ek_matmul_shared_input(qkv, qkv_out, 3, m->xb, n, m->pool)) != EK_OK) return st;
    if (L->q_bias) add_rows(m->q, L->q_bias, n, QD);
    if (L->k_bias) add_rows(m->k, L->k_bias, n, KD);
    if (L->v_bias) add_rows(m->v, L->v_bias, n, KD);
    if (L->q_norm) norm_rows(m, m->q, L->q_norm, m->q, n * d->n_head, hd);
    if (L->k_norm) norm_rows(m, m->k, L->k_norm, m->k, n * d->n_head_kv, hd);

    const float *angles = m->rope + (L->is_swa ? n * d->n_rot : 0);
    for (int64_t i = 0; i < n; i++) {
        const int64_t pos = m->row_pos[i];
        uint8_t *kc = kv_rows(m, m->k_cache, il, m->row_seq[i]), *vc = kv_rows(m, m->v_cache, il, m->row_seq[i]);
        const float *cosv = angles + i * d->n_rot, *sinv = cosv + d->n_rot / 2;
        ops_rope_apply(m->q + i * QD, d->n_head, hd, d->n_rot, cosv, sinv, d->rope_mode);
        ops_rope_apply(m->k + i * KD, d->n_head_kv, hd, d->n_rot, cosv, sinv, d->rope_mode);
        ek_kv_store(d->kv_type, m->k + i * KD, kc + pos * m->kv_row_bytes, KD);
        ek_kv_store(d->kv_type, m->v + i * KD, vc + pos * m->kv_row_bytes, KD);
    }

    attn_job job = attn_plan(m, il, n);
    ek_pool_run(m->pool, attn_task, &job);
    if (atomic_load_explicit(&m->abort_requested, memory_order_relaxed)) return EK_ERR_CANCELLED;
    add_squares(m, act + E, m->att, n, QD);
    if ((st = ek_matmul(L->wo, m->att, n, m->xb, m->pool)) != EK_OK) return st;
    if (L->post_attn_norm) norm_rows(m, m->xb, L->post_attn_norm, m->xb, n, E);
    for (int64_t j = 0; j < n * E; j++) m->x[j] += m->xb[j];

    norm_rows(m, m->x, L->ffn_norm, m->xb, n, E);
    add_squares(m, act + E + QD, m->xb, n, E);
    const ek_weight *gate_up[] = {L->w_gate, L->w_up};
    float *const gate_up_out[] = {m->hb, m->hb2};
    if ((st = ek_matmul_shared_input(gate_up, gate_up_out, 2, m->xb, n, m->pool)) != EK_OK) return st;
    (d->act == EK_ACT_GELU ? m->kernels->gelu_mul : m->kernels->silu_mul)(m->hb, m->hb2, m->hb, n * d->n_ff);
    add_squares(m, act + 2 * E + QD, m->hb, n, d->n_ff);
    if ((st = ek_matmul(L->w_down, m->hb, n, m->xb, m->pool)) != EK_OK) return st;
    if (L->post_ffn_norm) norm_rows(m, m->xb, L->post_ffn_norm, m->xb, n, E);
    for (int64_t j = 0; j < n * E; j++) m->x[j] += m->xb[j];
    return EK_OK;
}

/* One pass over the n <= n_batch rows set in row_ids/row_seq/row_pos. logits: (n_out, n_vocab)
   for rows out_rows[0..n_out) (none when n_out is 0). */
static ek_status batch_forward(ek_model *m, int64_t n, int64_t n_out, float *logits) {
    const ek_model_desc *d = &m->d;
    const int64_t E = d->n_embd;
    ek_status st = ek_weight_get_rows(m->tok_embd, m->row_ids, n, m->x);
    if (st != EK_OK) return st;
    if (d->embd_scale != 1.0f)
        for (int64_t j = 0; j < n * E; j++) m->x[j] *= d->embd_scale;
    for (int64_t i = 0; i < n; i++) {
        float *global = m->rope + i * d->n_rot, *sliding = m->rope + (n + i) * d->n_rot;
        ops_rope_angles(m->row_pos[i], d->n_rot, d->rope_base, &m->rope_global, d->rope_freqs, global,
                        global + d->n_rot / 2);
        if (d->n_swa > 0)
            ops_rope_angles(m->row_pos[i], d->n_rot, d->rope_base_swa, &m->rope_sliding, d->rope_freqs, sliding,
                            sliding + d->n_rot / 2);
    }
    for (int il = 0; il < d->n_layer; il++) {
        if (atomic_load_explicit(&m->abort_requested, memory_order_relaxed)) return EK_ERR_CANCELLED;
        if ((st = block_forward(m, il, n)) != EK_OK) return st;
    }
    if (n_out == 0) return EK_OK;
    for (int64_t r = 0; r < n_out; r++)
        m->kernels->rmsnorm(m->x + m->out_rows[r] * E, m->output_norm, m->xb + r * E, E, d->norm_eps);
    add_squares(m, d->n_layer * act_layer_stride(d), m->xb, n_out, E);
    return ek_matmul(m->output, m->xb, n_out, logits, m->pool);
}

/* The tokens of every entry, in order, in passes of n_batch rows. Logits of each entry's last
   token (of every token when all_logits) go to logits in row order. */
static ek_status eval_entries(ek_model *m, const ek_seq_input *entries, int64_t n_entries, float *logits,
                              int all_logits) {
    atomic_store(&m->abort_requested, 0);
    int64_t n = 0, n_out = 0;
    for (int64_t e = 0; e < n_entries; e++) {
        const ek_seq_input *in = &entries[e];
        for (int64_t t = 0; t < in->n; t++) {
            m->row_ids[n] = in->ids[t];
            m->row_seq[n] = in->seq;
            m->row_pos[n] = (int32_t)(in->start + t);
            if (all_logits || t == in->n - 1) m->out_rows[n_out++] = (int32_t)n;
            n++;
            if (n == m->d.n_batch || (e == n_entries - 1 && t == in->n - 1)) {
                const ek_status st = batch_forward(m, n, n_out, logits);
                if (st != EK_OK) return st;
                logits += n_out * (int64_t)m->d.n_vocab;
                n = n_out = 0;
            }
        }
    }
    return EK_OK;
}

ek_status ek_model_eval(ek_model *m, const int32_t *ids, int64_t n, int64_t start, float *logits, int all_logits) {
    if (n <= 0 || start < 0) return EK_ERR_INVALID_ARG;
    if (start + n > m->d.n_ctx) return EK_ERR_CONTEXT_FULL;
    const ek_seq_input entry = {.ids = ids, .n = n, .start = start, .seq = 0};
    return eval_entries(m, &entry, 1, logits, all_logits);
}

ek_status ek_model_eval_batch(ek_model *m, const ek_seq_input *entries, int64_t n_entries, float *logits) {
    return eval_entries(m, entries, n_entries, logits, 0);
}

void ek_model_seq_copy(ek_model *m, int32_t src, int32_t dst, int64_t n) {
    const size_t bytes = (size_t)n * (size_t)m->kv_row_bytes;
    for (int il = 0; il < m->d.n_layer; il++) {
        memcpy(kv_rows(m, m->k_cache, il, dst), kv_rows(m, m->k_cache, il, src), bytes);
        memcpy(kv_rows(m, m->v_cache, il, dst), kv_rows(m, m->v_cache, il, src), bytes);
    }
}

void ek_model_abort(ek_model *m) { atomic_store(&m->abort_requested, 1); }

/* ------------------------------------------------------------ state */

uint64_t ek_model_state_bytes(const ek_model *m, int64_t n_past) {
    return 2ull * (uint64_t)m->d.n_layer * (uint64_t)n_past * (uint64_t)m->kv_row_bytes;
}

/* Layout: for each layer, K rows 0..n_past-1 then V rows 0..n_past-1 of sequence seq. */
void ek_model_state_save(const ek_model *m, int32_t seq, int64_t n_past, void *dst) {
    uint8_t *p = dst;
    const size_t part = (size_t)n_past * (size_t)m->kv_row_bytes;
    for (int il = 0; il < m->d.n_layer; il++) {
        memcpy(p, kv_rows(m, m->k_cache, il, seq), part); p += part;
        memcpy(p, kv_rows(m, m->v_cache, il, seq), part); p += part;
    }
}

void ek_model_state_load(ek_model *m, int32_t seq, int64_t n_past, const void *src) {
    const uint8_t *p = src;
    const size_t part = (size_t)n_past * (size_t)m->kv_row_bytes;
    for (int il = 0; il < m->d.n_layer; il++) {
        memcpy(kv_rows(m, m->k_cache, il, seq), p, part); p += part;
        memcpy(kv_rows(m, m->v_cache, il, seq), p, part); p += part;
    }
}
