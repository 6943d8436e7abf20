/* The ABI version and the layout of the structs edgekern.h shares with bindings, so that a
 * binding can tell at load that the library it found was built from another header.
 */
#include "edgekern.h"

#include <stddef.h>

int ek_abi_version(void) { return EK_ABI_VERSION; }

typedef struct {
    const char *name;
    size_t offset, size;
} member_layout;

/* One member_layout entry: the member's name as written, its offset and its size. */
#define MEMBER(type, member) {#member, offsetof(type, member), sizeof(((type *)0)->member)}

static const member_layout tensor_desc_members[] = {
    MEMBER(ek_tensor_desc, data), MEMBER(ek_tensor_desc, n_rows), MEMBER(ek_tensor_desc, n_cols),
    MEMBER(ek_tensor_desc, type), MEMBER(ek_tensor_desc, reserved),
};

static const member_layout model_desc_members[] = {
    MEMBER(ek_model_desc, arch),
    MEMBER(ek_model_desc, n_vocab),
    MEMBER(ek_model_desc, n_embd),
    MEMBER(ek_model_desc, n_layer),
    MEMBER(ek_model_desc, n_ff),
    MEMBER(ek_model_desc, n_head),
    MEMBER(ek_model_desc, n_head_kv),
    MEMBER(ek_model_desc, head_dim),
    MEMBER(ek_model_desc, n_rot),
    MEMBER(ek_model_desc, rope_mode),
    MEMBER(ek_model_desc, rope_base),
    MEMBER(ek_model_desc, rope_freq_scale),
    MEMBER(ek_model_desc, rope_base_swa),
    MEMBER(ek_model_desc, rope_freq_scale_swa),
    MEMBER(ek_model_desc, rope_mscale),
    MEMBER(ek_model_desc, rope_mscale_swa),
    MEMBER(ek_model_desc, yarn_ext_factor),
    MEMBER(ek_model_desc, yarn_beta_fast),
    MEMBER(ek_model_desc, yarn_beta_slow),
    MEMBER(ek_model_desc, yarn_n_ctx_orig),
    MEMBER(ek_model_desc, norm_eps),
    MEMBER(ek_model_desc, embd_scale),
    MEMBER(ek_model_desc, attn_scale),
    MEMBER(ek_model_desc, n_swa),
    MEMBER(ek_model_desc, swa_pattern),
    MEMBER(ek_model_desc, act),
    MEMBER(ek_model_desc, n_ctx),
    MEMBER(ek_model_desc, n_batch),
    MEMBER(ek_model_desc, n_threads),
    MEMBER(ek_model_desc, kv_type),
    MEMBER(ek_model_desc, n_seq),
    MEMBER(ek_model_desc, weight_flags),
    MEMBER(ek_model_desc, tok_embd),
    MEMBER(ek_model_desc, output_norm),
    MEMBER(ek_model_desc, output),
    MEMBER(ek_model_desc, rope_freqs),
    MEMBER(ek_model_desc, layers),
};

static const member_layout model_memory_members[] = {
    MEMBER(ek_model_memory, kv_cache), MEMBER(ek_model_memory, scratch), MEMBER(ek_model_memory, weights_owned),
    MEMBER(ek_model_memory, weights_mapped),
};

static const member_layout seq_input_members[] = {
    MEMBER(ek_seq_input, ids), MEMBER(ek_seq_input, n), MEMBER(ek_seq_input, start), MEMBER(ek_seq_input, seq),
    MEMBER(ek_seq_input, reserved),
};

typedef struct {
    const member_layout *members;
    int n_members;
    size_t size;
} struct_layout;

static const struct_layout struct_layouts[] = {
    [EK_STRUCT_TENSOR_DESC] = {tensor_desc_members, (int)(sizeof tensor_desc_members / sizeof tensor_desc_members[0]),
                               sizeof(ek_tensor_desc)},
    [EK_STRUCT_MODEL_DESC] = {model_desc_members, (int)(sizeof model_desc_members / sizeof model_desc_members[0]),
                              sizeof(ek_model_desc)},
    [EK_STRUCT_MODEL_MEMORY] = {model_memory_members,
                                (int)(sizeof model_memory_members / sizeof model_memory_members[0]),
                                sizeof(ek_model_memory)},
    [EK_STRUCT_SEQ_INPUT] = {seq_input_members, (int)(sizeof seq_input_members / sizeof seq_input_members[0]),
                             sizeof(ek_seq_input)},
};

static const struct_layout *layout_of(int which) {
    if (which < 0 || which >= (int)(sizeof struct_layouts / sizeof struct_layouts[0])) return NULL;
    return &struct_layouts[which];
}

size_t ek_struct_size(int which) {
    const struct_layout *l = layout_of(which);
    return l ? l->size : 0;
}

const char *ek_struct_member(int which, int index, size_t *offset, size_t *size) {
    const struct_layout *l = layout_of(which);
    if (!l || index < 0 || index >= l->n_members) return NULL;
    *offset = l->members[index].offset;
    *size = l->members[index].size;
    return l->members[index].name;
}
