/* x86 AVX-512 kernels. With VNNI (every AVX-512 CPU since Ice Lake) the int8
 * dot product is one vpdpbusd (u8 x s8 summed in groups of 4 into int32),
 * used on 256-bit registers: the kernels are memory-bound for GEMV, and the
 * 256-bit form keeps the clock up on the CPUs that throttle for 512-bit work.
 * Without VNNI, AVX-512 offers nothing over AVX2 for these int8 dots, so that
 * table is AVX2's kernels (the family name stays avx512 for the user). */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#include <immintrin.h>

#define X86_SUFFIX(name) name##_avx512vnni

static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }

/* 32-bit lanes 0..3 get a, 4..7 get b. */
static inline __m256i make_scales(int a, int b) {
    return _mm256_set_m128i(_mm_set1_epi32(b), _mm_set1_epi32(a));
}

static inline __m256i dot_u8s8_scaled(__m256i acc, __m256i u, __m256i s, __m256i scales) {
    return _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s), scales));
}

#include "kernels_x86_body.h"

void ek_fill_kernels_avx512_vnni(ek_kernels *k) {
    ek_fill_kernels_scalar(k);
    k->isa = EK_ISA_AVX512;
    fill_table_avx512vnni(k);
}
#pragma GCC pop_options

void ek_fill_kernels_avx512(ek_kernels *k) {
    ek_fill_kernels_avx2(k);
    k->isa = EK_ISA_AVX512;
}
#endif
