"""The native kernels from Python: (de)quantization, quantized weights, matmul, thread pools.

Every argument is checked here — type, shape, dtype, contiguity, alignment and
buffer size — before any native call, because the C layer trusts its caller.
Weights wrap GGUF data without copying (unless repacked); keep the source
buffer alive as long as the Weight (the Weight holds a reference to it).
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from . import _native, gguf
from .errors import InvalidArgumentError, NativeMemoryError, NonFiniteRowError, UnsupportedModelError

# GGUF type ids of the types the kernels implement (same numbers as ek_type).
KERNEL_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K", "BF16")
TYPE_IDS = {name: gguf.GGML_TYPES_BY_NAME[name].type_id for name in KERNEL_TYPES}
TYPE_NAMES = {v: k for k, v in TYPE_IDS.items()}
QUANTIZABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K")

Buffer = Union[bytes, bytearray, memoryview, np.ndarray]


def type_id(type_: Union[int, str]) -> int:
    """The GGUF id of a supported type given by name ("Q4_0") or id (2)."""
    if isinstance(type_, str):
        key = type_.upper()
        if key not in TYPE_IDS:
            raise InvalidArgumentError(f"tensor type {type_!r} is not supported; supported: {', '.join(TYPE_IDS)}")
        return TYPE_IDS[key]
    if isinstance(type_, (int, np.integer)) and int(type_) in TYPE_NAMES:
        return int(type_)
    raise InvalidArgumentError(f"tensor type {type_!r} is not supported; supported: {', '.join(TYPE_IDS)}")


@dataclass(frozen=True)
class TypeLayout:
    """How a type stores values: `block_elems` values in `block_bytes` bytes."""
    name: str
    type_id: int
    block_elems: int
    block_bytes: int

    @property
    def alignment(self) -> int:
        """Address alignment the kernels need: the widest field of a block (f32 or f16 scales)."""
        return 4 if self.name == "F32" else 2

    def row_bytes(self, n_cols: int) -> int:
        return n_cols // self.block_elems * self.block_bytes


def layout(type_: Union[int, str]) -> TypeLayout:
    tid = type_id(type_)
    return TypeLayout(TYPE_NAMES[tid], tid, int(_native.lib.ek_type_block_elems(tid)),
                      int(_native.lib.ek_type_block_bytes(tid)))


def _as_bytes_view(raw: Buffer, what: str) -> np.ndarray:
    """A 1-D uint8 view of a contiguous buffer, without copying."""
    if isinstance(raw, np.ndarray):
        if not raw.flags.c_contiguous:
            raise InvalidArgumentError(f"{what} must be C-contiguous (strides {raw.strides})")
        return raw.reshape(-1).view(np.uint8)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        view = memoryview(raw)
        if not view.contiguous:
            raise InvalidArgumentError(f"{what} must be a contiguous buffer")
        return np.frombuffer(view.cast("B") if view.format != "B" else view, dtype=np.uint8)
    raise InvalidArgumentError(f"{what} must be bytes, bytearray, memoryview or a numpy array, not {type(raw).__name__}")


def _check_aligned(arr: np.ndarray, alignment: int, what: str) -> None:
    address = arr.ctypes.data
    if address % alignment:
        raise InvalidArgumentError(f"{what} at address 0x{address:x} is not {alignment}-byte aligned")


def _check_f32(x: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise InvalidArgumentError(f"{what} must be a numpy float32 array, not {type(x).__name__}")
    if x.dtype != np.float32:
        raise InvalidArgumentError(f"{what} must have dtype float32, not {x.dtype}")
    if not x.flags.c_contiguous:
        raise InvalidArgumentError(f"{what} must be C-contiguous (strides {x.strides})")
    _check_aligned(x, 4, what)
    return x


def dequantize(type_: Union[int, str], raw: Buffer) -> np.ndarray:
    """The float32 values encoded in `raw`, a whole number of `type_` blocks."""
    lay = layout(type_)
    data = _as_bytes_view(raw, "raw")
    if data.size == 0 or data.size % lay.block_bytes:
        raise InvalidArgumentError(
            f"{lay.name} data must be a non-zero multiple of {lay.block_bytes} bytes, got {data.size}")
    _check_aligned(data, lay.alignment, f"{lay.name} data")
    n = data.size // lay.block_bytes * lay.block_elems
    out = np.empty(n, dtype=np.float32)
    _native.check(_native.lib.ek_dequantize(lay.type_id, data.ctypes.data, out.ctypes.data, n),
                  f"ek_dequantize({lay.name}, n={n})")
    return out


def quantize(type_: Union[int, str], x: np.ndarray) -> np.ndarray:
    """Encode float32 values into `type_` blocks; returns the raw bytes as a uint8 array."""
    lay = layout(type_)
    if lay.name not in QUANTIZABLE:
        raise InvalidArgumentError(f"quantizing to {lay.name} is not supported; supported: {', '.join(QUANTIZABLE)}")
    _check_f32(x, "x")
    if x.size == 0 or x.size % lay.block_elems:
        raise InvalidArgumentError(f"{lay.name} needs a non-zero multiple of {lay.block_elems} values, got {x.size}")
    out = np.empty(x.size // lay.block_elems * lay.block_bytes, dtype=np.uint8)
    _native.check(_native.lib.ek_quantize(lay.type_id, x.ctypes.data, out.ctypes.data, x.size),
                  f"ek_quantize({lay.name}, n={x.size})")
    return out


# What quantize_rows reads: the source type and the dtype its values arrive in (BF16 as its bits).
ROW_SOURCE_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(np.uint16)}


def _row_source_type(x: np.ndarray, source_type: Optional[str]) -> str:
    if not isinstance(x, np.ndarray):
        raise InvalidArgumentError(f"x must be a numpy array, not {type(x).__name__}")
    if source_type is None:
        source_type = {ROW_SOURCE_DTYPES["F32"]: "F32", ROW_SOURCE_DTYPES["F16"]: "F16"}.get(x.dtype)
        if source_type is None:
            raise InvalidArgumentError(f"x has dtype {x.dtype}: give float32 or float16 values, or BF16 bits as "
                                       f"uint16 with source_type='BF16'")
    name = source_type.upper() if isinstance(source_type, str) else source_type
    if name not in ROW_SOURCE_DTYPES:
        raise InvalidArgumentError(f"source_type {source_type!r}: choose from {', '.join(ROW_SOURCE_DTYPES)}")
    if x.dtype != ROW_SOURCE_DTYPES[name]:
        raise InvalidArgumentError(f"source_type {name} needs x of dtype {ROW_SOURCE_DTYPES[name]}, not {x.dtype}")
    if not x.flags.c_contiguous:
        raise InvalidArgumentError(f"x must be C-contiguous (strides {x.strides})")
    _check_aligned(x, x.itemsize, "x")
    return name


def quantize_rows(type_: Union[int, str], x: np.ndarray, importance: Optional[np.ndarray] = None,
                  pool: Optional["Pool"] = None, source_type: Optional[str] = None) -> np.ndarray:
    """Encode the rows of a (n_rows, n_cols) matrix into `type_` blocks, split across `pool`.
    x holds F32 (float32), F16 (float16) or BF16 values (their bits as uint16, with
    source_type="BF16"); source_type defaults to x's dtype. F16 and BF16 rows are widened to
    floats row by row inside the native tasks (no float32 copy of x is made) and give the bytes
    of the widened matrix. `importance` (n_cols non-negative float32 weights, the mean squared
    activation of each column) steers the 4-bit, 5-bit and K-quant fits. A row holding NaN or
    infinity raises NonFiniteRowError with its index. Returns (n_rows, row_bytes) uint8."""
    lay = layout(type_)
    if lay.name not in QUANTIZABLE:
        raise InvalidArgumentError(f"quantizing to {lay.name} is not supported; supported: {', '.join(QUANTIZABLE)}")
    source = _row_source_type(x, source_type)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidArgumentError(f"x must be a non-empty (n_rows, n_cols) matrix, got shape {x.shape}")
    n_rows, n_cols = x.shape
    if n_cols % lay.block_elems:
        raise InvalidArgumentError(
            f"rows of {n_cols} values do not divide into {lay.name} blocks of {lay.block_elems}")
    imp_address = None
    if importance is not None:
        _check_f32(importance, "importance")
        if importance.shape != (n_cols,):
            raise InvalidArgumentError(f"importance has shape {importance.shape}; expected ({n_cols},)")
        if not np.all(np.isfinite(importance)) or np.any(importance < 0):
            raise InvalidArgumentError("importance weights must be finite and non-negative")
        imp_address = importance.ctypes.data
    out = np.empty((n_rows, lay.row_bytes(n_cols)), dtype=np.uint8)
    pool_handle = _pool_handle(pool)
    bad_row = ctypes.c_int64(-1)
    with pool.lock if pool is not None else _NO_LOCK:
        status = _native.lib.ek_quantize_rows(lay.type_id, TYPE_IDS[source], x.ctypes.data, out.ctypes.data, n_rows,
                                              n_cols, imp_address, pool_handle, ctypes.byref(bad_row))
    if status == _native.EK_ERR_NON_FINITE:
        raise NonFiniteRowError(f"x row {bad_row.value} holds NaN or infinite values", row=bad_row.value)
    _native.check(status, f"ek_quantize_rows({lay.name} from {source}, {n_rows}x{n_cols})")
    return out


def default_threads() -> int:
    """Threads a Pool(0) starts: one per physical performance core."""
    return int(_native.lib.ek_default_threads())


class Pool:
    """A persistent native thread pool; `threads=0` means one per physical performance core."""

    def __init__(self, threads: int = 0):
        if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 0 or threads > 256:
            raise InvalidArgumentError(f"threads must be an integer in 0..256, got {threads!r}")
        handle = ctypes.c_void_p()
        _native.check(_native.lib.ek_pool_create(int(threads), ctypes.byref(handle)), f"ek_pool_create({threads})")
        self._handle: Optional[int] = handle.value
        # A native pool runs one job at a time; Python threads sharing it take turns.
        self.lock = threading.Lock()

    @property
    def handle(self) -> Optional[int]:
        if self._handle is None:
            raise InvalidArgumentError("the thread pool was closed")
        return self._handle

    @property
    def threads(self) -> int:
        return int(_native.lib.ek_pool_threads(self.handle))

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None:
            _native.lib.ek_pool_free(self._handle)
            self._handle = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


_NO_LOCK = contextlib.nullcontext()


def _pool_handle(pool: Optional[Pool]) -> Optional[int]:
    if pool is None:
        return None
    if not isinstance(pool, Pool):
        raise InvalidArgumentError(f"pool must be an edgesdk.kernels.Pool, not {type(pool).__name__}")
    return pool.handle


class Weight:
    """A weight matrix (n_rows, n_cols) in a GGUF type, for matmul and row lookup.

    `data` holds n_rows rows of n_cols values in GGUF layout (row r at
    r * row_bytes); it is referenced, not copied, unless `repack=True` lets the
    active ISA build its interleaved copy. The Weight keeps the ISA active at
    creation (see `isa`), whatever ek_isa_set does later.
    """

    def __init__(self, type_: Union[int, str], n_rows: int, n_cols: int, data: Buffer, repack: bool = False):
        lay = layout(type_)
        for name, value in (("n_rows", n_rows), ("n_cols", n_cols)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        n_rows, n_cols = int(n_rows), int(n_cols)
        if n_cols % lay.block_elems:
            raise InvalidArgumentError(
                f"n_cols {n_cols} is not a multiple of {lay.name}'s block of {lay.block_elems} values")
        raw = _as_bytes_view(data, "weight data")
        expected = n_rows * lay.row_bytes(n_cols)
        if raw.size != expected:
            raise InvalidArgumentError(
                f"weight data has {raw.size} bytes; {n_rows} rows x {n_cols} {lay.name} values need {expected}")
        _check_aligned(raw, lay.alignment, "weight data")
        self.layout = lay
        self.n_rows, self.n_cols = n_rows, n_cols
        self._data = raw  # keeps the mapped/borrowed bytes alive while C points at them
        handle = ctypes.c_void_p()
        flags = _native.EK_WEIGHT_ALLOW_REPACK if repack else 0
        status = _native.lib.ek_weight_create(lay.type_id, n_rows, n_cols, raw.ctypes.data, flags,
                                              ctypes.byref(handle))
        if status == _native.EK_ERR_UNSUPPORTED:
            raise UnsupportedModelError(f"no {lay.name} matmul kernel on ISA {_native.isa_current()}")
        _native.check(status, f"ek_weight_create({lay.name}, {n_rows}x{n_cols})")
        self._handle: Optional[int] = handle.value
        if self.owned_bytes:
            self._data = None  # repacked into native memory: the source may go

    @classmethod
    def from_gguf(cls, gguf_file, name: str, repack: bool = False) -> "Weight":
        """The 2-D (or higher, rows flattened) tensor `name` of an opened edgesdk.gguf file, zero-copy."""
        if name not in gguf_file.tensors:
            raise InvalidArgumentError(f"no tensor {name!r} in the GGUF file")
        info = gguf_file.tensors[name]
        n_cols = int(info.shape[0])
        n_rows = int(np.prod(info.shape[1:], dtype=np.int64)) if len(info.shape) > 1 else 1
        return cls(info.type_id, n_rows, n_cols, gguf_file.tensor_data(name), repack=repack)

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise InvalidArgumentError("the weight was freed")
        return self._handle

    @property
    def type_name(self) -> str:
        return self.layout.name

    @property
    def isa(self) -> str:
        """The kernel family this weight was prepared for."""
        return _native.ISA_NAMES[_native.lib.ek_weight_isa(self.handle)]

    @property
    def owned_bytes(self) -> int:
        """Bytes of the repacked copy; 0 when the weight reads the caller's buffer."""
        return int(_native.lib.ek_weight_owned_bytes(self.handle))

    def matmul(self, x: np.ndarray, out: Optional[np.ndarray] = None, pool: Optional[Pool] = None) -> np.ndarray:
        """y = x @ W^T: x (m, n_cols) or (n_cols,) float32 -> y (m, n_rows) or (n_rows,)."""
        _check_f32(x, "x")
        if x.ndim not in (1, 2) or x.shape[-1] != self.n_cols:
            raise InvalidArgumentError(
                f"x has shape {x.shape}; expected ({self.n_cols},) or (m, {self.n_cols}) for a "
                f"{self.n_rows}x{self.n_cols} weight")
        m = 1 if x.ndim == 1 else x.shape[0]
        if m == 0:
            raise InvalidArgumentError("x has no rows")
        out_shape = (self.n_rows,) if x.ndim == 1 else (m, self.n_rows)
        if out is None:
            out = np.empty(out_shape, dtype=np.float32)
        else:
            _check_f32(out, "out")
            if out.shape != out_shape:
                raise InvalidArgumentError(f"out has shape {out.shape}; expected {out_shape}")
            if np.shares_memory(out, x):
                raise InvalidArgumentError("out must not overlap x")
        pool_handle = _pool_handle(pool)
        with pool.lock if pool is not None else _NO_LOCK:
            status = _native.lib.ek_matmul(self.handle, x.ctypes.data, m, out.ctypes.data, pool_handle)
        _native.check(status, f"ek_matmul({self.type_name}, {self.n_rows}x{self.n_cols}, m={m})")
        return out

    def get_rows(self, ids: Sequence[int]) -> np.ndarray:
        """Rows `ids` of W dequantized to float32, shape (len(ids), n_cols): the embedding lookup."""
        ids_arr = np.ascontiguousarray(np.asarray(ids))
        if ids_arr.ndim != 1 or ids_arr.size == 0 or not np.issubdtype(ids_arr.dtype, np.integer):
            raise InvalidArgumentError(f"ids must be a non-empty 1-D sequence of integers, got shape {ids_arr.shape} "
                                       f"dtype {ids_arr.dtype}")
        bad = ids_arr[(ids_arr < 0) | (ids_arr >= self.n_rows)]
        if bad.size:
            raise InvalidArgumentError(f"row id {int(bad[0])} is out of range 0..{self.n_rows - 1}")
        ids32 = ids_arr.astype(np.int32)
        out = np.empty((ids32.size, self.n_cols), dtype=np.float32)
        _native.check(_native.lib.ek_weight_get_rows(self.handle, ids32.ctypes.data, ids32.size, out.ctypes.data),
                      f"ek_weight_get_rows({self.type_name}, n={ids32.size})")
        return out

    def close(self) -> None:
        if getattr(self, "_handle", None) is not None:
            _native.lib.ek_weight_free(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


def matmul(weight: Weight, x: np.ndarray, out: Optional[np.ndarray] = None, pool: Optional[Pool] = None) -> np.ndarray:
    """y = x @ W^T (see Weight.matmul)."""
    if not isinstance(weight, Weight):
        raise InvalidArgumentError(f"weight must be an edgesdk.kernels.Weight, not {type(weight).__name__}")
    return weight.matmul(x, out=out, pool=pool)


def vec_dot(type_: Union[int, str], w_raw: Buffer, x: np.ndarray) -> float:
    """Dot of one row of `type_` values with float32 x, quantizing x as the active kernels do."""
    lay = layout(type_)
    raw = _as_bytes_view(w_raw, "w")
    _check_f32(x, "x")
    if x.ndim != 1 or x.size == 0 or x.size % lay.block_elems:
        raise InvalidArgumentError(f"x must be 1-D with a non-zero multiple of {lay.block_elems} values, "
                                   f"got shape {x.shape}")
    if raw.size != lay.row_bytes(x.size):
        raise InvalidArgumentError(f"w has {raw.size} bytes; {x.size} {lay.name} values need {lay.row_bytes(x.size)}")
    _check_aligned(raw, lay.alignment, "w")
    out = ctypes.c_float()
    _native.check(_native.lib.ek_vec_dot(lay.type_id, raw.ctypes.data, x.ctypes.data, x.size, ctypes.byref(out)),
                  f"ek_vec_dot({lay.name}, n={x.size})")
    return float(out.value)


def measure_read_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5, pool: Optional[Pool] = None) -> float:
    """Bytes/second the pool's threads read from a buffer of n_bytes (median of repeats),
    each thread reading its share as a few sequential streams side by side."""
    if n_bytes < 64 or repeats < 1:
        raise InvalidArgumentError(f"need n_bytes >= 64 and repeats >= 1, got {n_bytes} and {repeats}")
    pool_handle = _pool_handle(pool)
    with pool.lock if pool is not None else _NO_LOCK:
        bandwidth = float(_native.lib.ek_measure_read_bandwidth(n_bytes, repeats, pool_handle))
    if bandwidth <= 0.0:
        raise NativeMemoryError(f"could not allocate {n_bytes} bytes to measure read bandwidth")
    return bandwidth
