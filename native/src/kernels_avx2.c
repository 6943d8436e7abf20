/* x86 AVX2 + FMA + F16C kernels. Compiled for those instructions by a target
 * pragma, so one build runs on every x86-64; dispatch.c fills this table only
 * when the CPU and OS support them. The kernels are kernels_x86_body.h with
 * the int8 dot product done by maddubs (u8 x s8 -> pairs of int16) + madd. */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#define X86_SUFFIX(name) name##_avx2

static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

/* int16 lanes 0..7 (32-bit lanes 0..3 after madd) get a, 8..15 get b. */
static inline __m256i make_scales(int a, int b) {
    return _mm256_set_m128i(_mm_set1_epi16((int16_t)b), _mm_set1_epi16((int16_t)a));
}

static inline __m256i dot_u8s8_scaled(__m256i acc, __m256i u, __m256i s, __m256i scales) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scales));
}

/* Per-row scales as int16 pairs (sc, sc), so madd applies them to both halves of a lane. */
static inline __m256i lane_scales(__m256i sc32) {
    return _mm256_or_si256(_mm256_and_si256(sc32, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(sc32, 16));
}

/* u < 64 and |s| <= 127: maddubs' int16 pairs stay below 2 * 63 * 127. */
static inline __m256i sub_dot_scaled(__m256i acc, const __m256i *u, const __m256i *s, int n, __m256i lsc) {
    for (int k = 0; k < n; k++) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u[k], s[k]), lsc));
    return acc;
}

#include "kernels_x86_body.h"

void ek_fill_kernels_avx2(ek_kernels *k) {
    ek_fill_kernels_scalar(k); /* nothing is left unset, but every slot is overridden below */
    k->isa = EK_ISA_AVX2;
    fill_table_avx2(k);
}
#pragma GCC pop_options
#endif
