/* Helpers shared by ops.c, rope.c and the engine files (model.c, native/cuda/model.cu); not part of the public API. */
#ifndef EK_OPS_INTERNAL_H
#define EK_OPS_INTERNAL_H

#include "edgekern.h" /* ek_model_desc */

#include <stdint.h>

#ifdef __cplusplus
extern "C" { /* native/cuda/model.cu computes its RoPE tables with rope.c */
#endif

/* How the angles of one kind of layer are scaled beyond plain RoPE.
   YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension"): rotation pair i
   turns pos * theta_i times per position. Pairs that complete many turns within the
   original context (i < corr_lo) keep theta_i (extrapolation is safe: they never saw a
   new angle); pairs that complete less than about one turn (i > corr_hi) are interpolated
   to freq_scale * theta_i like linear scaling; a linear ramp blends the two in between,
   weighted by ext_factor (0 = plain linear scaling, no ramp). cos and sin are multiplied by
   mscale, which scales every q.k by mscale^2 (YaRN's 0.1 ln(1 / freq_scale) + 1 keeps
   attention as sharp as it was within the original context). */
typedef struct ops_rope_scaling {
    float freq_scale;       /* interpolation factor, 1 / rope.scaling.factor */
    float ext_factor;       /* weight of the YaRN ramp; 0 turns it off */
    float corr_lo, corr_hi; /* pair indices where the ramp leaves 1 and reaches 0 */
    float mscale;           /* multiplies cos and sin */
} ops_rope_scaling;

/* The scaling of n_rot rotated dims with this base: with ext_factor != 0, YaRN's ramp for a
   model trained on n_ctx_orig positions, starting at the pair that turns beta_fast times
   within n_ctx_orig and ending at the one that turns beta_slow times. */
ops_rope_scaling ops_rope_scaling_init(int64_t n_rot, float base, float freq_scale, float ext_factor, float mscale,
                                       int32_t n_ctx_orig, float beta_fast, float beta_slow);

/* The scalings of a model's global and sliding-window layers (each with its own base and
   scale, YaRN's settings shared), as both engines compute them. */
void ops_rope_scalings(const ek_model_desc *d, ops_rope_scaling *global, ops_rope_scaling *sliding);

/* RoPE split in two: the angles of one position (n_rot/2 cos and sin), computed once
   per batch and layer kind, and their application to n_heads vectors. */
void ops_rope_angles(int64_t pos, int64_t n_rot, float base, const ops_rope_scaling *scaling,
                     const float *freq_factors, float *cosv, float *sinv);
void ops_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float *cosv,
                    const float *sinv, int mode);

#ifdef __cplusplus
}
#endif

#endif
