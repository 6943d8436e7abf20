/* The inference engine on the GPU: native/src/model.c's forward pass (llama, qwen2, gemma3) on
 * the GPU layouts, every layer on one stream, one synchronisation per pass of n_batch rows.
 *
 * Names as in model.c (all device buffers, n <= n_batch rows of the pass):
 *   x (n, n_embd) residual stream; xb (n, n_embd) a block's normed input, then its output
 *   q (n, n_head*hd), k, v (n, n_head_kv*hd); att (n, n_head*hd); hb, hb2 (n, n_ff)
 *   logits (EC_LOGIT_ROWS, n_vocab)
 *   k_cache, v_cache (n_layer, n_ctx, kv_dim) f16
 * The host computes each pass's RoPE tables with rope.c (the CPU engine's angles, in double),
 * and uploads them with the ids and positions in one copy from page-locked memory.
 */
#include "internal.cuh"

#include "ops_internal.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define EC_LOGIT_ROWS 16 /* logits rows computed per output product (all_logits goes in chunks) */
#define EC_ALIGN 256

typedef struct layer {
    ec_matrix wq, wk, wv, wo, gate, up, down;
    const float *attn_norm, *q_bias, *k_bias, *v_bias, *q_norm, *k_norm, *post_attn_norm, *ffn_norm, *post_ffn_norm;
    int is_swa;
} layer;

/* The page-locked block a pass uploads: ids, positions, then cos|sin tables (global, sliding). */
typedef struct pass_input {
    int32_t *ids, *pos;
    float *rope; /* (2, n_batch, n_rot) */
    size_t bytes;
} pass_input;

struct ec_model {
    ek_model_desc d; /* copy; d.layers is not kept */
    int device;
    cudaStream_t stream;
    uint8_t *weights;  /* one device allocation holding every matrix and vector */
    uint8_t *scratch;  /* one device allocation holding the buffers below */
    ec_matrix tok_embd, output;
    const float *output_norm;
    layer *layers;
    int64_t kv_dim;
    __half *k_cache, *v_cache;
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2, *logits;
    ec_act_scratch act;
    uint8_t *pass_dev; /* device copy of the pass input */
    pass_input host;   /* page-locked */
    ops_rope_scaling rope_global, rope_sliding;
};

static uint64_t align_up(uint64_t n) { return (n + EC_ALIGN - 1) / EC_ALIGN * EC_ALIGN; }
static int64_t q_dim(const ek_model_desc *d) { return (int64_t)d->n_head * d->head_dim; }
static int64_t kv_dim(const ek_model_desc *d) { return (int64_t)d->n_head_kv * d->head_dim; }

/* Every matrix of desc in create order: output (absent when tied), embedding, then per layer. */
static const int LAYER_MATRICES[7] = {EK_LT_Q, EK_LT_K, EK_LT_V, EK_LT_O, EK_LT_GATE, EK_LT_UP, EK_LT_DOWN};
static const int LAYER_VECTORS[9] = {EK_LT_ATTN_NORM, EK_LT_Q_BIAS, EK_LT_K_BIAS, EK_LT_V_BIAS, EK_LT_Q_NORM,
                                     EK_LT_K_NORM, EK_LT_POST_ATTN_NORM, EK_LT_FFN_NORM, EK_LT_POST_FFN_NORM};

static uint64_t tensor_bytes(const ek_tensor_desc *t) {
    if (!t->data) return 0;
    if (t->n_rows <= 1 && t->type == EK_TYPE_F32) return align_up((uint64_t)t->n_cols * sizeof(float));
    return align_up((uint64_t)ec_layout_bytes(t->type, t->n_rows, t->n_cols));
}

static void weight_needs(const ek_model_desc *d, uint64_t *total, uint64_t *largest) {
    *total = *largest = 0;
    const ek_tensor_desc *heads[] = {&d->tok_embd, &d->output, &d->output_norm};
    for (int i = 0; i < 3; i++) *total += tensor_bytes(heads[i]);
    *largest = tensor_bytes(&d->tok_embd) > tensor_bytes(&d->output) ? tensor_bytes(&d->tok_embd)
                                                                       : tensor_bytes(&d->output);
    for (int64_t t = 0; t < (int64_t)d->n_layer * EK_LT_COUNT; t++) {
        const uint64_t b = tensor_bytes(&d->layers[t]);
        *total += b;
        if (d->layers[t].n_rows > 1 && b > *largest) *largest = b;
    }
}

/* Largest quantized-input and f16-input buffers one product of n_batch rows needs. */
static void act_needs(const ek_model_desc *d, uint64_t *xq, uint64_t *xh_elems) {
    *xq = *xh_elems = 0;
    const ek_tensor_desc *heads[] = {&d->tok_embd, &d->output};
    for (int64_t t = -2; t < (int64_t)d->n_layer * EK_LT_COUNT; t++) {
        const ek_tensor_desc *w = t < 0 ? heads[t + 2] : &d->layers[t];
        if (!w->data || w->n_rows <= 1) continue;
        const uint64_t b = ec_act_bytes(w->type, d->n_batch, w->n_cols);
        *xq = b > *xq ? b : *xq;
        const uint64_t e = (uint64_t)d->n_batch * (uint64_t)w->n_cols;
        *xh_elems = e > *xh_elems ? e : *xh_elems;
    }
}

/* Float counts of the activation buffers, in the order create carves them. */
static void activation_floats(const ek_model_desc *d, uint64_t out[9]) {
    const uint64_t nb = (uint64_t)d->n_batch;
    const uint64_t counts[9] = {nb * d->n_embd, nb * d->n_embd, nb * q_dim(d), nb * kv_dim(d), nb * kv_dim(d),
                                nb * q_dim(d),  nb * d->n_ff,   nb * d->n_ff,  (uint64_t)EC_LOGIT_ROWS * d->n_vocab};
    memcpy(out, counts, sizeof counts);
}

static uint64_t pass_input_bytes(const ek_model_desc *d) {
    return 2 * align_up((uint64_t)d->n_batch * sizeof(int32_t)) +
           align_up(2ull * d->n_batch * d->n_rot * sizeof(float));
}

static uint64_t scratch_bytes(const ek_model_desc *d) {
    uint64_t counts[9], total = 0, xq, xh;
    activation_floats(d, counts);
    for (int i = 0; i < 9; i++) total += align_up(counts[i] * sizeof(float));
    act_needs(d, &xq, &xh);
    return total + align_up(xq ? xq : 1) + align_up(xh * sizeof(__half)) +
           align_up((uint64_t)d->n_batch * sizeof(float)) + pass_input_bytes(d);
}

static uint64_t kv_bytes(const ek_model_desc *d) {
    return 2ull * (uint64_t)d->n_layer * (uint64_t)d->n_ctx * (uint64_t)kv_dim(d) * sizeof(__half);
}

int ec_model_memory_needs(const ek_model_desc *desc, ec_model_memory *out) {
    if (!desc || !out) return EK_ERR_INVALID_ARG;
    weight_needs(desc, &out->weights, &out->host_staging);
    out->kv_cache = kv_bytes(desc);
    out->scratch = scratch_bytes(desc);
    out->host_pinned = pass_input_bytes(desc);
    return EK_OK;
}

/* ------------------------------------------------------- create / free */

void ec_model_free(ec_model *m) {
    if (!m) return;
    cudaFree(m->weights);
    cudaFree(m->scratch);
    cudaFree(m->k_cache);
    cudaFreeHost(m->host.ids);
    if (m->stream) cudaStreamDestroy(m->stream);
    free(m->layers);
    free(m);
}

/* Drop the resident pages wholly inside [p, p + n) of a read-only file mapping. */
static void release_pages(const void *p, uint64_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)p + page - 1) / page * page, hi = ((uintptr_t)p + n) / page * page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

typedef struct uploader {
    uint8_t *next;     /* where the next tensor goes in m->weights */
    uint8_t *staging;  /* host buffer of the largest matrix */
    uint32_t flags;
} uploader;

static int upload_matrix(uploader *u, const ek_tensor_desc *t, ec_matrix *out) {
    const ec_layout_info li = ec_layout_of(t->type);
    const int64_t bytes = ec_layout_bytes(t->type, t->n_rows, t->n_cols);
    if (bytes == 0) return EK_ERR_UNSUPPORTED;
    int st = ec_layout_from_gguf(t->type, t->data, t->n_rows, t->n_cols, u->staging);
    if (st != EK_OK) return st;
    EC_TRY(cudaMemcpy(u->next, u->staging, (size_t)bytes, cudaMemcpyHostToDevice));
    const int64_t nb = t->n_cols / li.block_elems;
    *out = {t->type, t->n_rows, t->n_cols, nb, u->next, (const __half *)(u->next + t->n_rows * nb * li.q_bytes)};
    if (u->flags & EK_WEIGHT_RELEASE_SOURCE)
        release_pages(t->data, (uint64_t)ec_gguf_bytes(t->type, t->n_rows, t->n_cols));
    u->next += align_up((uint64_t)bytes);
    return EK_OK;
}

static int upload_vector(uploader *u, const ek_tensor_desc *t, const float **out) {
    *out = NULL;
    if (!t->data) return EK_OK;
    EC_TRY(cudaMemcpy(u->next, t->data, (size_t)t->n_cols * sizeof(float), cudaMemcpyHostToDevice));
    *out = (const float *)u->next;
    u->next += align_up((uint64_t)t->n_cols * sizeof(float));
    return EK_OK;
}

static int upload_weights(ec_model *m, const ek_model_desc *desc, uint64_t staging_bytes) {
    uploader u = {m->weights, (uint8_t *)malloc(staging_bytes ? staging_bytes : 1), desc->weight_flags};
    if (!u.staging) return EK_ERR_NO_MEMORY;
    int st = upload_matrix(&u, &desc->tok_embd, &m->tok_embd);
    if (st == EK_OK) st = desc->output.data ? upload_matrix(&u, &desc->output, &m->output) : EK_OK;
    if (st == EK_OK) st = upload_vector(&u, &desc->output_norm, &m->output_norm);
    for (int il = 0; st == EK_OK && il < desc->n_layer; il++) {
        const ek_tensor_desc *t = desc->layers + (size_t)il * EK_LT_COUNT;
        layer *L = &m->layers[il];
        ec_matrix *mats[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
        const float **vecs[9] = {&L->attn_norm, &L->q_bias, &L->k_bias, &L->v_bias, &L->q_norm,
                                 &L->k_norm, &L->post_attn_norm, &L->ffn_norm, &L->post_ffn_norm};
        for (int i = 0; st == EK_OK && i < 7; i++) st = upload_matrix(&u, &t[LAYER_MATRICES[i]], mats[i]);
        for (int i = 0; st == EK_OK && i < 9; i++) st = upload_vector(&u, &t[LAYER_VECTORS[i]], vecs[i]);
        L->is_swa = desc->n_swa > 0 && desc->swa_pattern > 0 && (il + 1) % desc->swa_pattern != 0;
    }
    if (st == EK_OK && !desc->output.data) m->output = m->tok_embd;
    free(u.staging);
    return st;
}

static void carve_scratch(ec_model *m) {
    const ek_model_desc *d = &m->d;
    uint64_t counts[9], xq, xh;
    activation_floats(d, counts);
    act_needs(d, &xq, &xh);
    float **bufs[9] = {&m->x, &m->xb, &m->q, &m->k, &m->v, &m->att, &m->hb, &m->hb2, &m->logits};
    uint8_t *p = m->scratch;
    for (int i = 0; i < 9; i++) {
        *bufs[i] = (float *)p;
        p += align_up(counts[i] * sizeof(float));
    }
    m->act.xq = p, m->act.xq_bytes = xq;
    p += align_up(xq ? xq : 1);
    m->act.xh = (__half *)p, m->act.xh_elems = xh;
    p += align_up(xh * sizeof(__half));
    m->act.xscale = (float *)p;
    p += align_up((uint64_t)d->n_batch * sizeof(float));
    m->pass_dev = p;
}

int ec_model_create(const ek_model_desc *desc, int device, ec_model **out) {
    *out = NULL;
    if (desc->kv_type != EK_TYPE_F16 || desc->n_seq != 1) return EK_ERR_UNSUPPORTED;
    if (desc->n_batch < 1 || desc->n_batch > EC_MAX_BATCH) return EK_ERR_INVALID_ARG;
    if (desc->head_dim % 32 || desc->head_dim > EC_MAX_HEAD_DIM || desc->n_rot > desc->head_dim)
        return EK_ERR_INVALID_ARG;
    ec_model *m = (ec_model *)calloc(1, sizeof *m);
    if (!m) return EK_ERR_NO_MEMORY;
    m->d = *desc;
    m->d.layers = NULL;
    m->device = device;
    m->kv_dim = kv_dim(desc);
    ops_rope_scalings(desc, &m->rope_global, &m->rope_sliding);
    ec_model_memory need;
    ec_model_memory_needs(desc, &need);
    int st = EK_OK;
    cudaError_t err;
    m->layers = (layer *)calloc((size_t)desc->n_layer, sizeof(layer));
    if (!m->layers) st = EK_ERR_NO_MEMORY;
    else if ((err = cudaSetDevice(device)) != cudaSuccess ||
             (err = cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking)) != cudaSuccess ||
             (err = cudaMalloc(&m->weights, need.weights)) != cudaSuccess ||
             (err = cudaMalloc(&m->scratch, need.scratch)) != cudaSuccess ||
             (err = cudaMalloc(&m->k_cache, need.kv_cache)) != cudaSuccess ||
             (err = cudaMallocHost(&m->host.ids, need.host_pinned)) != cudaSuccess)
        st = EC_CUDA_STATUS(err);
    if (st == EK_OK) st = upload_weights(m, desc, need.host_staging);
    if (st != EK_OK) {
        ec_model_free(m);
        return st;
    }
    m->v_cache = m->k_cache + (size_t)desc->n_layer * (size_t)desc->n_ctx * (size_t)m->kv_dim;
    carve_scratch(m);
    const uint64_t ids_bytes = align_up((uint64_t)desc->n_batch * sizeof(int32_t));
    m->host.pos = (int32_t *)((uint8_t *)m->host.ids + ids_bytes);
    m->host.rope = (float *)((uint8_t *)m->host.pos + ids_bytes);
    m->host.bytes = need.host_pinned;
    *out = m;
    return EK_OK;
}

/* ------------------------------------------------------------ forward */

typedef struct pass_dev {
    const int32_t *ids, *pos;
    const float *rope; /* (2, n, n_rot) for this pass's n rows */
} pass_dev;

static int block_forward(ec_model *m, int il, int64_t n, const pass_dev *in) {
    const ek_model_desc *d = &m->d;
    const layer *L = &m->layers[il];
    const int64_t E = d->n_embd, QD = q_dim(d), KD = m->kv_dim, hd = d->head_dim;
    cudaStream_t s = m->stream;
    int st;
    ec_rmsnorm_rows(m->x, L->attn_norm, m->xb, n, E, d->norm_eps, s);
    if ((st = ec_matmul(&L->wq, m->xb, n, m->q, QD, &m->act, EC_MATMUL_AUTO, s)) != EK_OK) return st;
    if ((st = ec_matmul(&L->wk, m->xb, n, m->k, KD, &m->act, EC_MATMUL_AUTO, s)) != EK_OK) return st;
    if ((st = ec_matmul(&L->wv, m->xb, n, m->v, KD, &m->act, EC_MATMUL_AUTO, s)) != EK_OK) return st;
    if (L->q_bias) ec_add_bias_rows(m->q, L->q_bias, n, QD, s);
    if (L->k_bias) ec_add_bias_rows(m->k, L->k_bias, n, KD, s);
    if (L->v_bias) ec_add_bias_rows(m->v, L->v_bias, n, KD, s);
    if (L->q_norm) ec_rmsnorm_rows(m->q, L->q_norm, m->q, n * d->n_head, hd, d->norm_eps, s);
    if (L->k_norm) ec_rmsnorm_rows(m->k, L->k_norm, m->k, n * d->n_head_kv, hd, d->norm_eps, s);
    __half *kc = m->k_cache + (size_t)il * d->n_ctx * KD, *vc = m->v_cache + (size_t)il * d->n_ctx * KD;
    ec_rope_store(m->q, m->k, m->v, in->rope + (L->is_swa ? n * d->n_rot : 0), in->pos, n, d->n_head, d->n_head_kv,
                  (int)hd, d->n_rot, d->rope_mode, kc, vc, s);
    ec_attention(m->q, kc, vc, in->pos, n, d->n_head, d->n_head_kv, (int)hd, L->is_swa ? d->n_swa : 0, d->attn_scale,
                 m->att, s);
    if ((st = ec_matmul(&L->wo, m->att, n, m->xb, E, &m->act, EC_MATMUL_AUTO, s)) != EK_OK) return st;
    if (L->post_attn_norm) ec_rmsnorm_rows(m->xb, L->post_attn_norm, m->xb, n, E, d->norm_eps, s);
    ec_add(m->x, m->xb, n * E, s);

    ec_rmsnorm_rows(m->x, L->ffn_norm, m->xb, n, E, d->norm_eps, s);
    if ((st = ec_matmul(&L->gate, m->xb, n, m->hb, d->n_ff, &m->act, EC_MATMUL_AUTO, s)) != EK_OK) return st;
    if ((st = ec_matmul(&L->up, m->xb, n, m->hb2, d->n_ff, &m->act, EC_MATMUL_AUTO, s)) != EK_OK) return st;
    ec_gated_act(d->act, m->hb, m->hb2, m->hb, n * d->n_ff, s);
    if ((st = ec_matmul(&L->down, m->hb, n, m->xb, E, &m->act, EC_MATMUL_AUTO, s)) != EK_OK) return st;
    if (L->post_ffn_norm) ec_rmsnorm_rows(m->xb, L->post_ffn_norm, m->xb, n, E, d->norm_eps, s);
    ec_add(m->x, m->xb, n * E, s);
    return EK_OK;
}

/* Rows r0..r0+n_out of x through the output norm and head, into host logits (n_out, n_vocab). */
static int output_rows(ec_model *m, int64_t r0, int64_t n_out, float *logits) {
    const ek_model_desc *d = &m->d;
    for (int64_t c = 0; c < n_out; c += EC_LOGIT_ROWS) {
        const int64_t rows = n_out - c < EC_LOGIT_ROWS ? n_out - c : EC_LOGIT_ROWS;
        ec_rmsnorm_rows(m->x + (r0 + c) * d->n_embd, m->output_norm, m->xb, rows, d->n_embd, d->norm_eps, m->stream);
        const int st = ec_matmul(&m->output, m->xb, rows, m->logits, d->n_vocab, &m->act, EC_MATMUL_DP4A, m->stream);
        if (st != EK_OK) return st;
        EC_TRY(cudaMemcpyAsync(logits + c * d->n_vocab, m->logits, (size_t)(rows * d->n_vocab) * sizeof(float),
                               cudaMemcpyDeviceToHost, m->stream));
    }
    return EK_OK;
}

/* One pass of n <= n_batch tokens at positions start..; logits of every row (all_logits) or of
   the last (want_last), else none. */
static int pass_forward(ec_model *m, const int32_t *ids, int64_t n, int64_t start, float *logits, int all_logits,
                        int want_last) {
    const ek_model_desc *d = &m->d;
    for (int64_t i = 0; i < n; i++) {
        m->host.ids[i] = ids[i];
        m->host.pos[i] = (int32_t)(start + i);
        float *global = m->host.rope + i * d->n_rot, *sliding = m->host.rope + (n + i) * d->n_rot;
        ops_rope_angles(start + i, d->n_rot, d->rope_base, &m->rope_global, d->rope_freqs, global,
                        global + d->n_rot / 2);
        if (d->n_swa > 0)
            ops_rope_angles(start + i, d->n_rot, d->rope_base_swa, &m->rope_sliding, d->rope_freqs, sliding,
                            sliding + d->n_rot / 2);
    }
    EC_TRY(cudaMemcpyAsync(m->pass_dev, m->host.ids, m->host.bytes, cudaMemcpyHostToDevice, m->stream));
    const uint64_t ids_bytes = align_up((uint64_t)d->n_batch * sizeof(int32_t));
    const pass_dev in = {(const int32_t *)m->pass_dev, (const int32_t *)(m->pass_dev + ids_bytes),
                         (const float *)(m->pass_dev + 2 * ids_bytes)};
    int st = ec_get_rows(&m->tok_embd, in.ids, n, m->x, m->stream);
    if (st != EK_OK) return st;
    if (d->embd_scale != 1.0f) ec_scale(m->x, d->embd_scale, n * d->n_embd, m->stream);
    for (int il = 0; il < d->n_layer; il++)
        if ((st = block_forward(m, il, n, &in)) != EK_OK) return st;
    if (all_logits) st = output_rows(m, 0, n, logits);
    else if (want_last) st = output_rows(m, n - 1, 1, logits);
    if (st != EK_OK) return st;
    EC_TRY(cudaStreamSynchronize(m->stream)); /* the page-locked input is reused by the next pass */
    return EK_OK;
}

int ec_model_eval(ec_model *m, const int32_t *ids, int64_t n, int64_t start, float *logits, int all_logits) {
    if (n <= 0 || start < 0) return EK_ERR_INVALID_ARG;
    if (start + n > m->d.n_ctx) return EK_ERR_CONTEXT_FULL;
    EC_TRY(cudaSetDevice(m->device));
    for (int64_t i0 = 0; i0 < n; i0 += m->d.n_batch) {
        const int64_t rows = n - i0 < m->d.n_batch ? n - i0 : m->d.n_batch;
        float *out = all_logits ? logits + i0 * m->d.n_vocab : logits;
        const int st = pass_forward(m, ids + i0, rows, start + i0, out, all_logits, i0 + rows == n);
        if (st != EK_OK) return st;
    }
    return EK_OK;
}

/* ------------------------------------------------------------ state */

uint64_t ec_model_state_bytes(const ec_model *m, int64_t n_past) {
    return 2ull * (uint64_t)m->d.n_layer * (uint64_t)n_past * (uint64_t)m->kv_dim * sizeof(__half);
}

/* Layout of ek_model_state_save: for each layer, K rows 0..n_past-1 then V rows 0..n_past-1. */
static int state_copy(const ec_model *m, int64_t n_past, uint8_t *host, int save) {
    EC_TRY(cudaSetDevice(m->device));
    const size_t part = (size_t)n_past * (size_t)m->kv_dim * sizeof(__half);
    for (int il = 0; il < m->d.n_layer; il++) {
        __half *caches[2] = {m->k_cache, m->v_cache};
        for (int c = 0; c < 2; c++, host += part) {
            __half *dev = caches[c] + (size_t)il * m->d.n_ctx * m->kv_dim;
            EC_TRY(save ? cudaMemcpy(host, dev, part, cudaMemcpyDeviceToHost)
                        : cudaMemcpy(dev, host, part, cudaMemcpyHostToDevice));
        }
    }
    return EK_OK;
}

int ec_model_state_save(const ec_model *m, int64_t n_past, void *dst) {
    return state_copy(m, n_past, (uint8_t *)dst, 1);
}

int ec_model_state_load(ec_model *m, int64_t n_past, const void *src) {
    return state_copy(m, n_past, (uint8_t *)src, 0);
}
