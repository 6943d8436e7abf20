/* x86 AVX2 + FMA + F16C kernels. Compiled for those instructions per
 * function (target pragma), so one build runs on every x86-64; dispatch.c
 * only fills this table when the CPU and OS support them. */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
void ek_fill_kernels_avx2(ek_kernels *k) {
    ek_fill_kernels_scalar(k); /* milestone 1: SIMD kernels land next */
    k->isa = EK_ISA_AVX2;
}
#endif
