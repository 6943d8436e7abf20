"""The ARM kernel paths really run: native/ cross-compiled for aarch64 and its C tests executed
under qemu user-mode emulation as a Cortex-A72 (Raspberry Pi 4: NEON, no dot product) and as
qemu's `max` CPU (dot product), on the scalar, neon and neon_dotprod paths.

Needs Debian's gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user (tools/test.sh installs them).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

NATIVE_TESTS = Path(__file__).resolve().parent.parent / "native" / "tests"
# Build (~1 min on 2 cores) plus emulated runs; well above what it needs, so a hang fails instead of stalling CI.
TEST_AARCH64_TIMEOUT_S = 300


def _require_tools() -> None:
    missing = [tool for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64", "make") if shutil.which(tool) is None]
    assert not missing, (
        f"missing {', '.join(missing)}: install the Debian packages gcc-aarch64-linux-gnu "
        "libc6-dev-arm64-cross qemu-user (tools/test.sh does)"
    )


def test_aarch64_kernels_pass_under_qemu_on_cortex_a72_and_max():
    _require_tools()
    result = subprocess.run(
        ["make", "-C", str(NATIVE_TESTS), "test-aarch64"],
        capture_output=True, text=True, timeout=TEST_AARCH64_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make test-aarch64 exited {result.returncode}:\n{output[-6000:]}"
    assert "test-aarch64: all passed" in output
    # The dispatch checks ran on both CPU models and saw what each one has.
    assert "test_arm_dispatch (no dotprod): " in output and "test_arm_dispatch (dotprod CPU): " in output
    # Every kernel ran against float64 and the scalar path on each family, on the CPU that has it.
    for family in ("scalar", "neon", "neon_dotprod"):
        assert f"test_arm_kernels ({family}): " in output, f"kernel tests for {family} did not run"
    assert "FAIL" not in output
