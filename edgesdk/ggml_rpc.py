"""ggml's RPC backend and device registry through ctypes, from the llama.cpp that llama-cpp-python ships.

llama-cpp-python binds libllama but not ggml's backend registry, and its
`rpc_servers` argument is ignored since 0.3.10 (abetlen/llama-cpp-python#1914),
so the few functions `edgesdk worker` and the llamacpp backend's workers need
are declared here, on the very libraries libllama has loaded (llama_cpp/lib):
a device registered here is one llama.cpp can place layers on.

Two facts of ggml's internal ABI (ggml-backend-impl.h of the pinned release,
llama-cpp-python 0.3.36) are used by the worker to limit what it offers:
the function-pointer slots of a device, a buffer type and a buffer. They are
named once below, and `check_abi()` refuses another llama-cpp-python release.

Every client-side call here (add_server, device_memory) aborts the process
when the worker cannot be reached (GGML_ABORT in ggml-rpc.cpp): call them only
in a process that may die (edgesdk.backends._rpc_host runs them in a child).
"""
from __future__ import annotations

import ctypes
import importlib.util
import threading
from pathlib import Path
from typing import List, Tuple

from .errors import BackendUnavailableError

RPC_PROTO_MAJOR = 7                    # ggml-rpc.h of the pinned llama.cpp: the wire protocol's version
DEVICE_TYPE_CPU = 0                    # enum ggml_backend_dev_type
# Slots, in pointers, of the structs' function tables (ggml-backend-impl.h):
DEVICE_GET_MEMORY_SLOT = 2             # ggml_backend_device_i.get_memory
BUFT_ALLOC_BUFFER_SLOT = 1             # ggml_backend_buffer_type_i.alloc_buffer
BUFFER_FREE_SLOT = 0                   # ggml_backend_buffer_i.free_buffer

GET_MEMORY_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                 ctypes.POINTER(ctypes.c_size_t))
ALLOC_BUFFER_FN = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
FREE_BUFFER_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

_lock = threading.Lock()
_libs = None


def _lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("workers need llama-cpp-python built with GGML_RPC; it is not installed "
                                      "(python tools/build_llamacpp.py --config ci --install)")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def libraries() -> Tuple[ctypes.CDLL, ctypes.CDLL]:
    """(libggml, libggml-rpc) with the functions used here declared; BackendUnavailableError without RPC."""
    global _libs
    with _lock:
        if _libs is not None:
            return _libs
        import llama_cpp  # noqa: F401  (loads libllama and its libggml first: the same copies are used here)
        where = _lib_dir()
        rpc_path = where / "libggml-rpc.so"
        if not rpc_path.is_file():
            raise BackendUnavailableError(
                f"this llama-cpp-python was built without GGML_RPC ({rpc_path} is missing); rebuild it with "
                "python tools/build_llamacpp.py --config ci --install")
        ggml = ctypes.CDLL(str(where / "libggml.so"))
        rpc = ctypes.CDLL(str(rpc_path))
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        ggml.ggml_backend_dev_by_type.argtypes, ggml.ggml_backend_dev_by_type.restype = [ctypes.c_int], vp
        ggml.ggml_backend_dev_buffer_type.argtypes, ggml.ggml_backend_dev_buffer_type.restype = [vp], vp
        ggml.ggml_backend_dev_name.argtypes, ggml.ggml_backend_dev_name.restype = [vp], ctypes.c_char_p
        ggml.ggml_backend_reg_dev_count.argtypes, ggml.ggml_backend_reg_dev_count.restype = [vp], sz
        ggml.ggml_backend_reg_dev_get.argtypes, ggml.ggml_backend_reg_dev_get.restype = [vp, sz], vp
        rpc.ggml_backend_rpc_add_server.argtypes, rpc.ggml_backend_rpc_add_server.restype = [ctypes.c_char_p], vp
        rpc.ggml_backend_rpc_get_device_memory.argtypes = [ctypes.c_char_p, ctypes.c_uint32,
                                                           ctypes.POINTER(sz), ctypes.POINTER(sz)]
        rpc.ggml_backend_rpc_get_device_memory.restype = None
        rpc.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, sz, sz,
                                                      ctypes.POINTER(vp)]
        rpc.ggml_backend_rpc_start_server.restype = None
        _libs = (ggml, rpc)
        return _libs


def available() -> Tuple[bool, str]:
    """Whether the RPC backend is there, and why not."""
    try:
        libraries()
    except (BackendUnavailableError, OSError, ImportError) as exc:
        return False, str(exc)
    return True, ""


# -- local GPUs ------------------------------------------------------------------------------

DEVICE_TYPE_GPU, DEVICE_TYPE_IGPU = 1, 2  # enum ggml_backend_dev_type: dedicated, integrated (host memory)


def gpu_devices() -> List[Tuple[str, int, int, bool]]:
    """(name, free bytes, total bytes, integrated) of each GPU this llama.cpp can offload layers to (its
    CUDA, Vulkan, Metal... backends; none for a CPU build); [] when llama-cpp-python is not installed."""
    try:
        import llama_cpp
        if not llama_cpp.llama_supports_gpu_offload():
            return []
        ggml = ctypes.CDLL(str(_lib_dir() / "libggml.so"))
    except (ImportError, OSError, BackendUnavailableError):
        return []
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    ggml.ggml_backend_dev_count.argtypes, ggml.ggml_backend_dev_count.restype = [], sz
    ggml.ggml_backend_dev_get.argtypes, ggml.ggml_backend_dev_get.restype = [sz], vp
    ggml.ggml_backend_dev_type.argtypes, ggml.ggml_backend_dev_type.restype = [vp], ctypes.c_int
    ggml.ggml_backend_dev_name.argtypes, ggml.ggml_backend_dev_name.restype = [vp], ctypes.c_char_p
    ggml.ggml_backend_dev_memory.argtypes = [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]
    ggml.ggml_backend_dev_memory.restype = None
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        kind, name = ggml.ggml_backend_dev_type(dev), ggml.ggml_backend_dev_name(dev).decode(errors="replace")
        # a worker registered in this process (add_server) is a GPU-typed device named "RPC0[host:port]"
        if kind in (DEVICE_TYPE_GPU, DEVICE_TYPE_IGPU) and not name.startswith("RPC"):
            free, total = sz(0), sz(0)
            ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            found.append((name, free.value, total.value, kind == DEVICE_TYPE_IGPU))
    return found


# -- the client side (may abort: see the module docstring) -------------------------------

def device_memory(endpoint: str) -> Tuple[int, int]:
    """(free, total) bytes the worker at endpoint offers for its device 0."""
    _, rpc = libraries()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    rpc.ggml_backend_rpc_get_device_memory(endpoint.encode(), 0, ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


def add_server(endpoint: str) -> List[int]:
    """The ggml devices of the worker at endpoint (addresses), registered for llama.cpp to use."""
    ggml, rpc = libraries()
    reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        return []
    return [ggml.ggml_backend_reg_dev_get(reg, i) for i in range(ggml.ggml_backend_reg_dev_count(reg))]


# -- the server side ------------------------------------------------------------------------

PINNED_LLAMA_CPP_PYTHON = "0.3.36"     # the release whose ggml-backend-impl.h the slots above are read from


def check_abi() -> None:
    """BackendUnavailableError unless llama-cpp-python is the release the slots above were read from."""
    import llama_cpp
    version = getattr(llama_cpp, "__version__", "?")
    if version != PINNED_LLAMA_CPP_PYTHON:
        raise BackendUnavailableError(
            f"a worker's memory limit patches ggml's function tables as laid out in llama-cpp-python "
            f"{PINNED_LLAMA_CPP_PYTHON}; this is {version} (install the pinned one with "
            "python tools/build_llamacpp.py --config ci --install)")


def cpu_device() -> int:
    ggml, _ = libraries()
    dev = ggml.ggml_backend_dev_by_type(DEVICE_TYPE_CPU)
    if not dev:
        raise BackendUnavailableError("ggml has no CPU device here")
    return dev


def buffer_type(device: int) -> int:
    ggml, _ = libraries()
    return ggml.ggml_backend_dev_buffer_type(device)


def read_slot(struct_address: int, slot: int) -> int:
    return ctypes.c_void_p.from_address(struct_address + slot * ctypes.sizeof(ctypes.c_void_p)).value or 0


def write_slot(struct_address: int, slot: int, function) -> None:
    """Point a function-table slot of a ggml struct at a ctypes callback (kept alive by the caller)."""
    ctypes.c_void_p.from_address(struct_address + slot * ctypes.sizeof(ctypes.c_void_p)).value = \
        ctypes.cast(function, ctypes.c_void_p).value


def start_server(endpoint: str, device: int, threads: int) -> None:
    """Serve device over ggml's RPC protocol at endpoint; returns only when the server cannot start."""
    _, rpc = libraries()
    devices = (ctypes.c_void_p * 1)(device)
    rpc.ggml_backend_rpc_start_server(endpoint.encode(), None, threads, 1, devices)


__all__ = ["RPC_PROTO_MAJOR", "add_server", "available", "buffer_type", "check_abi", "cpu_device", "device_memory",
           "libraries", "read_slot", "start_server", "write_slot"]
