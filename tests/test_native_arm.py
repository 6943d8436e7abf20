"""The ARM kernel paths really run: native/ cross-compiled for aarch64 and its C tests executed
under qemu user-mode emulation as a Cortex-A72 (Raspberry Pi 4: NEON, no dot product) and as
qemu's `max` CPU (dot product), on the scalar, neon and neon_dotprod paths.

Needs Debian's gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user (tools/test.sh installs them).
"""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

from edgesdk import gguf
from kernel_reference import dequantize as ref_dequantize, matmul_error_bound

NATIVE_TESTS = Path(__file__).resolve().parent.parent / "native" / "tests"
# Rows of each real tensor multiplied under emulation: enough for several 8-row repack groups and a
# tail (not a multiple of 8), few enough that float64 numpy and qemu take seconds.
N_ROWS_CHECKED = 37
N_ACT_ROWS = 5
# A clean build plus every emulated run takes ~35 s on 2 cores; the limit turns a hang into a failure.
TEST_AARCH64_TIMEOUT_S = 300


def _require_tools() -> None:
    missing = [tool for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64", "make") if shutil.which(tool) is None]
    assert not missing, (
        f"missing {', '.join(missing)}: install the Debian packages gcc-aarch64-linux-gnu "
        "libc6-dev-arm64-cross qemu-user (tools/test.sh does)"
    )


def test_aarch64_kernels_pass_under_qemu_on_cortex_a72_and_max():
    """Dispatch sees dotprod only on `max`; every kernel of every family agrees with float64 and scalar."""
    _require_tools()
    result = subprocess.run(
        ["make", "-C", str(NATIVE_TESTS), "test-aarch64"],
        capture_output=True, text=True, timeout=TEST_AARCH64_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make test-aarch64 exited {result.returncode}:\n{output[-6000:]}"
    assert "test-aarch64: all passed" in output
    # test_kernels.c (the kernels engineer's C suite) ran on scalar, neon and neon_dotprod first.
    assert output.count("all kernel tests passed") == 3
    # The dispatch checks ran on both CPU models and saw what each one has.
    assert "test_arm_dispatch (no dotprod): " in output and "test_arm_dispatch (dotprod CPU): " in output
    # Every kernel ran against float64 and the scalar path on each family, on the CPU that has it.
    for family in ("scalar", "neon", "neon_dotprod"):
        assert f"test_arm_kernels ({family}): " in output, f"kernel tests for {family} did not run"
    assert "FAIL" not in output


def _write_rows_case(out, model: gguf.GGUFFile, name: str, rng: np.random.Generator) -> None:
    """One case of test_arm_gguf_rows.c's file (format in its header comment): the tensor's first
    rows as stored, random x, numpy's float64 y and the error bound 8-bit activations allow."""
    info = model.tensors[name]
    n_cols = info.shape[0]
    n_rows_total = info.shape[1]
    row_bytes = info.nbytes // n_rows_total
    weight = np.asarray(model.tensor_data(name)[: N_ROWS_CHECKED * row_bytes])
    w64 = ref_dequantize(info.type_name, weight).reshape(N_ROWS_CHECKED, n_cols)
    x = rng.normal(size=(N_ACT_ROWS, n_cols)).astype(np.float32)
    expected = x.astype(np.float64) @ w64.T
    bound = matmul_error_bound(info.type_name, w64, x)
    label = f"{info.type_name} {name}".encode()[:48].ljust(48, b"\0")
    out.write(label + struct.pack("<iqqqQ", info.type_id, N_ROWS_CHECKED, n_cols,
                                  N_ACT_ROWS, weight.nbytes))
    out.write(weight.tobytes() + x.tobytes() + expected.astype("<f8").tobytes() + bound.astype("<f8").tobytes())


def _first_tensor_of_type(model: gguf.GGUFFile, type_name: str) -> str:
    return next(name for name, info in model.tensors.items() if info.type_name == type_name and len(info.shape) == 2)


def test_aarch64_kernels_on_real_model_rows_match_numpy(smollm2_path, gemma3_path, tmp_path, rng):
    """SmolLM2's Q4_1/Q8_0 and Gemma-3's Q4_K/Q5_0/Q6_K/Q8_0 rows, multiplied by the NEON and
    dotprod kernels under qemu, agree with numpy's dequantize-then-matmul."""
    _require_tools()
    cases_path = tmp_path / "cases.bin"
    names = []
    with open(cases_path, "wb") as out:
        out.write(b"EKRW" + struct.pack("<I", 6))
        with gguf.open(smollm2_path) as model:
            for type_name in ("Q4_1", "Q8_0"):
                names.append(_first_tensor_of_type(model, type_name))
                _write_rows_case(out, model, names[-1], rng)
        with gguf.open(gemma3_path) as model:
            for type_name in ("Q4_K", "Q5_0", "Q6_K", "Q8_0"):
                names.append(_first_tensor_of_type(model, type_name))
                _write_rows_case(out, model, names[-1], rng)
    assert len(names) == 6
    result = subprocess.run(
        ["make", "-C", str(NATIVE_TESTS), "test-aarch64-gguf", f"ARM_GGUF_CASES={cases_path}"],
        capture_output=True, text=True, timeout=TEST_AARCH64_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make test-aarch64-gguf exited {result.returncode}:\n{output[-6000:]}"
    for family in ("scalar", "neon", "neon_dotprod"):
        assert f"test_arm_gguf_rows ({family}, 6 tensors): " in output
    assert "FAIL" not in output
