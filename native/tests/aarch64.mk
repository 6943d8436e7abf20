# The aarch64 half of the native tests: cross-compile native/src and the C tests
# for aarch64 and run them under qemu user-mode emulation on two CPU models:
#   cortex-a72  a Raspberry Pi 4 core: ASIMD, no dot product -> scalar and neon
#   max         every feature qemu knows, dot product included -> scalar, neon, neon_dotprod
# Included by native/tests/Makefile; run `make -C native/tests test-aarch64`.
# Debian packages: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user (tools/test.sh installs them).

ARM_CC      ?= aarch64-linux-gnu-gcc
ARM_QEMU    ?= qemu-aarch64
ARM_SYSROOT ?= /usr/aarch64-linux-gnu
ARM_BUILD   := ../build/aarch64
# The same flags as setup.py's extension (no -march: dispatch picks the path at run time), plus -Werror
# so a warning in an ISA file fails here rather than on a Pi.
ARM_CFLAGS  := -std=c11 -O2 -pthread -Wall -Wextra -Wno-unused-function -Wno-unused-parameter -Werror \
               -I../include -I../src
ARM_LDLIBS  := -pthread -lm
ARM_LIB_SRCS := $(sort $(wildcard ../src/*.c))
ARM_LIB_OBJS := $(patsubst ../src/%.c,$(ARM_BUILD)/lib/%.o,$(ARM_LIB_SRCS))
# Every C test in this folder that is written for all architectures, plus the ARM-only ones.
ARM_TESTS   := test_arm_dispatch test_arm_kernels test_arm_gguf_rows
ARM_BINS    := $(addprefix $(ARM_BUILD)/,$(ARM_TESTS))
ARM_RUN      = $(ARM_QEMU) -L $(ARM_SYSROOT) -cpu

.PHONY: test-aarch64-gguf build-aarch64 clean-aarch64
# Keep the library objects between runs (they are intermediates of the pattern rules).
.SECONDARY: $(ARM_LIB_OBJS)

build-aarch64: $(ARM_BINS)

$(ARM_BUILD)/lib/%.o: ../src/%.c $(wildcard ../src/*.h) ../include/edgekern.h
	@mkdir -p $(dir $@)
	$(ARM_CC) $(ARM_CFLAGS) -c $< -o $@

$(ARM_BUILD)/%: %.c arm_check.h $(ARM_LIB_OBJS)
	@mkdir -p $(dir $@)
	$(ARM_CC) $(ARM_CFLAGS) $< $(ARM_LIB_OBJS) -o $@ $(ARM_LDLIBS)

# Each line: CPU model, forced ISA, what dispatch must report about dotprod.
test-aarch64: $(ARM_BINS)
	EDGESDK_ISA=neon         EXPECT_DOTPROD=0 $(ARM_RUN) cortex-a72 $(ARM_BUILD)/test_arm_dispatch
	EDGESDK_ISA=neon_dotprod EXPECT_DOTPROD=1 $(ARM_RUN) max        $(ARM_BUILD)/test_arm_dispatch
	EDGESDK_ISA=scalar       $(ARM_RUN) cortex-a72 $(ARM_BUILD)/test_arm_kernels
	EDGESDK_ISA=neon         $(ARM_RUN) cortex-a72 $(ARM_BUILD)/test_arm_kernels
	EDGESDK_ISA=neon_dotprod $(ARM_RUN) max        $(ARM_BUILD)/test_arm_kernels
	@echo "test-aarch64: all passed"

# Rows of the real models' weights with numpy's expectations, written by tests/test_native_arm.py:
#   make test-aarch64-gguf ARM_GGUF_CASES=/path/to/cases.bin
test-aarch64-gguf: $(ARM_BINS)
	@test -n "$(ARM_GGUF_CASES)" || { echo "set ARM_GGUF_CASES to a cases file"; exit 2; }
	EDGESDK_ISA=scalar       $(ARM_RUN) cortex-a72 $(ARM_BUILD)/test_arm_gguf_rows $(ARM_GGUF_CASES)
	EDGESDK_ISA=neon         $(ARM_RUN) cortex-a72 $(ARM_BUILD)/test_arm_gguf_rows $(ARM_GGUF_CASES)
	EDGESDK_ISA=neon_dotprod $(ARM_RUN) max        $(ARM_BUILD)/test_arm_gguf_rows $(ARM_GGUF_CASES)
	@echo "test-aarch64-gguf: all passed"

clean-aarch64:
	rm -rf $(ARM_BUILD)
