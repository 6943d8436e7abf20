"""Build edgesdk/libedgecuda.so, the CUDA kernel layer (native/cuda/), with nvcc.

One shared library, cudart linked statically, so that loading it needs no CUDA installation
(without a driver it reports no device). Device code for every architecture in --arch (Jetson
Orin is sm_87, H100/H200 sm_90) plus PTX of the newest one, which the driver compiles for newer
GPUs. setup.py calls build() when nvcc is found (EDGESDK_CUDA=1 requires it, EDGESDK_CUDA=0
skips it); the tests call cached_build(), keyed by a hash of the sources and flags.

    python tools/build_cuda.py [--arch 87,90] [--out edgesdk/libedgecuda.so]
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARCHS = ("87", "90")
LIBRARY_FILE = "libedgecuda.so"
# C files of native/src the CUDA library shares: RoPE's angles (the CPU engine's, bit for bit) and
# the status names.
SHARED_C_SOURCES = ("native/src/rope.c", "native/src/status.c")
# Where nvcc is looked for after PATH: CUDA_HOME, the usual install, and JetPack's.
NVCC_CANDIDATES = ("/usr/local/cuda/bin/nvcc", "/usr/local/cuda-12/bin/nvcc", "/usr/local/cuda-13.0/bin/nvcc")


class CudaBuildError(RuntimeError):
    """nvcc is missing or failed; the message says which and how to get it."""


def sources() -> list:
    return sorted(glob.glob(str(ROOT / "native" / "cuda" / "*.cu"))) + [str(ROOT / s) for s in SHARED_C_SOURCES]


def headers() -> list:
    return (sorted(glob.glob(str(ROOT / "native" / "cuda" / "*.cuh"))) + [str(ROOT / "native/cuda/include/edgecuda.h"),
            str(ROOT / "native/include/edgekern.h"), str(ROOT / "native/src/kernels.h"),
            str(ROOT / "native/src/ops_internal.h")])


def find_nvcc() -> Optional[str]:
    """$NVCC when set (and nothing else), else nvcc on PATH, under $CUDA_HOME, or at the usual install
    paths; None when there is none."""
    if os.environ.get("NVCC"):
        return os.environ["NVCC"] if os.access(os.environ["NVCC"], os.X_OK) else None
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    for candidate in ([os.path.join(home, "bin", "nvcc")] if home else []) + list(NVCC_CANDIDATES):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def command(nvcc: str, out: str, archs: Sequence[str] = DEFAULT_ARCHS) -> list:
    gencode = []
    for arch in archs:
        gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    newest = max(archs, key=int)
    gencode += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    return [nvcc, "-O3", "-std=c++17", "-shared", "-cudart", "static", "--threads", "0",
            # hidden by default: only EK_API functions are exported; no FMA contraction on the host,
            # so the host decoder rounds as ek_dequantize does on every CPU (aarch64 too)
            "-Xcompiler", "-fPIC,-fvisibility=hidden,-ffp-contract=off",
            "-I", str(ROOT / "native/include"), "-I", str(ROOT / "native/cuda/include"), "-I", str(ROOT / "native/src"),
            *gencode, "-o", out, *sources(), "-lpthread", "-lrt", "-ldl"]


def build(out: str, archs: Sequence[str] = DEFAULT_ARCHS, nvcc: Optional[str] = None) -> str:
    """Compile the library to `out`; CudaBuildError with nvcc's output when it fails."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise CudaBuildError("nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda): install the CUDA toolkit "
                             "(JetPack 6 has it in /usr/local/cuda; 'sudo apt-get install nvidia-jetpack' adds it) "
                             "or set EDGESDK_CUDA=0 to build without the CUDA backend")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    result = subprocess.run(command(nvcc, tmp, archs), capture_output=True, text=True)
    if result.returncode != 0:
        raise CudaBuildError(f"nvcc failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    os.replace(tmp, out)
    return out


def source_hash(archs: Sequence[str] = DEFAULT_ARCHS, nvcc: Optional[str] = None) -> str:
    digest = hashlib.sha256()
    for path in sources() + headers():
        digest.update(Path(path).read_bytes())
    digest.update(" ".join(command(nvcc or "nvcc", "out", archs)).encode())
    return digest.hexdigest()[:16]


def cached_build(cache_dir: str, archs: Sequence[str] = DEFAULT_ARCHS, nvcc: Optional[str] = None) -> str:
    """The library for these sources and archs, built once under cache_dir/<hash>/."""
    nvcc = nvcc or find_nvcc()
    out = os.path.join(cache_dir, f"{source_hash(archs, nvcc)}-sm{'_'.join(archs)}", LIBRARY_FILE)
    if not os.path.exists(out):
        build(out, archs, nvcc)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=",".join(DEFAULT_ARCHS), help="compute capabilities, e.g. 87,90")
    parser.add_argument("--out", default=str(ROOT / "edgesdk" / LIBRARY_FILE))
    args = parser.parse_args(argv)
    try:
        print(build(args.out, [a.strip() for a in args.arch.split(",") if a.strip()]))
    except CudaBuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
