/* CPU feature detection and the choice of kernel family.
 *
 * The only file that knows every instruction set: it asks the CPU (cpuid on
 * x86, getauxval(AT_HWCAP) on Linux/ARM) *and* the OS (xgetbv: are the AVX and
 * AVX-512 register states saved on context switch?), honours EDGESDK_ISA, and
 * sets the active family once. ISA files export kernels; they never decide.
 */
#define _GNU_SOURCE
#include "edgekern.h"
#include "kernels.h"

#include <pthread.h>
#include <stdatomic.h>

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define EK_X86 1
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define EK_ARM64_LINUX 1
#endif

#ifdef EK_X86
static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

static uint64_t detect_x86(void) {
    unsigned a, b, c, d;
    uint64_t f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int has_osxsave = (c >> 27) & 1;
    const int has_fma = (c >> 12) & 1, has_f16c = (c >> 29) & 1, has_avx = (c >> 28) & 1;
    if (!has_osxsave || !has_avx) return 0;
    const uint64_t xcr0 = xgetbv0();
    const int os_avx = (xcr0 & 0x6) == 0x6;        /* XMM and YMM state */
    const int os_avx512 = (xcr0 & 0xe6) == 0xe6;   /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (!os_avx) return 0;
    if (has_fma) f |= EK_CPU_FMA;
    if (has_f16c) f |= EK_CPU_F16C;
    if (__get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    if ((b >> 5) & 1) f |= EK_CPU_AVX2;
    if (os_avx512) {
        if ((b >> 16) & 1) f |= EK_CPU_AVX512F;
        if ((b >> 17) & 1) f |= EK_CPU_AVX512DQ;
        if ((b >> 30) & 1) f |= EK_CPU_AVX512BW;
        if ((b >> 31) & 1) f |= EK_CPU_AVX512VL;
        if ((c >> 11) & 1) f |= EK_CPU_AVX512VNNI;
    }
    __cpuid_count(7, 1, a, b, c, d);
    if ((a >> 4) & 1) f |= EK_CPU_AVXVNNI;
    if (os_avx512 && ((a >> 5) & 1)) f |= EK_CPU_AVX512BF16;
    return f;
}
#endif

#ifdef EK_ARM64_LINUX
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_FPHP
#define HWCAP_FPHP (1 << 9)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#ifndef HWCAP_SVE
#define HWCAP_SVE (1 << 22)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1 << 13)
#endif
static uint64_t detect_arm64(void) {
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    uint64_t f = 0;
    if (hw & HWCAP_ASIMD) f |= EK_CPU_NEON;
    if (hw & HWCAP_ASIMDDP) f |= EK_CPU_DOTPROD;
    if (hw & HWCAP_SVE) f |= EK_CPU_SVE;
    if (hw & HWCAP_FPHP) f |= EK_CPU_FP16;
    if (hw2 & HWCAP2_I8MM) f |= EK_CPU_I8MM;
    return f;
}
#endif

static uint64_t detect_features(void) {
#if defined(EK_X86)
    return detect_x86();
#elif defined(EK_ARM64_LINUX)
    return detect_arm64();
#elif defined(__aarch64__)
    return EK_CPU_NEON; /* ASIMD is mandatory on AArch64 */
#else
    return 0;
#endif
}

/* Detected once: cpuid is slow (in a VM it traps to the hypervisor), and the ops'
   entry points look up the active table, which checks availability, on every call. */
static uint64_t cpu_features;
static pthread_once_t cpu_features_once = PTHREAD_ONCE_INIT;

static void set_cpu_features(void) { cpu_features = detect_features(); }

uint64_t ek_cpu_features(void) {
    pthread_once(&cpu_features_once, set_cpu_features);
    return cpu_features;
}

/* Which kernel families were compiled into this build. */
static int isa_compiled(int isa) {
    switch (isa) {
    case EK_ISA_SCALAR: return 1;
#ifdef EK_X86
    case EK_ISA_AVX2: case EK_ISA_AVX512: return 1;
#endif
#ifdef __aarch64__
    case EK_ISA_NEON: case EK_ISA_NEON_DOTPROD: return 1; /* kernels_neon.c, both tables */
#endif
    default: return 0;
    }
}

int ek_isa_available(int isa) {
    if (!isa_compiled(isa)) return 0;
    const uint64_t f = ek_cpu_features();
    switch (isa) {
    case EK_ISA_SCALAR: return 1;
    case EK_ISA_AVX2: {
        const uint64_t need = EK_CPU_AVX2 | EK_CPU_FMA | EK_CPU_F16C;
        return (f & need) == need;
    }
    case EK_ISA_AVX512: {
        const uint64_t need = EK_CPU_AVX2 | EK_CPU_FMA | EK_CPU_F16C | EK_CPU_AVX512F |
                              EK_CPU_AVX512BW | EK_CPU_AVX512VL | EK_CPU_AVX512DQ;
        return (f & need) == need;
    }
    case EK_ISA_NEON: return (f & EK_CPU_NEON) != 0;
    case EK_ISA_NEON_DOTPROD: return (f & (EK_CPU_NEON | EK_CPU_DOTPROD)) == (EK_CPU_NEON | EK_CPU_DOTPROD);
    default: return 0;
    }
}

int ek_isa_best(void) {
    static const int order[] = {EK_ISA_AVX512, EK_ISA_AVX2, EK_ISA_NEON_DOTPROD, EK_ISA_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (ek_isa_available(order[i])) return order[i];
    return EK_ISA_SCALAR;
}

static const char *const isa_names[] = {"scalar", "avx2", "avx512", "neon", "neon_dotprod"};

const char *ek_isa_name(int isa) {
    if (isa < 0 || isa > EK_ISA_NEON_DOTPROD) return "unknown";
    return isa_names[isa];
}

int ek_isa_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i <= EK_ISA_NEON_DOTPROD; i++)
        if (strcmp(name, isa_names[i]) == 0) return i;
    return -1;
}

/* The one piece of mutable global state: the active family, chosen at load
   (EDGESDK_ISA or the best available) and changed only by ek_isa_set. Atomic:
   threads running ops read it while another may set it. */
static atomic_int active_isa = -1;

static int initial_isa(void) {
    const char *env = getenv("EDGESDK_ISA");
    const int wanted = ek_isa_from_name(env);
    return (wanted >= 0 && ek_isa_available(wanted)) ? wanted : ek_isa_best();
}

ek_status ek_isa_set(int isa) {
    if (!ek_isa_available(isa)) return EK_ERR_ISA_UNAVAILABLE;
    atomic_store(&active_isa, isa);
    return EK_OK;
}

int ek_isa_current(void) {
    int isa = atomic_load(&active_isa);
    if (isa < 0) {
        int unset = -1; /* if another thread set it meanwhile, its value stands */
        isa = initial_isa();
        if (!atomic_compare_exchange_strong(&active_isa, &unset, isa)) isa = unset;
    }
    return isa;
}

/* ------------------------------------------------------ the kernel table */

/* One table per family, filled once on first use; read-only afterwards. */
static ek_kernels kernel_tables[EK_ISA_NEON_DOTPROD + 1];
static pthread_once_t kernel_tables_once = PTHREAD_ONCE_INIT;

static void fill_kernel_tables(void) {
    ek_fill_kernels_scalar(&kernel_tables[EK_ISA_SCALAR]);
#ifdef EK_X86
    if (ek_isa_available(EK_ISA_AVX2)) ek_fill_kernels_avx2(&kernel_tables[EK_ISA_AVX2]);
    if (ek_isa_available(EK_ISA_AVX512)) {
        /* VNNI's vpdpbusd replaces three instructions in every int8 dot. */
        if (ek_cpu_features() & EK_CPU_AVX512VNNI) ek_fill_kernels_avx512_vnni(&kernel_tables[EK_ISA_AVX512]);
        else ek_fill_kernels_avx512(&kernel_tables[EK_ISA_AVX512]);
    }
#endif
#ifdef __aarch64__
    if (ek_isa_available(EK_ISA_NEON)) ek_fill_kernels_neon(&kernel_tables[EK_ISA_NEON]);
    if (ek_isa_available(EK_ISA_NEON_DOTPROD)) ek_fill_kernels_neon_dotprod(&kernel_tables[EK_ISA_NEON_DOTPROD]);
#endif
}

const ek_kernels *ek_kernels_for(int isa) {
    if (!ek_isa_available(isa)) return NULL;
    pthread_once(&kernel_tables_once, fill_kernel_tables);
    return &kernel_tables[isa];
}

const ek_kernels *ek_kernels_active(void) { return ek_kernels_for(ek_isa_current()); }
