/* RoPE's angles (with linear and YaRN scaling) and their application, in double for the angles:
 * shared by the CPU engine (model.c, ops.c's ek_rope) and the CUDA library (native/cuda/model.cu
 * computes each pass's cos/sin table with these on the host), so both rotate by the same floats.
 * Depends on nothing but libm.
 */
#include "edgekern.h" /* EK_ROPE_NEOX, ek_model_desc */
#include "ops_internal.h"

#include <math.h>

#define OPS_PI 3.14159265358979323846 /* M_PI is POSIX, not C11 */

/* The pair index whose wavelength 2 pi base^(2i/n_rot) fits `turns` times into n_ctx_orig
   positions: base^(2i/n_rot) = n_ctx_orig / (2 pi turns). */
static double yarn_pair_for_turns(int64_t n_rot, int32_t n_ctx_orig, float turns, float base) {
    return (double)n_rot * log((double)n_ctx_orig / (2.0 * OPS_PI * (double)turns)) / (2.0 * log((double)base));
}

ops_rope_scaling ops_rope_scaling_init(int64_t n_rot, float base, float freq_scale, float ext_factor, float mscale,
                                       int32_t n_ctx_orig, float beta_fast, float beta_slow) {
    ops_rope_scaling s = {freq_scale, ext_factor, 0.0f, 0.0f, mscale};
    if (ext_factor == 0.0f) return s;
    /* Whole pair indices, clamped to the rotated range as llama.cpp (ggml) clamps them. */
    const double lo = floor(yarn_pair_for_turns(n_rot, n_ctx_orig, beta_fast, base));
    const double hi = ceil(yarn_pair_for_turns(n_rot, n_ctx_orig, beta_slow, base));
    s.corr_lo = (float)(lo > 0.0 ? lo : 0.0);
    s.corr_hi = (float)(hi < (double)(n_rot - 1) ? hi : (double)(n_rot - 1));
    return s;
}

void ops_rope_scalings(const ek_model_desc *d, ops_rope_scaling *global, ops_rope_scaling *sliding) {
    *global = ops_rope_scaling_init(d->n_rot, d->rope_base, d->rope_freq_scale, d->yarn_ext_factor, d->rope_mscale,
                                    d->yarn_n_ctx_orig, d->yarn_beta_fast, d->yarn_beta_slow);
    *sliding = ops_rope_scaling_init(d->n_rot, d->rope_base_swa, d->rope_freq_scale_swa, d->yarn_ext_factor,
                                     d->rope_mscale_swa, d->yarn_n_ctx_orig, d->yarn_beta_fast, d->yarn_beta_slow);
}

void ops_rope_angles(int64_t pos, int64_t n_rot, float base, const ops_rope_scaling *scaling,
                     const float *freq_factors, float *cosv, float *sinv) {
    /* double for the reference accuracy; once per position, shared by all heads and layers. */
    const double span = scaling->corr_hi - scaling->corr_lo > 0.001f ? scaling->corr_hi - scaling->corr_lo : 0.001;
    for (int64_t i = 0; i < n_rot / 2; i++) {
        double theta = (double)pos * pow((double)base, -2.0 * (double)i / (double)n_rot);
        if (freq_factors) theta /= freq_factors[i];
        double scale = scaling->freq_scale;
        if (scaling->ext_factor != 0.0f) {
            double t = ((double)i - scaling->corr_lo) / span;   /* 0 at corr_lo, 1 at corr_hi */
            t = t < 0.0 ? 0.0 : (t > 1.0 ? 1.0 : t);
            const double keep = (1.0 - t) * scaling->ext_factor; /* weight of the unscaled angle */
            scale = scale * (1.0 - keep) + keep;
        }
        theta *= scale;
        cosv[i] = (float)(cos(theta) * scaling->mscale);
        sinv[i] = (float)(sin(theta) * scaling->mscale);
    }
}

void ops_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float *cosv,
                    const float *sinv, int mode) {
    const int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + h * head_dim;
        if (mode == EK_ROPE_NEOX) {
            for (int64_t i = 0; i < half; i++) {
                const float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * cosv[i] - x1 * sinv[i];
                v[i + half] = x0 * sinv[i] + x1 * cosv[i];
            }
        } else {
            for (int64_t i = 0; i < half; i++) {
                const float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * cosv[i] - x1 * sinv[i];
                v[2 * i + 1] = x0 * sinv[i] + x1 * cosv[i];
            }
        }
    }
}

