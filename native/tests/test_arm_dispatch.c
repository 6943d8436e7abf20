/* dispatch.c under qemu-aarch64: getauxval reports ASIMD always and the dot product
 * extension only on CPUs that have it; EDGESDK_ISA is honoured; an ISA the CPU lacks is
 * refused. EXPECT_DOTPROD=0|1 says which CPU model qemu emulates (cortex-a72 or max). */
#include "arm_check.h"
#include "edgekern.h"

#include <string.h>

int main(void) {
    const char *expect_env = getenv("EXPECT_DOTPROD");
    const char *isa_env = getenv("EDGESDK_ISA");
    if (!expect_env || !isa_env) {
        fprintf(stderr, "test_arm_dispatch: set EXPECT_DOTPROD=0|1 and EDGESDK_ISA\n");
        return 2;
    }
    const int expect_dotprod = atoi(expect_env);
    const uint64_t f = ek_cpu_features();

    CHECK(f & EK_CPU_NEON, "features %#llx lack NEON", (unsigned long long)f);
    CHECK(((f & EK_CPU_DOTPROD) != 0) == expect_dotprod, "features %#llx, expected dotprod=%d",
          (unsigned long long)f, expect_dotprod);
    CHECK(!(f & (EK_CPU_AVX2 | EK_CPU_AVX512F)), "x86 bits set on ARM: %#llx", (unsigned long long)f);

    CHECK(ek_isa_available(EK_ISA_SCALAR), "scalar must always be available");
    CHECK(ek_isa_available(EK_ISA_NEON), "neon must be available on every aarch64 CPU");
    CHECK(ek_isa_available(EK_ISA_NEON_DOTPROD) == expect_dotprod, "neon_dotprod availability %d",
          ek_isa_available(EK_ISA_NEON_DOTPROD));
    CHECK(!ek_isa_available(EK_ISA_AVX2) && !ek_isa_available(EK_ISA_AVX512), "x86 paths offered on ARM");
    CHECK(ek_isa_best() == (expect_dotprod ? EK_ISA_NEON_DOTPROD : EK_ISA_NEON), "best is %s",
          ek_isa_name(ek_isa_best()));

    /* The environment's choice is what the library starts with. */
    CHECK(strcmp(ek_isa_name(ek_isa_current()), isa_env) == 0, "current %s, EDGESDK_ISA=%s",
          ek_isa_name(ek_isa_current()), isa_env);

    CHECK(ek_isa_set(EK_ISA_NEON_DOTPROD) == (expect_dotprod ? EK_OK : EK_ERR_ISA_UNAVAILABLE),
          "setting neon_dotprod on a CPU with dotprod=%d", expect_dotprod);
    CHECK(ek_isa_set(EK_ISA_AVX2) == EK_ERR_ISA_UNAVAILABLE, "avx2 accepted on ARM");
    CHECK(ek_isa_set(EK_ISA_NEON) == EK_OK, "neon refused");
    CHECK(ek_isa_current() == EK_ISA_NEON, "current %s after setting neon", ek_isa_name(ek_isa_current()));
    CHECK(ek_isa_set(EK_ISA_SCALAR) == EK_OK, "scalar refused");

    return check_summary(expect_dotprod ? "test_arm_dispatch (dotprod CPU)" : "test_arm_dispatch (no dotprod)");
}
