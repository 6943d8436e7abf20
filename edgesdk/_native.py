"""Low-level binding of the native library: a one-to-one mirror of native/include/edgekern.h.

The library is edgesdk/libedgekern.so, a plain shared library built by setup.py
from native/src (no Python C API in it, so one wheel serves every Python 3). We load it with ctypes: ctypes releases the GIL for the duration of
every foreign call, so long kernels never block other Python threads.

This module only declares prototypes, checks at import that the library was
built from the header it mirrors (ABI version and struct layouts), and turns
status codes into exceptions. Callers validate shapes, dtypes and buffer sizes
*before* calling in: the C layer trusts its caller (see the header).
"""
from __future__ import annotations

import ctypes
import os
from ctypes import POINTER, c_char_p, c_double, c_float, c_int, c_int32, c_int64, c_size_t, c_uint32, c_uint64, c_void_p

from .errors import (
    CancelledError,
    ContextOverflowError,
    InvalidArgumentError,
    NativeBuildError,
    NativeError,
    NativeMemoryError,
    NonFiniteRowError,
    ThreadStartError,
    UnsupportedISAError,
    UnsupportedModelError,
)

c_float_p = POINTER(c_float)
c_int32_p = POINTER(c_int32)

EK_OK = 0
EK_ERR_INVALID_ARG = 1
EK_ERR_UNSUPPORTED = 2
EK_ERR_NO_MEMORY = 3
EK_ERR_ISA_UNAVAILABLE = 4
EK_ERR_THREADS = 5
EK_ERR_CONTEXT_FULL = 6
EK_ERR_INTERNAL = 7
EK_ERR_CANCELLED = 8
EK_ERR_NON_FINITE = 9

# The edgesdk error each failure raises (check()); tests/test_native_status.py reads the
# header's codes, so one added there without an entry here fails.
STATUS_ERRORS = {
    EK_ERR_INVALID_ARG: InvalidArgumentError,
    EK_ERR_UNSUPPORTED: UnsupportedModelError,
    EK_ERR_NO_MEMORY: NativeMemoryError,
    EK_ERR_ISA_UNAVAILABLE: UnsupportedISAError,
    EK_ERR_THREADS: ThreadStartError,
    EK_ERR_CONTEXT_FULL: ContextOverflowError,
    EK_ERR_INTERNAL: NativeError,
    EK_ERR_CANCELLED: CancelledError,
    EK_ERR_NON_FINITE: NonFiniteRowError,
}

# EK_ABI_VERSION of the header this module mirrors.
ABI_VERSION = 3

ISA_NAMES = ("scalar", "avx2", "avx512", "neon", "neon_dotprod")

# Bits of ek_cpu_features(), same values as the header's EK_CPU_* macros.
CPU_FEATURE_BITS = {
    "avx2": 0, "fma": 1, "f16c": 2, "avx512f": 3, "avx512bw": 4, "avx512vl": 5,
    "avx512_vnni": 6, "avx_vnni": 7, "avx512_bf16": 8, "avx512dq": 9,
    "neon": 16, "dotprod": 17, "i8mm": 18, "sve": 19, "fp16": 20,
}


# -- engine structs (mirror native/include/edgekern.h, "inference engine") --

EK_ARCH_LLAMA, EK_ARCH_QWEN2, EK_ARCH_GEMMA3 = 0, 1, 2
EK_ROPE_NORM, EK_ROPE_NEOX = 0, 2
EK_ACT_SILU, EK_ACT_GELU = 0, 1
EK_WEIGHT_ALLOW_REPACK = 1
EK_WEIGHT_RELEASE_SOURCE = 2
# enum ek_layer_tensor, in order
LAYER_TENSOR_SLOTS = (
    "attn_norm", "q", "k", "v", "o", "q_bias", "k_bias", "v_bias", "q_norm", "k_norm",
    "post_attn_norm", "ffn_norm", "gate", "up", "down", "post_ffn_norm",
)


class EkTensorDesc(ctypes.Structure):
    _fields_ = [("data", c_void_p), ("n_rows", c_int64), ("n_cols", c_int64), ("type", c_int32),
                ("reserved", c_int32)]


class EkModelDesc(ctypes.Structure):
    _fields_ = [(name, c_int32) for name in (
        "arch", "n_vocab", "n_embd", "n_layer", "n_ff", "n_head", "n_head_kv", "head_dim", "n_rot", "rope_mode")] + \
        [(name, c_float) for name in (
            "rope_base", "rope_freq_scale", "rope_base_swa", "rope_freq_scale_swa", "rope_mscale", "rope_mscale_swa",
            "yarn_ext_factor", "yarn_beta_fast", "yarn_beta_slow")] + [("yarn_n_ctx_orig", c_int32)] + \
        [(name, c_float) for name in ("norm_eps", "embd_scale", "attn_scale")] + \
        [(name, c_int32) for name in ("n_swa", "swa_pattern", "act", "n_ctx", "n_batch", "n_threads", "kv_type",
                                      "n_seq")] + \
        [("weight_flags", c_uint32), ("tok_embd", EkTensorDesc), ("output_norm", EkTensorDesc),
         ("output", EkTensorDesc), ("rope_freqs", c_float_p), ("layers", POINTER(EkTensorDesc))]


class EkModelMemory(ctypes.Structure):
    _fields_ = [("kv_cache", c_uint64), ("scratch", c_uint64), ("weights_owned", c_uint64),
                ("weights_mapped", c_uint64)]


class EkSeqInput(ctypes.Structure):
    _fields_ = [("ids", c_int32_p), ("n", c_int64), ("start", c_int64), ("seq", c_int32), ("reserved", c_int32)]


# The structs the library describes (the header's EK_STRUCT_*), with the Structure mirroring each.
EK_STRUCT_TENSOR_DESC, EK_STRUCT_MODEL_DESC, EK_STRUCT_MODEL_MEMORY, EK_STRUCT_SEQ_INPUT = 0, 1, 2, 3
STRUCT_MIRRORS = ((EK_STRUCT_TENSOR_DESC, EkTensorDesc), (EK_STRUCT_MODEL_DESC, EkModelDesc),
                  (EK_STRUCT_MODEL_MEMORY, EkModelMemory), (EK_STRUCT_SEQ_INPUT, EkSeqInput))

_REBUILD = ("it is a build of another edgekern.h than edgesdk._native mirrors (a stale build?); rebuild it with "
            "'pip install .' (or 'python setup.py build_ext --inplace' in a source checkout)")


def check_struct_layout(library, which: int, structure: type) -> None:
    """Raise NativeBuildError naming the first member of struct `which` whose name, offset or
    size differs between the library and the ctypes `structure`, or that only one of them has."""
    name = structure.__name__
    native = []
    offset, size = c_size_t(), c_size_t()
    while (member := library.ek_struct_member(which, len(native), ctypes.byref(offset), ctypes.byref(size))):
        native.append((member.decode(), offset.value, size.value))
    mirrored = [(field[0], getattr(structure, field[0]).offset, getattr(structure, field[0]).size)
                for field in structure._fields_]
    for index, ((c_name, c_offset, c_size), (py_name, py_offset, py_size)) in enumerate(zip(native, mirrored)):
        if c_name != py_name:
            raise NativeBuildError(f"{name} member {index} is {c_name!r} in the native library, {py_name!r} in "
                                   f"edgesdk._native: {_REBUILD}")
        if (c_offset, c_size) != (py_offset, py_size):
            raise NativeBuildError(f"{name}.{c_name}: offset {c_offset}, size {c_size} in the native library; "
                                   f"offset {py_offset}, size {py_size} in edgesdk._native: {_REBUILD}")
    if len(native) > len(mirrored):
        raise NativeBuildError(f"{name}.{native[len(mirrored)][0]} is in the native library, not in "
                               f"edgesdk._native: {_REBUILD}")
    if len(mirrored) > len(native):
        raise NativeBuildError(f"{name}.{mirrored[len(native)][0]} is in edgesdk._native, not in the native "
                               f"library: {_REBUILD}")
    native_size = library.ek_struct_size(which)
    if native_size != ctypes.sizeof(structure):
        raise NativeBuildError(f"{name} is {native_size} bytes in the native library, {ctypes.sizeof(structure)} "
                               f"in edgesdk._native: {_REBUILD}")


def check_abi(library) -> None:
    """The library reports this module's ABI_VERSION and the struct layouts it mirrors."""
    if not hasattr(library, "ek_abi_version"):
        raise NativeBuildError(f"the native library has no ek_abi_version: {_REBUILD}")
    version = library.ek_abi_version()
    if version != ABI_VERSION:
        raise NativeBuildError(f"the native library has ABI version {version}; edgesdk._native expects "
                               f"{ABI_VERSION}: {_REBUILD}")
    for which, structure in STRUCT_MIRRORS:
        check_struct_layout(library, which, structure)


# setup.py's LIBRARY_FILE: the library beside this module.
LIBRARY_FILE = "libedgekern.so"


def _library_path() -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_FILE)
    if not os.path.exists(path):
        raise NativeBuildError(
            f"edgesdk's native library ({path}) is not built. Install the package with "
            "'pip install edgesdk' (a wheel) or 'pip install .' (or 'python setup.py build_ext --inplace' "
            "in a source checkout)."
        )
    return path


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(_library_path())

    def proto(name, restype, *argtypes):
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise NativeBuildError(f"the native library has no {name}: {_REBUILD}") from None
        fn.restype = restype
        fn.argtypes = list(argtypes)

    # The ABI first: a stale build is reported as one, not as a missing function.
    if hasattr(lib, "ek_abi_version"):
        proto("ek_abi_version", c_int)
        proto("ek_struct_size", c_size_t, c_int)
        proto("ek_struct_member", c_char_p, c_int, c_int, POINTER(c_size_t), POINTER(c_size_t))
    check_abi(lib)

    # status, CPU features, ISA
    proto("ek_status_str", c_char_p, c_int)
    proto("ek_cpu_features", c_uint64)
    proto("ek_isa_available", c_int, c_int)
    proto("ek_isa_best", c_int)
    proto("ek_isa_set", c_int, c_int)
    proto("ek_isa_current", c_int)
    proto("ek_isa_name", c_char_p, c_int)
    proto("ek_isa_from_name", c_int, c_char_p)

    # -- kernels: types, formats, thread pool, weights, matmul (kernels work)
    # Buffers are c_void_p so callers pass numpy's arr.ctypes.data after validating it.
    proto("ek_type_block_elems", c_int64, c_int)
    proto("ek_type_block_bytes", c_int64, c_int)
    proto("ek_dequantize", c_int, c_int, c_void_p, c_void_p, c_int64)
    proto("ek_quantize", c_int, c_int, c_void_p, c_void_p, c_int64)
    proto("ek_quantize_rows", c_int, c_int, c_int, c_void_p, c_void_p, c_int64, c_int64, c_void_p, c_void_p,
          POINTER(c_int64))
    proto("ek_pool_create", c_int, c_int, POINTER(c_void_p))
    proto("ek_pool_free", None, c_void_p)
    proto("ek_pool_threads", c_int, c_void_p)
    proto("ek_default_threads", c_int)
    proto("ek_weight_create", c_int, c_int, c_int64, c_int64, c_void_p, c_uint32, POINTER(c_void_p))
    proto("ek_weight_free", None, c_void_p)
    proto("ek_weight_owned_bytes", c_size_t, c_void_p)
    proto("ek_weight_isa", c_int, c_void_p)
    proto("ek_matmul", c_int, c_void_p, c_void_p, c_int64, c_void_p, c_void_p)
    proto("ek_weight_get_rows", c_int, c_void_p, c_void_p, c_int64, c_void_p)
    proto("ek_vec_dot", c_int, c_int, c_void_p, c_void_p, c_int64, c_void_p)
    proto("ek_measure_read_bandwidth", c_double, c_size_t, c_int, c_void_p)

    # -- f32 building blocks and the inference engine (engine work)
    proto("ek_rmsnorm", None, c_float_p, c_float_p, c_float_p, c_int64, c_float)
    proto("ek_rope", None, c_float_p, c_int64, c_int64, c_int64, c_int64, c_float, c_float, c_float_p, c_int)
    proto("ek_softmax", None, c_float_p, c_int64)
    proto("ek_silu_mul", None, c_float_p, c_float_p, c_float_p, c_int64)
    proto("ek_gelu_mul", None, c_float_p, c_float_p, c_float_p, c_int64)
    proto("ek_kv_row_bytes", c_int64, c_int, c_int64)
    proto("ek_kv_store", None, c_int, c_float_p, c_void_p, c_int64)
    proto("ek_kv_load", None, c_int, c_void_p, c_float_p, c_int64)
    proto("ek_attention_scratch_floats", c_int64, c_int64, c_int64)
    proto("ek_attention", None, c_void_p, c_void_p, c_void_p, c_void_p, c_int64, c_void_p, c_void_p, c_int, c_size_t,
          c_int64, c_float, c_float_p)
    proto("ek_model_memory_needs", c_int, POINTER(EkModelDesc), POINTER(EkModelMemory))
    proto("ek_model_create", c_int, POINTER(EkModelDesc), POINTER(c_void_p))
    proto("ek_model_free", None, c_void_p)
    proto("ek_model_memory_used", None, c_void_p, POINTER(EkModelMemory))
    proto("ek_model_eval", c_int, c_void_p, c_int32_p, c_int64, c_int64, c_float_p, c_int)
    proto("ek_model_eval_batch", c_int, c_void_p, POINTER(EkSeqInput), c_int64, c_float_p)
    proto("ek_model_seq_copy", None, c_void_p, c_int32, c_int32, c_int64)
    proto("ek_model_activation_sums_len", c_int64, c_void_p)
    proto("ek_model_set_activation_sums", None, c_void_p, c_void_p)
    proto("ek_model_abort", None, c_void_p)
    proto("ek_model_state_bytes", c_uint64, c_void_p, c_int64)
    proto("ek_model_state_save", None, c_void_p, c_int32, c_int64, c_void_p)
    proto("ek_model_state_load", None, c_void_p, c_int32, c_int64, c_void_p)

    # -- tokenizer hot loops, if any (tokenizer work)
    proto("ek_tok_table_create", c_int, c_char_p, POINTER(c_int64), c_int32_p, c_float_p, c_int32_p,
          c_int64, POINTER(c_void_p))
    proto("ek_tok_table_free", None, c_void_p)
    proto("ek_tok_merge", c_int, c_void_p, c_int32, c_char_p, c_int32_p, c_int32, c_int32_p, c_int32_p,
          c_int32_p)

    return lib


lib = _load()


def check(status: int, what: str) -> None:
    """Raise the edgesdk error STATUS_ERRORS maps a non-zero ek_status to (NativeError for a
    code the header does not define)."""
    if status == EK_OK:
        return
    message = f"{what}: {lib.ek_status_str(status).decode()} (ek_status {status})"
    raise STATUS_ERRORS.get(status, NativeError)(message)


def cpu_features() -> list[str]:
    """Names of the SIMD features the CPU and OS support, as the native layer sees them."""
    bits = lib.ek_cpu_features()
    return [name for name, bit in CPU_FEATURE_BITS.items() if bits >> bit & 1]


def isa_available() -> list[str]:
    return [name for i, name in enumerate(ISA_NAMES) if lib.ek_isa_available(i)]


def isa_current() -> str:
    return ISA_NAMES[lib.ek_isa_current()]


def isa_set(name: str) -> None:
    """Make `name` the active kernel family (as EDGESDK_ISA does at start-up)."""
    index = lib.ek_isa_from_name(name.encode())
    if index < 0:
        raise UnsupportedISAError(f"unknown ISA {name!r}; known: {', '.join(ISA_NAMES)}")
    if not lib.ek_isa_available(index):
        raise UnsupportedISAError(
            f"ISA {name!r} is not available on this CPU; available: {', '.join(isa_available())}"
        )
    check(lib.ek_isa_set(index), f"ek_isa_set({name})")


def _check_env_isa() -> None:
    """EDGESDK_ISA naming a path the CPU lacks is an error, not a silent fallback."""
    wanted = os.environ.get("EDGESDK_ISA")
    if wanted:
        isa_set(wanted)


_check_env_isa()
