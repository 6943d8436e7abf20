/* edgekern — edgesdk's native kernel layer: the public C API.
 *
 * Plain C11, no Python. Everything a caller may use is declared here and
 * nothing else is exported. Sections: status codes, tensor types and block
 * formats, CPU features and ISA choice, thread pool, quantized weights and
 * matrix products, f32 transformer building blocks, the inference engine,
 * the ABI description bindings check at load, the tokenizer.
 *
 * Trust model: the C layer trusts its caller. Sizes, shapes and pointers are
 * validated on the Python side (edgesdk/_native.py and its users) before any
 * call; C only checks what it cannot know cheaply from outside (allocation
 * failures, unsupported types, an ISA the CPU lacks) and reports a status.
 * C never prints, exits or aborts.
 */
#ifndef EDGEKERN_H
#define EDGEKERN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define EK_API __declspec(dllexport)
#else
#define EK_API __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------- status */

typedef enum ek_status {
    EK_OK = 0,
    EK_ERR_INVALID_ARG = 1,     /* a value the caller should have rejected */
    EK_ERR_UNSUPPORTED = 2,     /* a tensor type or operation we do not implement */
    EK_ERR_NO_MEMORY = 3,       /* malloc/aligned_alloc failed */
    EK_ERR_ISA_UNAVAILABLE = 4, /* the CPU (or OS) lacks the requested instruction set */
    EK_ERR_THREADS = 5,         /* pthread_create failed */
    EK_ERR_CONTEXT_FULL = 6,    /* KV cache has no room for the tokens */
    EK_ERR_INTERNAL = 7,
    EK_ERR_CANCELLED = 8,       /* ek_model_abort stopped the call */
    EK_ERR_NON_FINITE = 9       /* an input value is NaN or infinite (ek_quantize_rows) */
} ek_status;

EK_API const char *ek_status_str(ek_status status);

/* ------------------------------------------------- tensor types and blocks */

/* Numbers are GGUF's ggml_type ids, so a tensor's type field maps directly. */
typedef enum ek_type {
    EK_TYPE_F32 = 0,
    EK_TYPE_F16 = 1,
    EK_TYPE_Q4_0 = 2,
    EK_TYPE_Q4_1 = 3,
    EK_TYPE_Q5_0 = 6,
    EK_TYPE_Q8_0 = 8,
    EK_TYPE_Q4_K = 12,
    EK_TYPE_Q6_K = 14,
    EK_TYPE_BF16 = 30
} ek_type;

/* Elements per block and bytes per block; 0 for a type we do not support. */
EK_API int64_t ek_type_block_elems(int type);
EK_API int64_t ek_type_block_bytes(int type);

/* dst[0..n) = the n values encoded in src; n must be a multiple of the block size. */
EK_API ek_status ek_dequantize(int type, const void *src, float *dst, int64_t n);

/* Encode n floats into type's blocks (n a multiple of the block size), every type above.
   Q4_0, Q4_1, Q5_0 and Q8_0 give llama.cpp's reference quantizer's bytes. */
EK_API ek_status ek_quantize(int type, const float *src, void *dst, int64_t n);

typedef struct ek_pool ek_pool;
/* ek_quantize of n_rows rows of n_cols values (row r at src + r * n_cols values) into n_rows
   rows of type's blocks, rows split across pool (NULL: the caller alone); the bytes do not
   depend on the thread count. src_type: EK_TYPE_F32, EK_TYPE_F16 or EK_TYPE_BF16; an F16 or
   BF16 row is widened to floats by the task that quantizes it (exactly: every half is a float),
   so no float copy of the whole matrix is made, and the bytes equal those of the widened
   matrix quantized as F32. importance: n_cols non-negative weights (the mean squared
   activation each column multiplies) or NULL; the 4-bit, 5-bit and K-quant fits then minimize
   the error those weights give (Q8_0, F16, BF16, F32 ignore it). A row holding NaN or
   infinity: EK_ERR_NON_FINITE, *bad_row (if not NULL) the first such row, else -1; the
   output rows are then not all written. */
EK_API ek_status ek_quantize_rows(int type, int src_type, const void *src, void *dst, int64_t n_rows,
                                  int64_t n_cols, const float *importance, ek_pool *pool, int64_t *bad_row);

/* ------------------------------------------------ CPU features and the ISA */

/* Bits of ek_cpu_features(): what the CPU *and the OS* support. */
#define EK_CPU_AVX2        (1ull << 0)
#define EK_CPU_FMA         (1ull << 1)
#define EK_CPU_F16C        (1ull << 2)
#define EK_CPU_AVX512F     (1ull << 3)
#define EK_CPU_AVX512BW    (1ull << 4)
#define EK_CPU_AVX512VL    (1ull << 5)
#define EK_CPU_AVX512VNNI  (1ull << 6)
#define EK_CPU_AVXVNNI     (1ull << 7)
#define EK_CPU_AVX512BF16  (1ull << 8)
#define EK_CPU_AVX512DQ    (1ull << 9)
#define EK_CPU_NEON        (1ull << 16)
#define EK_CPU_DOTPROD     (1ull << 17)
#define EK_CPU_I8MM        (1ull << 18)
#define EK_CPU_SVE         (1ull << 19)
#define EK_CPU_FP16        (1ull << 20)

EK_API uint64_t ek_cpu_features(void);

/* Kernel families. One is active process-wide; weights remember the family
   they were prepared for, so switching later never mixes layouts. */
typedef enum ek_isa {
    EK_ISA_SCALAR = 0,
    EK_ISA_AVX2 = 1,         /* AVX2 + FMA + F16C */
    EK_ISA_AVX512 = 2,       /* AVX-512 F/BW/VL (+VNNI when present) */
    EK_ISA_NEON = 3,         /* ARMv8 ASIMD */
    EK_ISA_NEON_DOTPROD = 4  /* ARMv8.2 ASIMD + SDOT */
} ek_isa;

EK_API int ek_isa_available(int isa);   /* 1 when this CPU can run it */
EK_API int ek_isa_best(void);           /* best available family */
/* Make isa the active family; EK_ERR_ISA_UNAVAILABLE when the CPU lacks it.
   At load the library honours EDGESDK_ISA (scalar|avx2|avx512|neon|neon_dotprod)
   if set and available, else picks ek_isa_best(). */
EK_API ek_status ek_isa_set(int isa);
EK_API int ek_isa_current(void);
EK_API const char *ek_isa_name(int isa); /* "scalar", "avx2", ...; "unknown" otherwise */
/* Parse a name as EDGESDK_ISA would; -1 when unknown. */
EK_API int ek_isa_from_name(const char *name);

/* ------------------------------------------------------------- thread pool */

/* A persistent pool of n_threads - 1 workers plus the calling thread.
   Workers sleep on a condition variable between jobs: no busy-waiting when idle. */
typedef struct ek_pool ek_pool;
typedef void (*ek_task_fn)(void *ctx, int ith, int nth);

/* n_threads <= 0: ek_default_threads(). */
EK_API ek_status ek_pool_create(int n_threads, ek_pool **out);
/* Physical performance cores: SMT siblings counted once, and on big.LITTLE only
   the cores of the highest cpu_capacity; the online CPU count if unknown. */
EK_API int ek_default_threads(void);
EK_API void ek_pool_free(ek_pool *pool);
EK_API int ek_pool_threads(const ek_pool *pool);
/* Run fn(ctx, ith, nth) for ith in [0, nth) across the pool; returns when all are done.
   pool may be NULL: then fn(ctx, 0, 1) runs on the caller. One job at a time:
   callers sharing a pool across threads serialize their calls. */
EK_API void ek_pool_run(ek_pool *pool, ek_task_fn fn, void *ctx);

/* ------------------------------------------- quantized weights and matmul */

/* A weight matrix W of shape (n_rows, n_cols), row-major in GGUF order (n_cols
   is GGUF's ne[0]). It references `data` (typically the mmap of the GGUF file),
   which must outlive it, unless it was repacked into an owned buffer. */
typedef struct ek_weight ek_weight;

/* May build an owned copy interleaving 8 rows per block (x86: Q4_0, Q4_1, Q8_0, Q5_0,
   Q4_K, Q6_K; NEON: Q4_0, Q4_1, Q8_0), 2-3x faster for m > 1 and faster GEMV; other
   types/ISAs stay mapped. Lossless: get_rows and results match the mapped weight. */
#define EK_WEIGHT_ALLOW_REPACK 1u
/* With ALLOW_REPACK: `data` is a read-only file mapping (never anonymous memory);
   once repacked, its pages wholly inside the tensor are dropped from the resident
   set (madvise MADV_DONTNEED; the file still backs them), so a repacked weight
   costs its owned copy only. */
#define EK_WEIGHT_RELEASE_SOURCE 2u

EK_API ek_status ek_weight_create(int type, int64_t n_rows, int64_t n_cols, const void *data,
                                  uint32_t flags, ek_weight **out);
EK_API void ek_weight_free(ek_weight *w);
EK_API size_t ek_weight_owned_bytes(const ek_weight *w); /* bytes of a repacked copy; 0 when mapped */
EK_API int ek_weight_isa(const ek_weight *w);            /* family it was prepared for */

/* y (m, n_rows) = x (m, n_cols) @ W^T. m == 1 is the GEMV of token generation,
   m > 1 the GEMM of prompt processing. x is quantized internally as the kernel needs
   (8-bit blocks for the quantized types). Runs on w's ISA, split across pool (NULL:
   the caller alone); the result is bit-identical for any thread count. */
EK_API ek_status ek_matmul(const ek_weight *w, const float *x, int64_t m, float *y, ek_pool *pool);

/* out (n, n_cols) = rows ids[0..n) of W, dequantized: the embedding lookup. */
EK_API ek_status ek_weight_get_rows(const ek_weight *w, const int32_t *ids, int64_t n, float *out);

/* Quantized dot products on single rows, for tests and small callers:
   the dot of n values of `type` at w with n f32 values at x (x quantized as the kernel would). */
EK_API ek_status ek_vec_dot(int type, const void *w, const float *x, int64_t n, float *out);

/* Bytes per second the pool's threads read from a buffer of `bytes` (use far
   more than the last-level cache, e.g. 1 GiB), median of `repeats` passes;
   0.0 when the buffer cannot be allocated. Each thread reads its share as a few
   sequential streams side by side, which a core reads faster than one stream.
   Benchmarks divide by it. */
EK_API double ek_measure_read_bandwidth(size_t bytes, int repeats, ek_pool *pool);

/* ------------------------------------- f32 transformer building blocks */
/* Each op has a scalar reference; the active ISA (ek_isa_current) picks a
   vectorized variant where one exists. All sizes are element counts. */

/* y[i] = x[i] / sqrt(mean(x^2) + eps) * (w ? w[i] : 1); y may equal x. */
EK_API void ek_rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps);

/* RoPE layouts: NORM rotates pairs (x[2i], x[2i+1]) (llama), NEOX rotates
   (x[i], x[i + n_rot/2]) (qwen2, gemma3). */
#define EK_ROPE_NORM 0
#define EK_ROPE_NEOX 2

/* Rotate the first n_rot dims of each of n_heads vectors of head_dim floats
   (contiguous) in place for position pos: angle_i = pos * freq_scale *
   base^(-2i/n_rot) / (freq_factors ? freq_factors[i] : 1), i in [0, n_rot/2). */
EK_API void ek_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int64_t pos,
                    float base, float freq_scale, const float *freq_factors, int mode);

EK_API void ek_softmax(float *x, int64_t n); /* in place, max-subtracted */

/* out[i] = act(gate[i]) * up[i] (up may be NULL: out = act(gate)); out may equal gate.
   SiLU(x) = x / (1 + e^-x); GELU is the tanh form 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))). */
EK_API void ek_silu_mul(const float *gate, const float *up, float *out, int64_t n);
EK_API void ek_gelu_mul(const float *gate, const float *up, float *out, int64_t n);

/* KV cache rows: EK_TYPE_F16 (n halves) or EK_TYPE_Q8_0 (n/32 blocks {f16 d; int8 q[32]}). */
EK_API int64_t ek_kv_row_bytes(int kv_type, int64_t n);
EK_API void ek_kv_store(int kv_type, const float *src, void *dst, int64_t n);
EK_API void ek_kv_load(int kv_type, const void *src, float *dst, int64_t n); /* for tests/export */

/* Attention of n_q queries sharing one KV head (a GQA group, several tokens), flash-attention
   style: out[i] (head_dim) = sum_j softmax_j(scale * q[i].k_j) v_j over the cached positions
   j in [lo[i], hi[i]) (lo[i] < hi[i]: a causal offset, a sliding window), where k_j = row j of
   k and v_j = row j of v, rows row_bytes apart, each starting with this head's head_dim values
   in kv_type. scratch: ek_attention_scratch_floats(n_q, head_dim) floats, 8-byte aligned. */
EK_API int64_t ek_attention_scratch_floats(int64_t n_q, int64_t head_dim);
EK_API void ek_attention(const float *const *q, float *const *out, const int64_t *lo, const int64_t *hi, int64_t n_q,
                         const void *k, const void *v, int kv_type, size_t row_bytes, int64_t head_dim, float scale,
                         float *scratch);

/* ------------------------------------------------------ inference engine */

#define EK_ARCH_LLAMA 0  /* llama, mistral, smollm: GQA, SwiGLU, RoPE NORM */
#define EK_ARCH_QWEN2 1  /* llama + QKV biases, RoPE NEOX */
#define EK_ARCH_GEMMA3 2 /* embedding scale, GeGLU, pre+post norms, QK-norm, local/global layers */

#define EK_ACT_SILU 0
#define EK_ACT_GELU 1

/* A tensor in the mapped file: data NULL means absent. Matrices are
   (n_rows, n_cols) with n_cols = GGUF ne[0]; vectors (norms, biases) are F32
   with n_rows = 1. */
typedef struct ek_tensor_desc {
    const void *data;
    int64_t n_rows;
    int64_t n_cols;
    int32_t type;
    int32_t reserved;
} ek_tensor_desc;

/* Per-layer tensors, indexing ek_model_desc.layers[il * EK_LT_COUNT + k]. */
enum ek_layer_tensor {
    EK_LT_ATTN_NORM, EK_LT_Q, EK_LT_K, EK_LT_V, EK_LT_O,
    EK_LT_Q_BIAS, EK_LT_K_BIAS, EK_LT_V_BIAS, EK_LT_Q_NORM, EK_LT_K_NORM,
    EK_LT_POST_ATTN_NORM, EK_LT_FFN_NORM, EK_LT_GATE, EK_LT_UP, EK_LT_DOWN,
    EK_LT_POST_FFN_NORM, EK_LT_COUNT
};

/* Everything the engine needs; filled and validated by the caller (shapes
   agree with the hyperparameters, types supported, vectors F32). */
typedef struct ek_model_desc {
    int32_t arch;
    int32_t n_vocab, n_embd, n_layer, n_ff;
    int32_t n_head, n_head_kv, head_dim; /* head_dim for K, Q and V */
    int32_t n_rot, rope_mode;
    float rope_base, rope_freq_scale;         /* global layers */
    float rope_base_swa, rope_freq_scale_swa; /* sliding-window layers */
    float rope_mscale, rope_mscale_swa;       /* multiply cos and sin (YaRN's attention factor); 1 = none */
    /* YaRN (rope.scaling.type yarn): rotation pairs that turn more than yarn_beta_fast times
       within the yarn_n_ctx_orig positions the model was trained on keep their frequency,
       those turning less than yarn_beta_slow times are scaled by rope_freq_scale, a linear
       ramp over the pair index blends the two in between, weighted by yarn_ext_factor
       (0 = off: plain linear scaling). Applies to sliding layers with their base and scale. */
    float yarn_ext_factor, yarn_beta_fast, yarn_beta_slow;
    int32_t yarn_n_ctx_orig;
    float norm_eps;
    float embd_scale;  /* inputs are multiplied by it (gemma3: sqrt(n_embd)); 1 otherwise */
    float attn_scale;  /* multiplies q.k */
    int32_t n_swa;       /* sliding window (positions seen incl. self); 0 = none */
    int32_t swa_pattern; /* layer il is sliding iff n_swa > 0 and (il + 1) % swa_pattern != 0 */
    int32_t act;         /* EK_ACT_* applied to the gate */
    int32_t n_ctx, n_batch, n_threads; /* n_ctx: positions of each sequence; n_batch: rows per pass */
    int32_t kv_type;     /* EK_TYPE_F16 or EK_TYPE_Q8_0 */
    int32_t n_seq;       /* sequences the KV cache holds (>= 1), each of n_ctx positions */
    uint32_t weight_flags; /* EK_WEIGHT_* passed to ek_weight_create for matrices */
    ek_tensor_desc tok_embd, output_norm, output; /* output.data NULL: tied to tok_embd */
    const float *rope_freqs; /* n_rot/2 frequency divisors, or NULL */
    const ek_tensor_desc *layers; /* n_layer * EK_LT_COUNT */
} ek_model_desc;

typedef struct ek_model ek_model;

/* Bytes the engine allocates for desc besides the mapped weights. */
typedef struct ek_model_memory {
    uint64_t kv_cache;      /* K and V of every layer for n_seq x n_ctx positions */
    uint64_t scratch;       /* activations for n_batch tokens, an attention tile per thread, and the
                               largest input buffer ek_matmul allocates per call */
    uint64_t weights_owned; /* repacked weight copies (desc.weight_flags with EK_WEIGHT_ALLOW_REPACK) */
    uint64_t weights_mapped; /* bytes of the matrices still read from the mapping (not repacked) */
} ek_model_memory;

EK_API ek_status ek_model_memory_needs(const ek_model_desc *desc, ek_model_memory *out);
EK_API ek_status ek_model_create(const ek_model_desc *desc, ek_model **out);
EK_API void ek_model_free(ek_model *model);
EK_API void ek_model_memory_used(const ek_model *model, ek_model_memory *out);

/* Evaluate ids[0..n) at positions start.. of sequence 0 (start + n <= n_ctx, ids < n_vocab:
   the caller checked). Positions >= start in the cache are overwritten; each
   token attends to positions <= its own. logits: (n, n_vocab) when
   all_logits, else (n_vocab) for the last token. */
EK_API ek_status ek_model_eval(ek_model *model, const int32_t *ids, int64_t n, int64_t start,
                               float *logits, int all_logits);
/* Ask an ek_model_eval running on another thread to stop: it returns EK_ERR_CANCELLED after
   the layer it is in (positions from `start` on are then not valid cache). Safe from any
   thread at any time; an eval starting later clears the request, so a caller repeats it
   until the eval has returned. */
EK_API void ek_model_abort(ek_model *model);

/* One sequence's part of ek_model_eval_batch: ids[0..n) at positions start.. of sequence seq. */
typedef struct ek_seq_input {
    const int32_t *ids;
    int64_t n;     /* >= 1 */
    int64_t start; /* start + n <= n_ctx */
    int32_t seq;   /* in [0, n_seq), each at most once per call */
    int32_t reserved;
} ek_seq_input;

/* Evaluate several sequences together: the rows of every entry (in order, n_batch rows per
   pass) share each pass through the weights, so one decode step of N sequences is one product
   of m = N rows per matrix. Each token gets its own sequence's position and attends only to
   that sequence's cache, positions <= its own (within the window on sliding layers).
   logits: (n_entries, n_vocab), the last token of each entry. The caller checked every entry. */
EK_API ek_status ek_model_eval_batch(ek_model *model, const ek_seq_input *entries, int64_t n_entries,
                                     float *logits);

/* Sequence dst's positions [0, n) become a copy of sequence src's (src != dst, n <= n_ctx). */
EK_API void ek_model_seq_copy(ek_model *model, int32_t src, int32_t dst, int64_t n);

/* Activation statistics for importance matrices: while `sums` is set (NULL stops), every
   evaluated token adds the square of each input column of every matrix product to it:
   per layer il, at il * (2 n_embd + n_head * head_dim + n_ff), the input of Q/K/V (n_embd
   values), of the attention output (n_head * head_dim), of gate/up (n_embd) and of down
   (n_ff); after the layers, the output head's input (n_embd; rows with logits only).
   sums holds ek_model_activation_sums_len() doubles, owned by the caller. */
EK_API int64_t ek_model_activation_sums_len(const ek_model *model);
EK_API void ek_model_set_activation_sums(ek_model *model, double *sums);

/* The KV cache of sequence seq's positions [0, n_past) as one blob, and back. */
EK_API uint64_t ek_model_state_bytes(const ek_model *model, int64_t n_past);
EK_API void ek_model_state_save(const ek_model *model, int32_t seq, int64_t n_past, void *dst);
EK_API void ek_model_state_load(ek_model *model, int32_t seq, int64_t n_past, const void *src);

/* ------------------------------------------------------------------- ABI */

/* Bumped whenever a declaration in this header changes in a way that a binding written for
   the previous one would misread: a struct member, an enum or macro value, a function's
   parameters. edgesdk/_native.py mirrors it and refuses a library that reports another. */
#define EK_ABI_VERSION 3
EK_API int ek_abi_version(void);

/* The structs bindings mirror (ek_tensor_desc, ek_model_desc, ek_model_memory, ek_seq_input), described
   by the library itself so that a binding can compare its copy with the build it loaded. */
#define EK_STRUCT_TENSOR_DESC 0
#define EK_STRUCT_MODEL_DESC 1
#define EK_STRUCT_MODEL_MEMORY 2
#define EK_STRUCT_SEQ_INPUT 3

/* sizeof the struct `which` (EK_STRUCT_*); 0 when unknown. */
EK_API size_t ek_struct_size(int which);
/* Member `index` of struct `which` in declaration order: its name, with its byte offset and
   size stored in *offset and *size; NULL past the last member or for an unknown `which`. */
EK_API const char *ek_struct_member(int which, int index, size_t *offset, size_t *size);

/* ------------------------------------------------------------- tokenizer */

/* A hash table from byte strings to (priority, id) for the tokenizer's pair merging.
   Entry k is the bytes blob[offsets[k], offsets[k+1]) with an int split: byte-level BPE keys
   a merge by its concatenation and the left part's byte length (split > 0) and every token by
   its text (split 0); SentencePiece keys every token by its text (split 0) with priority
   -score. A key given twice keeps its first entry. ids[k] may be -1 (a merge whose result
   is not a token). The table copies the blob. */
typedef struct ek_tok_table ek_tok_table;

EK_API ek_status ek_tok_table_create(const char *blob, const int64_t *offsets, const int32_t *splits,
                                     const float *priorities, const int32_t *ids, int64_t n,
                                     ek_tok_table **out);
EK_API void ek_tok_table_free(ek_tok_table *table);

/* Merge one word: text holds n initial symbols of symbol_bytes[i] bytes each. Adjacent
   symbols whose concatenation (split_keys = 1: and left length) is in the table merge,
   lowest priority first, leftmost on ties, until none can. Writes the final symbols' token
   ids (-1 when a symbol is not a token) and byte lengths to out_ids/out_bytes (n entries
   each, caller-allocated) and their count to *n_out. O(n log n) time, O(n) memory. */
EK_API ek_status ek_tok_merge(const ek_tok_table *table, int32_t split_keys, const char *text,
                              const int32_t *symbol_bytes, int32_t n, int32_t *out_ids,
                              int32_t *out_bytes, int32_t *n_out);

#ifdef __cplusplus
}
#endif
#endif /* EDGEKERN_H */
