"""Reading GGUF model files, strictly.

A GGUF file is: a header (magic, version, tensor count, metadata count), the
metadata key/value pairs, the tensor index (name, shape, type, offset), then
the tensor data, aligned to `general.alignment`. Everything here is checked
against the file size and against overflow before it is used, because model
files come from the internet: a malformed file raises ModelFormatError naming
the field and its byte offset.

Tensor data is never copied: `GGUFFile.tensor_data(name)` returns a numpy view
of the memory-mapped file.

This module imports nothing of edgesdk but its errors.
"""
from __future__ import annotations

import builtins
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .errors import ModelFormatError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Sanity caps: far above anything real, low enough that a hostile count cannot
# make us allocate or loop without bound before the file size check catches it.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_STRING_BYTES = 1 << 26        # 64 MiB for one string (chat templates are KBs)
MAX_ARRAY_ITEMS = 1 << 26
MAX_DIMS = 4

# GGUF metadata value types.
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = 8, 9, 10, 11, 12

_SCALAR_FORMATS = {
    T_UINT8: ("<B", np.uint8), T_INT8: ("<b", np.int8),
    T_UINT16: ("<H", np.uint16), T_INT16: ("<h", np.int16),
    T_UINT32: ("<I", np.uint32), T_INT32: ("<i", np.int32),
    T_FLOAT32: ("<f", np.float32), T_BOOL: ("<?", np.bool_),
    T_UINT64: ("<Q", np.uint64), T_INT64: ("<q", np.int64),
    T_FLOAT64: ("<d", np.float64),
}
VALUE_TYPE_NAMES = {
    T_UINT8: "uint8", T_INT8: "int8", T_UINT16: "uint16", T_INT16: "int16",
    T_UINT32: "uint32", T_INT32: "int32", T_FLOAT32: "float32", T_BOOL: "bool",
    T_STRING: "string", T_ARRAY: "array", T_UINT64: "uint64", T_INT64: "int64",
    T_FLOAT64: "float64",
}


@dataclass(frozen=True)
class GGMLType:
    """A tensor element type: `block_elems` values are stored in `block_bytes` bytes."""
    type_id: int
    name: str
    block_elems: int
    block_bytes: int


# ggml's tensor types as GGUF numbers them (ids 4, 5 and 31-33 were removed upstream).
GGML_TYPES: Dict[int, GGMLType] = {t.type_id: t for t in (
    GGMLType(0, "F32", 1, 4), GGMLType(1, "F16", 1, 2),
    GGMLType(2, "Q4_0", 32, 18), GGMLType(3, "Q4_1", 32, 20),
    GGMLType(6, "Q5_0", 32, 22), GGMLType(7, "Q5_1", 32, 24),
    GGMLType(8, "Q8_0", 32, 34), GGMLType(9, "Q8_1", 32, 36),
    GGMLType(10, "Q2_K", 256, 84), GGMLType(11, "Q3_K", 256, 110),
    GGMLType(12, "Q4_K", 256, 144), GGMLType(13, "Q5_K", 256, 176),
    GGMLType(14, "Q6_K", 256, 210), GGMLType(15, "Q8_K", 256, 292),
    GGMLType(16, "IQ2_XXS", 256, 66), GGMLType(17, "IQ2_XS", 256, 74),
    GGMLType(18, "IQ3_XXS", 256, 98), GGMLType(19, "IQ1_S", 256, 50),
    GGMLType(20, "IQ4_NL", 32, 18), GGMLType(21, "IQ3_S", 256, 110),
    GGMLType(22, "IQ2_S", 256, 82), GGMLType(23, "IQ4_XS", 256, 136),
    GGMLType(24, "I8", 1, 1), GGMLType(25, "I16", 1, 2),
    GGMLType(26, "I32", 1, 4), GGMLType(27, "I64", 1, 8),
    GGMLType(28, "F64", 1, 8), GGMLType(29, "IQ1_M", 256, 56),
    GGMLType(30, "BF16", 1, 2), GGMLType(34, "TQ1_0", 256, 54),
    GGMLType(35, "TQ2_0", 256, 66), GGMLType(39, "MXFP4", 32, 17),
)}
GGML_TYPES_BY_NAME = {t.name: t for t in GGML_TYPES.values()}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor index.

    `shape` is in GGUF order: shape[0] is the innermost (contiguous) dimension,
    so a weight matrix of n_rows x n_cols has shape (n_cols, n_rows).
    `offset` is absolute in the file; `nbytes` is the exact data size.
    """
    name: str
    shape: Tuple[int, ...]
    type_id: int
    type_name: str
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Cursor:
    """Bounds-checked little-endian reads over the mapped header."""

    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf, size: int):
        self.buf = buf
        self.pos = 0
        self.size = size

    def need(self, n: int, field: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelFormatError(
                f"truncated file: {field} at byte offset {self.pos} needs {n} bytes, "
                f"file has {self.size - self.pos} left"
            )

    def scalar(self, fmt: str, size: int, field: str):
        self.need(size, field)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def u32(self, field: str) -> int:
        return self.scalar("<I", 4, field)

    def u64(self, field: str) -> int:
        return self.scalar("<Q", 8, field)

    def string(self, field: str) -> str:
        start = self.pos
        length = self.u64(field + " length")
        if length > MAX_STRING_BYTES:
            raise ModelFormatError(
                f"{field} at byte offset {start}: string length {length} exceeds the cap of {MAX_STRING_BYTES}"
            )
        self.need(length, field)
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"{field} at byte offset {start}: not valid UTF-8 ({exc.reason})") from None


class GGUFFile:
    """An opened GGUF file: header version, metadata, tensor index, mapped data.

    Use as a context manager or call close(); numpy views returned by
    tensor_data() keep the mapping alive while they exist.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        try:
            self._file = builtins.open(self.path, "rb")
        except OSError as exc:
            raise ModelFormatError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            self.file_size = os.fstat(self._file.fileno()).st_size
            if self.file_size < 24:
                raise ModelFormatError(
                    f"{self.path}: file is {self.file_size} bytes, too short for a GGUF header (24 bytes)"
                )
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self.data = np.frombuffer(self._mmap, dtype=np.uint8)
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- parsing -----------------------------------------------------------

    def _parse(self) -> None:
        cur = _Cursor(self._mmap, self.file_size)
        magic = bytes(self._mmap[0:4])
        if magic != GGUF_MAGIC:
            raise ModelFormatError(f"bad magic at byte offset 0: {magic!r}, expected {GGUF_MAGIC!r}")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            raise ModelFormatError(
                f"unsupported GGUF version {self.version} at byte offset 4 (supported: 2, 3)"
            )
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        if n_tensors > MAX_TENSORS:
            raise ModelFormatError(f"tensor count {n_tensors} at byte offset 8 exceeds the cap of {MAX_TENSORS}")
        if n_kv > MAX_KV:
            raise ModelFormatError(f"metadata count {n_kv} at byte offset 16 exceeds the cap of {MAX_KV}")

        self.metadata: Dict[str, Any] = {}
        self.metadata_types: Dict[str, int] = {}
        for i in range(n_kv):
            key_offset = cur.pos
            key = cur.string(f"metadata key #{i}")
            if not key:
                raise ModelFormatError(f"metadata key #{i} at byte offset {key_offset} is empty")
            if key in self.metadata:
                raise ModelFormatError(f"duplicate metadata key {key!r} at byte offset {key_offset}")
            vtype_offset = cur.pos
            vtype = cur.u32(f"type of {key!r}")
            self.metadata[key] = self._read_value(cur, vtype, key, vtype_offset)
            self.metadata_types[key] = vtype

        self.alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.metadata:
            align = self.metadata["general.alignment"]
            if self.metadata_types["general.alignment"] != T_UINT32:
                raise ModelFormatError(
                    "general.alignment must be uint32, got "
                    f"{VALUE_TYPE_NAMES[self.metadata_types['general.alignment']]}"
                )
            if align == 0 or align & (align - 1):
                raise ModelFormatError(f"general.alignment is {align}, not a power of two")
            self.alignment = int(align)

        infos = []
        names = set()
        for i in range(n_tensors):
            info_offset = cur.pos
            name = cur.string(f"tensor #{i} name")
            if not name:
                raise ModelFormatError(f"tensor #{i} at byte offset {info_offset} has an empty name")
            if name in names:
                raise ModelFormatError(f"duplicate tensor name {name!r} at byte offset {info_offset}")
            names.add(name)
            dims_offset = cur.pos
            n_dims = cur.u32(f"tensor {name!r} n_dims")
            if n_dims == 0 or n_dims > MAX_DIMS:
                raise ModelFormatError(
                    f"tensor {name!r}: n_dims is {n_dims} at byte offset {dims_offset} (must be 1..{MAX_DIMS})"
                )
            shape = []
            for d in range(n_dims):
                dim = cur.u64(f"tensor {name!r} dimension {d}")
                if dim == 0 or dim >= 1 << 62:
                    raise ModelFormatError(
                        f"tensor {name!r}: dimension {d} is {dim} at byte offset {cur.pos - 8}"
                    )
                shape.append(dim)
            type_offset = cur.pos
            type_id = cur.u32(f"tensor {name!r} type")
            ggml_type = GGML_TYPES.get(type_id)
            if ggml_type is None:
                raise ModelFormatError(f"tensor {name!r}: unknown tensor type {type_id} at byte offset {type_offset}")
            rel_offset = cur.u64(f"tensor {name!r} offset")
            if shape[0] % ggml_type.block_elems:
                raise ModelFormatError(
                    f"tensor {name!r}: first dimension {shape[0]} is not a multiple of "
                    f"{ggml_type.name}'s block size {ggml_type.block_elems}"
                )
            n_elements = 1
            for dim in shape:
                n_elements *= dim
            if n_elements >= 1 << 62:
                raise ModelFormatError(f"tensor {name!r}: shape {tuple(shape)} overflows")
            nbytes = n_elements // ggml_type.block_elems * ggml_type.block_bytes
            infos.append((name, tuple(shape), ggml_type, rel_offset, nbytes, info_offset))

        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        if self.data_offset > self.file_size:
            raise ModelFormatError(
                f"tensor data would start at byte offset {self.data_offset}, past the end of the file ({self.file_size})"
            )

        self.tensors: Dict[str, TensorInfo] = {}
        previous_end = 0
        previous_name = None
        for name, shape, ggml_type, rel_offset, nbytes, info_offset in infos:
            if rel_offset % self.alignment:
                raise ModelFormatError(
                    f"tensor {name!r}: data offset {rel_offset} is not a multiple of the alignment {self.alignment}"
                )
            if rel_offset < previous_end:
                raise ModelFormatError(
                    f"tensor {name!r}: data at relative offset {rel_offset} overlaps or precedes "
                    f"tensor {previous_name!r}, which ends at {previous_end}"
                )
            start = self.data_offset + rel_offset
            if start + nbytes > self.file_size:
                raise ModelFormatError(
                    f"tensor {name!r}: data [{start}, {start + nbytes}) runs past the end of the file "
                    f"({self.file_size} bytes)"
                )
            previous_end = rel_offset + nbytes
            previous_name = name
            self.tensors[name] = TensorInfo(name, shape, ggml_type.type_id, ggml_type.name, start, nbytes)

    def _read_value(self, cur: _Cursor, vtype: int, key: str, type_offset: int, in_array: bool = False):
        if vtype in _SCALAR_FORMATS:
            fmt, dtype = _SCALAR_FORMATS[vtype]
            size = np.dtype(dtype).itemsize
            value = cur.scalar(fmt, size, f"value of {key!r}")
            if vtype == T_BOOL:
                return bool(value)
            return value
        if vtype == T_STRING:
            return cur.string(f"value of {key!r}")
        if vtype == T_ARRAY:
            if in_array:
                raise ModelFormatError(f"{key!r}: nested array at byte offset {type_offset} is not allowed")
            item_type_offset = cur.pos
            item_type = cur.u32(f"array item type of {key!r}")
            count_offset = cur.pos
            count = cur.u64(f"array length of {key!r}")
            if count > MAX_ARRAY_ITEMS:
                raise ModelFormatError(
                    f"{key!r}: array length {count} at byte offset {count_offset} exceeds the cap of {MAX_ARRAY_ITEMS}"
                )
            if item_type in _SCALAR_FORMATS:
                dtype = np.dtype(_SCALAR_FORMATS[item_type][1]).newbyteorder("<")
                nbytes = count * dtype.itemsize
                cur.need(nbytes, f"array data of {key!r}")
                values = np.frombuffer(self._mmap, dtype=dtype, count=count, offset=cur.pos).copy()
                cur.pos += nbytes
                return values.astype(dtype.newbyteorder("="), copy=False)
            if item_type == T_STRING:
                return self._read_string_array(cur, key, count)
            if item_type == T_ARRAY:
                raise ModelFormatError(f"{key!r}: nested array at byte offset {item_type_offset} is not allowed")
            raise ModelFormatError(f"{key!r}: unknown array item type {item_type} at byte offset {item_type_offset}")
        raise ModelFormatError(f"{key!r}: unknown value type {vtype} at byte offset {type_offset}")

    def _read_string_array(self, cur: _Cursor, key: str, count: int) -> List[str]:
        # Each item costs at least its 8-byte length: reject impossible counts up front.
        cur.need(count * 8, f"string array {key!r}")
        buf, size = self._mmap, self.file_size
        pos = cur.pos
        unpack = struct.Struct("<Q").unpack_from
        items = []
        append = items.append
        for i in range(count):
            if pos + 8 > size:
                raise ModelFormatError(f"truncated file: {key!r} item {i} length at byte offset {pos}")
            length = unpack(buf, pos)[0]
            pos += 8
            if length > MAX_STRING_BYTES or pos + length > size:
                raise ModelFormatError(
                    f"{key!r} item {i} at byte offset {pos - 8}: length {length} runs past the end of the file"
                )
            append(buf[pos:pos + length])
            pos += length
        cur.pos = pos
        try:
            return [raw.decode("utf-8") for raw in items]
        except UnicodeDecodeError:
            for i, raw in enumerate(items):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ModelFormatError(f"{key!r} item {i}: not valid UTF-8 ({exc.reason})") from None
            raise

    # -- access ------------------------------------------------------------

    def tensor_data(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor as a read-only uint8 view of the mapped file (zero-copy)."""
        info = self.tensors[name]
        return self.data[info.offset:info.offset + info.nbytes]

    def tensor_array(self, name: str) -> np.ndarray:
        """F32/F16/BF16 and integer tensors as a typed view in numpy's order (shape reversed)."""
        info = self.tensors[name]
        dtypes = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "I16": np.int16,
                  "I32": np.int32, "I64": np.int64, "F64": np.float64}
        if info.type_name not in dtypes:
            raise ModelFormatError(f"tensor {name!r} is {info.type_name}, not a plain numeric type")
        return self.tensor_data(name).view(dtypes[info.type_name]).reshape(tuple(reversed(info.shape)))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> Optional[str]:
        return self.metadata.get("general.architecture")

    def close(self) -> None:
        data = getattr(self, "data", None)
        self.data = None
        mm = getattr(self, "_mmap", None)
        if mm is not None:
            del data
            try:
                mm.close()
            except BufferError:
                pass  # numpy views still reference it; it closes when they go
            self._mmap = None
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
            self._file = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, version={self.version}, "
                f"{len(self.metadata)} metadata keys, {len(self.tensors)} tensors)")


def open(path: Union[str, os.PathLike]) -> GGUFFile:  # noqa: A001 - mirrors builtins.open on purpose
    """Open and validate a GGUF file; raises ModelFormatError on anything malformed."""
    return GGUFFile(path)
