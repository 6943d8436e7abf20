"""Low-level binding of the CUDA library: a mirror of native/cuda/include/edgecuda.h.

edgesdk/libedgecuda.so is built by tools/build_cuda.py (setup.py runs it when nvcc is found)
with cudart linked statically: it loads on any machine, and without a driver or GPU
ec_device_count() says so. It is loaded lazily, only by the cuda backend and the hardware
probe (`library()`); EDGESDK_CUDA_LIBRARY names another file (the tests' cached build).
Like _native.py this module declares prototypes and turns statuses into exceptions; callers
check shapes and sizes first. It imports nothing of edgesdk but its errors (a leaf).
"""
from __future__ import annotations

import ctypes
import os
from ctypes import POINTER, c_char_p, c_float, c_int, c_int32, c_int64, c_uint64, c_void_p
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .errors import (ContextOverflowError, InvalidArgumentError, NativeBuildError, NativeError, NativeMemoryError,
                     UnsupportedModelError)

ABI_VERSION = 1               # EC_ABI_VERSION of the header mirrored here
EC_ERR_CUDA_BASE = 1000
CUDA_ERROR_MEMORY_ALLOCATION = 2
LIBRARY_FILE = "libedgecuda.so"
MATMUL_PATHS = {"auto": 0, "dp4a": 1, "mma": 2}
MMA_MIN_ROWS = 64             # EC_MMA_MIN_ROWS
MAX_HEAD_DIM = 256            # EC_MAX_HEAD_DIM
MAX_BATCH = 4096              # EC_MAX_BATCH
# Activation blocks of the DP4A path by weight type id: (values, bytes) of q8_32 and q8_k.
ACT_BLOCKS = {2: (32, 40), 3: (32, 40), 6: (32, 40), 8: (32, 40), 12: (256, 292), 14: (256, 292)}
LAYOUT_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K")

# ek_status codes (edgekern.h) the library returns; CUDA errors are EC_ERR_CUDA_BASE + cudaError_t.
_STATUS_ERRORS = {1: InvalidArgumentError, 2: UnsupportedModelError, 3: NativeMemoryError, 6: ContextOverflowError}


class EcDeviceProps(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 256), ("total_bytes", c_uint64), ("free_bytes", c_uint64),
                ("cc_major", c_int32), ("cc_minor", c_int32), ("integrated", c_int32), ("multiprocessors", c_int32),
                ("driver_version", c_int32), ("runtime_version", c_int32)]


class EcModelMemory(ctypes.Structure):
    _fields_ = [(name, c_uint64) for name in ("weights", "kv_cache", "scratch", "host_pinned", "host_staging")]


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as the runtime reports it."""
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: Tuple[int, int]
    integrated: bool            # shares system RAM (Jetson)
    multiprocessors: int
    driver_version: int         # 12060 = CUDA 12.6
    runtime_version: int


def library_path() -> str:
    return os.environ.get("EDGESDK_CUDA_LIBRARY") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                  LIBRARY_FILE)


_lib: Optional[ctypes.CDLL] = None


def _declare(lib: ctypes.CDLL) -> None:
    vp, i64 = c_void_p, c_int64
    protos = {
        "ec_status_str": (c_char_p, [c_int]), "ec_abi_version": (c_int, []),
        "ec_struct_size": (ctypes.c_size_t, [c_int]),
        "ec_device_count": (c_int, [POINTER(c_int)]), "ec_device_props_get": (c_int, [c_int, POINTER(EcDeviceProps)]),
        "ec_device_supported": (c_int, [c_int]),
        "ec_layout_bytes": (i64, [c_int, i64, i64]), "ec_layout_from_gguf": (c_int, [c_int, vp, i64, i64, vp]),
        "ec_layout_dequantize": (c_int, [c_int, vp, i64, i64, i64, i64, vp]),
        "ec_dot_host": (c_int, [c_int, vp, i64, i64, vp, i64, vp]),
        "ec_matmul_host": (c_int, [c_int, c_int, vp, i64, i64, vp, i64, vp, c_int]),
        "ec_model_memory_needs": (c_int, [vp, POINTER(EcModelMemory)]),
        "ec_model_create": (c_int, [vp, c_int, POINTER(c_void_p)]), "ec_model_free": (None, [vp]),
        "ec_model_eval": (c_int, [vp, POINTER(c_int32), i64, i64, POINTER(c_float), c_int]),
        "ec_model_state_bytes": (c_uint64, [vp, i64]), "ec_model_state_save": (c_int, [vp, i64, vp]),
        "ec_model_state_load": (c_int, [vp, i64, vp]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def library() -> ctypes.CDLL:
    """The loaded library; NativeBuildError when it was not built or is from another header."""
    global _lib
    if _lib is None:
        path = library_path()
        if not os.path.exists(path):
            raise NativeBuildError(f"the CUDA library {path} is not built: install with nvcc on PATH (or "
                                   f"EDGESDK_CUDA=1 pip install .), see README 'NVIDIA GPUs'")
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise NativeBuildError(f"cannot load the CUDA library {path}: {exc}") from exc
        _declare(lib)
        if lib.ec_abi_version() != ABI_VERSION:
            raise NativeBuildError(f"{path} has ABI version {lib.ec_abi_version()}, this edgesdk expects "
                                   f"{ABI_VERSION}: rebuild it (python tools/build_cuda.py)")
        _lib = lib
    return _lib


def check(status: int, what: str) -> None:
    """Raise the edgesdk error for a non-zero status: CUDA's out-of-memory as NativeMemoryError,
    another CUDA error as NativeError, ek_status codes as _native maps them."""
    if status == 0:
        return
    message = f"{what}: {library().ec_status_str(status).decode()} (status {status})"
    if status == EC_ERR_CUDA_BASE + CUDA_ERROR_MEMORY_ALLOCATION:
        raise NativeMemoryError(message)
    raise _STATUS_ERRORS.get(status, NativeError)(message)


def device_count() -> Tuple[int, str]:
    """(devices, why none): the CUDA runtime's count, with its error text when it is 0."""
    err = c_int(0)
    count = library().ec_device_count(ctypes.byref(err))
    if count > 0:
        return count, ""
    reason = library().ec_status_str(EC_ERR_CUDA_BASE + err.value).decode() if err.value else "no CUDA device"
    return 0, reason


def device_info(index: int) -> GpuInfo:
    props = EcDeviceProps()
    check(library().ec_device_props_get(index, ctypes.byref(props)), f"cudaGetDeviceProperties({index})")
    return GpuInfo(index=index, name=props.name.decode(errors="replace"), total_bytes=int(props.total_bytes),
                   free_bytes=int(props.free_bytes), compute_capability=(props.cc_major, props.cc_minor),
                   integrated=bool(props.integrated), multiprocessors=props.multiprocessors,
                   driver_version=props.driver_version, runtime_version=props.runtime_version)


def device_supported(index: int) -> Tuple[bool, str]:
    """Whether the library has code this device runs (its architecture's, or PTX it compiles), and why not."""
    status = library().ec_device_supported(index)
    return status == 0, "" if status == 0 else library().ec_status_str(status).decode()


def gpus() -> Tuple[Tuple[GpuInfo, ...], str]:
    """Every device, and the reason when there is none (library missing, no driver, no GPU)."""
    try:
        count, reason = device_count()
        return tuple(device_info(i) for i in range(count)), reason
    except (NativeBuildError, NativeError, OSError) as exc:
        return (), str(exc)


# -- GPU layouts (host functions: no GPU needed) ------------------------------------------

def layout_bytes(type_id: int, n_rows: int, n_cols: int) -> int:
    return int(library().ec_layout_bytes(type_id, n_rows, n_cols))


def layout_from_gguf(type_id: int, data: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """The GPU layout (uint8) of a GGUF matrix's bytes; the caller gave len(data) of the shape."""
    size = layout_bytes(type_id, n_rows, n_cols)
    if size == 0:
        raise UnsupportedModelError(f"type {type_id} with shape ({n_rows}, {n_cols}) has no GPU layout")
    src = np.ascontiguousarray(data)
    out = np.empty(size, dtype=np.uint8)
    check(library().ec_layout_from_gguf(type_id, src.ctypes.data, n_rows, n_cols, out.ctypes.data),
          "ec_layout_from_gguf")
    return out


def layout_dequantize(type_id: int, layout: np.ndarray, n_rows: int, n_cols: int, r0: int = 0,
                      n: Optional[int] = None) -> np.ndarray:
    n = n_rows - r0 if n is None else n
    if layout.nbytes != layout_bytes(type_id, n_rows, n_cols):
        raise InvalidArgumentError(f"layout holds {layout.nbytes} bytes, ({n_rows}, {n_cols}) needs "
                                   f"{layout_bytes(type_id, n_rows, n_cols)}")
    src = np.ascontiguousarray(layout)
    out = np.empty((n, n_cols), dtype=np.float32)
    check(library().ec_layout_dequantize(type_id, src.ctypes.data, n_rows, n_cols, r0, n, out.ctypes.data),
          "ec_layout_dequantize")
    return out


def dot_host(type_id: int, layout: np.ndarray, n_rows: int, n_cols: int, xq: np.ndarray, m: int) -> np.ndarray:
    """The DP4A path's dots on the host for m rows of quantized activation blocks (bytes)."""
    if layout.nbytes != layout_bytes(type_id, n_rows, n_cols):
        raise InvalidArgumentError(f"layout holds {layout.nbytes} bytes, ({n_rows}, {n_cols}) needs "
                                   f"{layout_bytes(type_id, n_rows, n_cols)}")
    block, block_bytes = ACT_BLOCKS[type_id]
    if xq.nbytes != m * (n_cols // block) * block_bytes:
        raise InvalidArgumentError(f"xq holds {xq.nbytes} bytes, {m} rows of {n_cols} need "
                                   f"{m * (n_cols // block) * block_bytes}")
    src, xq = np.ascontiguousarray(layout), np.ascontiguousarray(xq)
    y = np.empty((m, n_rows), dtype=np.float32)
    check(library().ec_dot_host(type_id, src.ctypes.data, n_rows, n_cols, xq.ctypes.data, m, y.ctypes.data),
          "ec_dot_host")
    return y


def matmul(type_id: int, data: np.ndarray, n_rows: int, n_cols: int, x: np.ndarray, path: str = "auto",
           device: int = 0) -> np.ndarray:
    """y = x @ W^T on the GPU for a GGUF matrix's bytes (a test and tool entry point)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != n_cols:
        raise InvalidArgumentError(f"x must be (m, {n_cols}), got {x.shape}")
    src = np.ascontiguousarray(data)
    y = np.empty((x.shape[0], n_rows), dtype=np.float32)
    check(library().ec_matmul_host(device, type_id, src.ctypes.data, n_rows, n_cols, x.ctypes.data, x.shape[0],
                                   y.ctypes.data, MATMUL_PATHS[path]), "ec_matmul_host")
    return y


__all__ = ["GpuInfo", "check", "device_count", "device_info", "device_supported", "dot_host", "gpus", "layout_bytes",
           "layout_dequantize", "layout_from_gguf", "library", "matmul"]
