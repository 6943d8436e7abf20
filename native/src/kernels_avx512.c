/* x86 AVX-512 (F/BW/VL/DQ) kernels, and the VNNI variants. */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
void ek_fill_kernels_avx512(ek_kernels *k) {
    ek_fill_kernels_avx2(k); /* milestone 1: SIMD kernels land next */
    k->isa = EK_ISA_AVX512;
}
void ek_fill_kernels_avx512_vnni(ek_kernels *k) { ek_fill_kernels_avx512(k); }
#endif
