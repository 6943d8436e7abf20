/* Helpers shared by ops.c and the engine files; not part of the public API. */
#ifndef EK_OPS_INTERNAL_H
#define EK_OPS_INTERNAL_H

#include <stdint.h>

float ops_half_to_float(uint16_t h);
uint16_t ops_float_to_half(float f);

/* RoPE split in two: the angles of one position (n_rot/2 cos and sin), computed once
   per batch and layer kind, and their application to n_heads vectors. */
void ops_rope_angles(int64_t pos, int64_t n_rot, float base, float freq_scale, const float *freq_factors,
                     float *cosv, float *sinv);
void ops_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float *cosv,
                    const float *sinv, int mode);

#endif
