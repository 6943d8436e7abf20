"""The native C tests (native/tests) pass: on this machine, under ASan+UBSan,
and cross-built for aarch64 under qemu-aarch64 for the scalar, NEON
(cortex-a72, no dotprod) and NEON dot-product (-cpu max) paths."""
from __future__ import annotations

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(ROOT, "native", "tests")
MAKE_TIMEOUT_S = 600  # first builds plus qemu emulation of every kernel


def run_make(target: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", TESTS_DIR, target], capture_output=True, text=True,
                          timeout=MAKE_TIMEOUT_S)


def assert_target_passes(target: str) -> None:
    result = run_make(target)
    assert result.returncode == 0, f"make {target} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "all kernel tests passed" in result.stdout


def test_c_kernel_tests_pass_on_this_machine():
    assert_target_passes("test-host")


@pytest.mark.slow
def test_c_kernel_tests_pass_under_address_and_undefined_behaviour_sanitizers():
    assert_target_passes("test-sanitize")


@pytest.mark.slow
def test_c_kernel_tests_pass_for_aarch64_scalar_under_qemu():
    assert_target_passes("test-aarch64-scalar")


@pytest.mark.slow
def test_c_kernel_tests_pass_for_aarch64_neon_without_dotprod_under_qemu():
    assert_target_passes("test-aarch64-neon")


@pytest.mark.slow
def test_c_kernel_tests_pass_for_aarch64_neon_dotprod_under_qemu():
    assert_target_passes("test-aarch64-neon_dotprod")
