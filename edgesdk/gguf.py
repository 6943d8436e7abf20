"""Reading GGUF model files, strictly.

A GGUF file is: a header (magic, version, tensor count, metadata count), the
metadata key/value pairs, the tensor index (name, shape, type, offset), then
the tensor data, aligned to `general.alignment`. Everything here is checked
against the file size and against overflow before it is used, because model
files come from the internet: a malformed file raises ModelFormatError naming
the field and its byte offset.

Versions 2 and 3 are read (v1 used 32-bit counts and is obsolete; v3 differs
from v2 only in allowing big-endian files, which we reject by name).

Tensor data must lie in index order, each tensor after the previous one ends,
at offsets that are multiples of the alignment: that is what llama.cpp's and
the gguf package's writers emit, and it makes overlap detection one pass.

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
HEADER_BYTES = 24  # magic u32, version u32, tensor count u64, metadata count u64

# Sanity caps: far above anything real, low enough that a hostile count cannot
# make us allocate or loop without bound before the file size check catches it.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_STRING_BYTES = 1 << 26        # 64 MiB for one string (chat templates are KBs)
MAX_ARRAY_ITEMS = 1 << 26
MAX_DIMS = 4
MAX_KEY_BYTES = (1 << 16) - 1      # the GGUF specification's limit for a key
MAX_TENSOR_NAME_BYTES = 64         # the specification's limit; ggml cannot hold longer names
MAX_ELEMENTS = 1 << 62            # keeps every byte count far inside int64
MAX_ALIGNMENT = 1 << 16           # real files use 32; larger would only waste space

# Smallest possible encodings, used to reject counts the file cannot hold
# before looping over them: a metadata entry is key length (8) + 1 key byte +
# value type (4) + a 1-byte value; a tensor entry is name length (8) + 1 name
# byte + n_dims (4) + one dimension (8) + type (4) + offset (8).
MIN_KV_BYTES = 8 + 1 + 4 + 1
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8

# GGUF metadata value types.
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = 8, 9, 10, 11, 12

# value type -> (struct format, little-endian numpy dtype); bools are read as
# bytes so that a value other than 0 or 1 can be rejected.
_SCALAR_FORMATS = {
    T_UINT8: ("<B", "<u1"), T_INT8: ("<b", "<i1"),
    T_UINT16: ("<H", "<u2"), T_INT16: ("<h", "<i2"),
    T_UINT32: ("<I", "<u4"), T_INT32: ("<i", "<i4"),
    T_FLOAT32: ("<f", "<f4"), T_BOOL: ("<B", "<u1"),
    T_UINT64: ("<Q", "<u8"), T_INT64: ("<q", "<i8"),
    T_FLOAT64: ("<d", "<f8"),
}
_SCALAR_STRUCTS = {t: (struct.Struct(fmt), np.dtype(dt)) for t, (fmt, dt) in _SCALAR_FORMATS.items()}
VALUE_TYPE_NAMES = {
    T_UINT8: "uint8", T_INT8: "int8", T_UINT16: "uint16", T_INT16: "int16",
    T_UINT32: "uint32", T_INT32: "int32", T_FLOAT32: "float32", T_BOOL: "bool",
    T_STRING: "string", T_ARRAY: "array", T_UINT64: "uint64", T_INT64: "int64",
    T_FLOAT64: "float64",
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


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
    GGMLType(40, "NVFP4", 64, 36), GGMLType(41, "Q1_0", 128, 18),
)}
GGML_TYPES_BY_NAME = {t.name: t for t in GGML_TYPES.values()}

# Types tensor_array() can view directly as numpy values.
_PLAIN_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
                 "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}


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
    """Bounds-checked little-endian reads over the mapped file."""

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

    def unpack(self, st: struct.Struct, field: str):
        self.need(st.size, field)
        value = st.unpack_from(self.buf, self.pos)[0]
        self.pos += st.size
        return value

    def u32(self, field: str) -> int:
        return self.unpack(_U32, field)

    def u64(self, field: str) -> int:
        return self.unpack(_U64, field)

    def string(self, field: str) -> str:
        start = self.pos
        length = self.u64(field + " length")
        if length > MAX_STRING_BYTES:
            raise ModelFormatError(
                f"{field} at byte offset {start}: string length {length} exceeds the cap of {MAX_STRING_BYTES}"
            )
        self.need(length, field)
        raw = self.buf[self.pos:self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"{field} at byte offset {start}: not valid UTF-8 ({exc.reason})") from None


class GGUFFile:
    """An opened GGUF file: header version, metadata, tensor index, mapped data.

    Attributes: `version`, `metadata` (key -> int/float/bool/str, numeric
    arrays as numpy arrays, string arrays as lists of str), `metadata_types`
    (key -> GGUF value type id), `array_types` (array key -> item type id),
    `alignment`, `data_offset`, `file_size`, `tensors` (name -> TensorInfo, in
    file order).

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
            if self.file_size < HEADER_BYTES:
                raise ModelFormatError(
                    f"{self.path}: file is {self.file_size} bytes, too short for a GGUF header "
                    f"({HEADER_BYTES} bytes; truncated at byte offset {self.file_size})"
                )
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._file.close()  # the mapping holds its own reference to the file
            self._file = None
            self.data = np.frombuffer(self._mmap, dtype=np.uint8)
            self._parse()
        except ModelFormatError as exc:
            self.close()
            if not str(exc).startswith(self.path):
                raise ModelFormatError(f"{self.path}: {exc}") from None
            raise
        except BaseException:
            self.close()
            raise

    # -- parsing -----------------------------------------------------------

    def _parse(self) -> None:
        cur = _Cursor(self._mmap, self.file_size)
        magic = self._mmap[0:4]
        if magic != GGUF_MAGIC:
            raise ModelFormatError(f"bad magic at byte offset 0: {magic!r}, expected {GGUF_MAGIC!r}")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            if int.from_bytes(self.version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
                raise ModelFormatError("version at byte offset 4: big-endian GGUF files are not supported")
            raise ModelFormatError(
                f"unsupported GGUF version {self.version} at byte offset 4 (supported: 2, 3)"
            )
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        if n_tensors > MAX_TENSORS:
            raise ModelFormatError(f"tensor count {n_tensors} at byte offset 8 exceeds the cap of {MAX_TENSORS}")
        if n_kv > MAX_KV:
            raise ModelFormatError(f"metadata count {n_kv} at byte offset 16 exceeds the cap of {MAX_KV}")
        min_bytes = n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES
        if HEADER_BYTES + min_bytes > self.file_size:
            raise ModelFormatError(
                f"tensor count {n_tensors} (byte offset 8) and metadata count {n_kv} (byte offset 16) "
                f"need at least {HEADER_BYTES + min_bytes} bytes; the file has {self.file_size}"
            )

        self.metadata: Dict[str, Any] = {}
        self.metadata_types: Dict[str, int] = {}
        self.array_types: Dict[str, int] = {}
        alignment_offset = -1
        for i in range(n_kv):
            key_offset = cur.pos
            key = cur.string(f"metadata key #{i}")
            if not key:
                raise ModelFormatError(f"metadata key #{i} at byte offset {key_offset} is empty")
            key_bytes = cur.pos - key_offset - 8
            if key_bytes > MAX_KEY_BYTES:
                raise ModelFormatError(
                    f"metadata key #{i} at byte offset {key_offset} is {key_bytes} bytes (at most {MAX_KEY_BYTES})"
                )
            if key in self.metadata:
                raise ModelFormatError(f"duplicate metadata key {key!r} at byte offset {key_offset}")
            vtype_offset = cur.pos
            vtype = cur.u32(f"value type of {key!r}")
            self.metadata[key] = self._read_value(cur, vtype, key, vtype_offset)
            self.metadata_types[key] = vtype
            if key == "general.alignment":
                alignment_offset = vtype_offset

        self.alignment = self._read_alignment(alignment_offset)
        self.tensors: Dict[str, TensorInfo] = {}
        self._parse_tensor_index(cur, n_tensors)

    def _read_alignment(self, type_offset: int) -> int:
        """general.alignment (its value type is at `type_offset`), else the default."""
        if "general.alignment" not in self.metadata:
            return DEFAULT_ALIGNMENT
        vtype = self.metadata_types["general.alignment"]
        if vtype != T_UINT32:
            raise ModelFormatError(
                f"general.alignment at byte offset {type_offset} must be uint32, got {VALUE_TYPE_NAMES[vtype]}"
            )
        align = self.metadata["general.alignment"]
        if align == 0 or align & (align - 1) or align > MAX_ALIGNMENT:
            raise ModelFormatError(
                f"general.alignment at byte offset {type_offset + 4} is {align}, "
                f"not a power of two in 1..{MAX_ALIGNMENT}"
            )
        return int(align)

    def _parse_tensor_index(self, cur: _Cursor, n_tensors: int) -> None:
        entries = []
        for i in range(n_tensors):
            info_offset = cur.pos
            name = cur.string(f"tensor #{i} name")
            if not name:
                raise ModelFormatError(f"tensor #{i} at byte offset {info_offset} has an empty name")
            if name in self.tensors:
                raise ModelFormatError(f"duplicate tensor name {name!r} at byte offset {info_offset}")
            name_bytes = cur.pos - info_offset - 8
            if name_bytes > MAX_TENSOR_NAME_BYTES:
                raise ModelFormatError(
                    f"tensor #{i} name at byte offset {info_offset} is {name_bytes} bytes "
                    f"(at most {MAX_TENSOR_NAME_BYTES})"
                )
            dims_offset = cur.pos
            n_dims = cur.u32(f"tensor {name!r} n_dims")
            if n_dims == 0 or n_dims > MAX_DIMS:
                raise ModelFormatError(
                    f"tensor {name!r}: n_dims is {n_dims} at byte offset {dims_offset} (must be 1..{MAX_DIMS})"
                )
            shape = []
            n_elements = 1
            for d in range(n_dims):
                dim_offset = cur.pos
                dim = cur.u64(f"tensor {name!r} dimension {d}")
                # dim >= 2**63 is what a negative int64 looks like as u64.
                if dim == 0 or dim >= MAX_ELEMENTS:
                    raise ModelFormatError(
                        f"tensor {name!r}: dimension {d} is {dim} at byte offset {dim_offset} "
                        f"(must be 1..{MAX_ELEMENTS - 1})"
                    )
                n_elements *= dim
                if n_elements >= MAX_ELEMENTS:
                    raise ModelFormatError(
                        f"tensor {name!r}: element count overflows at dimension {d} (byte offset {dim_offset})"
                    )
                shape.append(dim)
            type_offset = cur.pos
            type_id = cur.u32(f"tensor {name!r} type")
            ggml_type = GGML_TYPES.get(type_id)
            if ggml_type is None:
                raise ModelFormatError(f"tensor {name!r}: unknown tensor type {type_id} at byte offset {type_offset}")
            if shape[0] % ggml_type.block_elems:
                raise ModelFormatError(
                    f"tensor {name!r}: first dimension {shape[0]} (byte offset {dims_offset + 4}) is not a "
                    f"multiple of {ggml_type.name}'s block size {ggml_type.block_elems}"
                )
            offset_offset = cur.pos
            rel_offset = cur.u64(f"tensor {name!r} offset")
            nbytes = n_elements // ggml_type.block_elems * ggml_type.block_bytes
            entries.append((name, tuple(shape), ggml_type, rel_offset, nbytes, offset_offset))
            self.tensors[name] = None  # reserves the name for the duplicate check

        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        # A file without tensors (a vocabulary-only file) may end right after its index.
        if n_tensors == 0:
            self.data_offset = min(self.data_offset, self.file_size)
        if self.data_offset > self.file_size:
            raise ModelFormatError(
                f"tensor data would start at byte offset {self.data_offset}, past the end of the file "
                f"({self.file_size} bytes)"
            )

        previous_end = 0
        previous_name = None
        for name, shape, ggml_type, rel_offset, nbytes, offset_offset in entries:
            if rel_offset % self.alignment:
                raise ModelFormatError(
                    f"tensor {name!r}: data offset {rel_offset} (byte offset {offset_offset}) is not a "
                    f"multiple of the alignment {self.alignment}"
                )
            if rel_offset < previous_end:
                raise ModelFormatError(
                    f"tensor {name!r}: data offset {rel_offset} (byte offset {offset_offset}) overlaps or "
                    f"precedes tensor {previous_name!r}, which ends at {previous_end}; tensors must be "
                    "stored in index order"
                )
            start = self.data_offset + rel_offset
            if start + nbytes > self.file_size:
                raise ModelFormatError(
                    f"tensor {name!r}: data [{start}, {start + nbytes}) (offset at byte offset "
                    f"{offset_offset}) runs past the end of the file ({self.file_size} bytes)"
                )
            previous_end = rel_offset + nbytes
            previous_name = name
            self.tensors[name] = TensorInfo(name, shape, ggml_type.type_id, ggml_type.name, start, nbytes)

    def _read_value(self, cur: _Cursor, vtype: int, key: str, type_offset: int):
        scalar = _SCALAR_STRUCTS.get(vtype)
        if scalar is not None:
            value_offset = cur.pos
            value = cur.unpack(scalar[0], f"value of {key!r}")
            if vtype == T_BOOL:
                if value > 1:
                    raise ModelFormatError(f"{key!r}: bool value {value} at byte offset {value_offset} is not 0 or 1")
                return bool(value)
            return value
        if vtype == T_STRING:
            return cur.string(f"value of {key!r}")
        if vtype == T_ARRAY:
            return self._read_array(cur, key)
        raise ModelFormatError(f"{key!r}: unknown value type {vtype} at byte offset {type_offset}")

    def _read_array(self, cur: _Cursor, key: str):
        item_type_offset = cur.pos
        item_type = cur.u32(f"array item type of {key!r}")
        count_offset = cur.pos
        count = cur.u64(f"array length of {key!r}")
        if count > MAX_ARRAY_ITEMS:
            raise ModelFormatError(
                f"{key!r}: array length {count} at byte offset {count_offset} exceeds the cap of {MAX_ARRAY_ITEMS}"
            )
        self.array_types[key] = item_type
        scalar = _SCALAR_STRUCTS.get(item_type)
        if scalar is not None:
            dtype = scalar[1]
            nbytes = count * dtype.itemsize
            cur.need(nbytes, f"array data of {key!r} ({count} x {VALUE_TYPE_NAMES[item_type]})")
            if count == 0:
                return np.zeros(0, dtype=np.bool_ if item_type == T_BOOL else dtype.newbyteorder("="))
            values = np.frombuffer(self._mmap, dtype=dtype, count=count, offset=cur.pos)
            if item_type == T_BOOL:
                bad = np.flatnonzero(values > 1)
                if bad.size:
                    raise ModelFormatError(
                        f"{key!r}: bool item {bad[0]} at byte offset {cur.pos + int(bad[0])} is "
                        f"{values[bad[0]]}, not 0 or 1"
                    )
                values = values.astype(np.bool_)
            else:
                values = values.astype(dtype.newbyteorder("="))  # a copy: owns its memory, native order
            cur.pos += nbytes
            return values
        if item_type == T_STRING:
            return self._read_string_array(cur, key, count)
        if item_type == T_ARRAY:
            raise ModelFormatError(f"{key!r}: nested array at byte offset {item_type_offset} is not allowed")
        raise ModelFormatError(f"{key!r}: unknown array item type {item_type} at byte offset {item_type_offset}")

    def _read_string_array(self, cur: _Cursor, key: str, count: int) -> List[str]:
        # Each item costs at least its 8-byte length: reject impossible counts up front.
        cur.need(count * 8, f"string array {key!r} ({count} items)")
        # Vocabularies have 10^5 items, so the walk has no per-item checks: a
        # bad length either makes the next read fail (struct.error), leaves the
        # end past the file, or exceeds the cap; then the checked walk finds
        # the item and says where it is.
        buf, size = self._mmap, self.file_size
        unpack = _U64.unpack_from
        pos = cur.pos
        items = []
        append = items.append
        try:
            for _ in range(count):
                length, = unpack(buf, pos)
                start = pos + 8
                pos = start + length
                append(buf[start:pos])
        except (struct.error, OverflowError):  # read past the end, or a position past 2**63
            pos = size + 1
        # When all items together fit under the cap, no single one can exceed it.
        text_bytes = pos - cur.pos - 8 * count
        if pos > size or (text_bytes > MAX_STRING_BYTES and max(map(len, items)) > MAX_STRING_BYTES):
            self._locate_bad_string_item(cur.pos, key, count)
        try:
            strings = list(map(bytes.decode, items))  # UTF-8, strict; map skips a Python-level loop
        except UnicodeDecodeError:
            strings = self._locate_bad_utf8_item(cur.pos, key, items)
        cur.pos = pos
        return strings

    def _locate_bad_string_item(self, pos: int, key: str, count: int) -> None:
        """The checked walk: raises for the first item whose length is wrong."""
        buf, size = self._mmap, self.file_size
        for i in range(count):
            if pos + 8 > size:
                raise ModelFormatError(
                    f"truncated file: {key!r} item {i} length at byte offset {pos} needs 8 bytes, "
                    f"file has {size - pos} left"
                )
            length, = _U64.unpack_from(buf, pos)
            if length > MAX_STRING_BYTES:
                raise ModelFormatError(
                    f"{key!r} item {i} at byte offset {pos}: string length {length} exceeds the cap of "
                    f"{MAX_STRING_BYTES}"
                )
            if pos + 8 + length > size:
                raise ModelFormatError(
                    f"{key!r} item {i} at byte offset {pos}: string length {length} runs past the end "
                    f"of the file ({size} bytes)"
                )
            pos += 8 + length
        raise AssertionError("fast string walk failed but the checked walk did not")

    def _locate_bad_utf8_item(self, pos: int, key: str, items: list) -> List[str]:
        for i, raw in enumerate(items):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ModelFormatError(
                    f"{key!r} item {i} at byte offset {pos}: not valid UTF-8 ({exc.reason})"
                ) from None
            pos += 8 + len(raw)
        raise AssertionError("utf-8 decode failed but no item fails alone")

    # -- access ------------------------------------------------------------

    def tensor_data(self, name: str) -> np.ndarray:
        """The raw bytes of a tensor as a read-only uint8 view of the mapped file (zero-copy)."""
        info = self._info(name)
        return self.data[info.offset:info.offset + info.nbytes]

    def tensor_array(self, name: str) -> np.ndarray:
        """F32/F16/F64 and integer tensors as a read-only typed view in numpy's order (shape reversed)."""
        info = self._info(name)
        dtype = _PLAIN_DTYPES.get(info.type_name)
        if dtype is None:
            raise ModelFormatError(
                f"tensor {name!r} is {info.type_name}, not a plain numeric type; use tensor_data() for its blocks"
            )
        return self.tensor_data(name).view(np.dtype(dtype).newbyteorder("<")).reshape(tuple(reversed(info.shape)))

    def _info(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(f"{self.path} has no tensor {name!r}")
        if self.data is None:
            raise ValueError(f"{self.path} is closed")
        return info

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
        return (f"GGUFFile({self.path!r}, version={getattr(self, 'version', None)}, "
                f"{len(getattr(self, 'metadata', ()))} metadata keys, {len(getattr(self, 'tensors', ()))} tensors)")


def open(path: Union[str, os.PathLike]) -> GGUFFile:  # noqa: A001 - mirrors builtins.open on purpose
    """Open and validate a GGUF file; raises ModelFormatError on anything malformed."""
    return GGUFFile(path)
