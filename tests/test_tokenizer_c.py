"""The tokenizer's C merge loop passes its own C tests (native/tests/test_tokenize.c):
on this machine under AddressSanitizer + UndefinedBehaviorSanitizer, and cross-built
for aarch64 under qemu-aarch64 (the Raspberry Pi's architecture)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [str(ROOT / "native" / "src" / "tokenize.c"), str(ROOT / "native" / "tests" / "test_tokenize.c")]
INCLUDE = f"-I{ROOT / 'native' / 'include'}"
CFLAGS = ["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"]
RUN_TIMEOUT_S = 300  # a 2 MB word under ASan, or under emulation, takes seconds; this catches a hang
PASSED = "all tokenize tests passed"


def _run(cmd, **kwargs) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, **kwargs)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{output[-4000:]}"
    return output


def test_merge_loop_passes_under_sanitizers(tmp_path):
    binary = str(tmp_path / "test_tokenize")
    _run(["cc", *CFLAGS, "-fsanitize=address,undefined", "-fno-sanitize-recover=all", INCLUDE, *SOURCES,
          "-o", binary])
    assert PASSED in _run([binary])


@pytest.mark.slow
def test_merge_loop_passes_on_aarch64_under_qemu(tmp_path):
    missing = [tool for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64") if shutil.which(tool) is None]
    assert not missing, (f"missing {', '.join(missing)}: install gcc-aarch64-linux-gnu libc6-dev-arm64-cross "
                         "qemu-user (tools/test.sh does)")
    binary = str(tmp_path / "test_tokenize_aarch64")
    _run(["aarch64-linux-gnu-gcc", *CFLAGS, "-static", INCLUDE, *SOURCES, "-o", binary])
    assert PASSED in _run(["qemu-aarch64", "-cpu", "cortex-a72", binary])
