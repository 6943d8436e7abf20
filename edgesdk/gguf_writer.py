"""Writing GGUF files, atomically.

The layout is the one edgesdk.gguf reads: header, metadata, tensor index, then
each tensor's data at an offset that is a multiple of the alignment, in index
order. Shapes and types are known before any data, so the header and index are
written first and tensor data is streamed after them, one piece at a time:
a converter never holds more than the tensor it is working on.

Everything goes to a temporary file beside the destination, which replaces the
destination only once every byte is written and flushed to disk. A failure
(a full disk, an error in the caller, Ctrl-C) removes the temporary file, so a
half-written model never sits under the final name.

This module imports nothing of edgesdk but gguf.py's constants and the errors.
"""
from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InvalidArgumentError, OutputWriteError
from .gguf import (DEFAULT_ALIGNMENT, GGML_TYPES, GGUF_MAGIC, MAX_DIMS, MAX_TENSOR_NAME_BYTES, T_ARRAY, T_BOOL,
                   T_FLOAT32, T_INT32, T_STRING, T_UINT32, _SCALAR_FORMATS, GGUFFile)

GGUF_VERSION = 3


@dataclass(frozen=True)
class MetadataEntry:
    """One metadata pair: `value_type` is a GGUF value type id (gguf.T_*); for arrays
    `item_type` is the items' type id."""
    key: str
    value_type: int
    value: Any
    item_type: Optional[int] = None


@dataclass(frozen=True)
class TensorEntry:
    """A tensor of the index: `shape` in GGUF order (shape[0] is the contiguous dimension)."""
    name: str
    shape: Tuple[int, ...]
    type_id: int

    @property
    def nbytes(self) -> int:
        t = GGML_TYPES[self.type_id]
        n = int(np.prod(self.shape, dtype=np.int64))
        return n // t.block_elems * t.block_bytes


def entry(key: str, value: Any) -> MetadataEntry:
    """A metadata entry with the type GGUF writers conventionally give a Python value:
    str -> string, bool -> bool, int -> uint32 (int32 when negative), float -> float32,
    a list of str -> string array, a list or array of numbers -> int32/float32 array."""
    if isinstance(value, str):
        return MetadataEntry(key, T_STRING, value)
    if isinstance(value, (bool, np.bool_)):
        return MetadataEntry(key, T_BOOL, bool(value))
    if isinstance(value, (int, np.integer)):
        return MetadataEntry(key, T_UINT32 if value >= 0 else T_INT32, int(value))
    if isinstance(value, (float, np.floating)):
        return MetadataEntry(key, T_FLOAT32, float(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value) if not isinstance(value, np.ndarray) else value
        if len(items) and all(isinstance(v, str) for v in items):
            return MetadataEntry(key, T_ARRAY, list(items), T_STRING)
        arr = np.asarray(items)
        if arr.dtype == np.bool_:
            return MetadataEntry(key, T_ARRAY, arr, T_BOOL)
        if np.issubdtype(arr.dtype, np.integer) or arr.size == 0:
            return MetadataEntry(key, T_ARRAY, arr.astype(np.int32), T_INT32)
        return MetadataEntry(key, T_ARRAY, arr.astype(np.float32), T_FLOAT32)
    raise InvalidArgumentError(f"metadata {key!r}: cannot write a value of type {type(value).__name__}")


def metadata_of(source: GGUFFile, skip: Iterable[str] = ()) -> List[MetadataEntry]:
    """The metadata of an opened file, with its value types, in file order."""
    skipped = set(skip)
    return [MetadataEntry(key, source.metadata_types[key], value, source.array_types.get(key))
            for key, value in source.metadata.items() if key not in skipped]


def _string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _scalar(vtype: int, value: Any) -> bytes:
    fmt = _SCALAR_FORMATS[vtype][0]
    return struct.pack(fmt, int(value) if vtype == T_BOOL else value)


def _encode_value(e: MetadataEntry) -> bytes:
    if e.value_type == T_STRING:
        return _string(e.value)
    if e.value_type == T_ARRAY:
        if e.item_type == T_STRING:
            return struct.pack("<IQ", T_STRING, len(e.value)) + b"".join(_string(v) for v in e.value)
        if e.item_type not in _SCALAR_FORMATS:
            raise InvalidArgumentError(f"metadata {e.key!r}: array item type {e.item_type} cannot be written")
        dtype = np.dtype(_SCALAR_FORMATS[e.item_type][1])
        items = np.asarray(e.value).astype(dtype)
        return struct.pack("<IQ", e.item_type, items.size) + items.tobytes()
    if e.value_type not in _SCALAR_FORMATS:
        raise InvalidArgumentError(f"metadata {e.key!r}: value type {e.value_type} cannot be written")
    return _scalar(e.value_type, e.value)


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def encode_header(metadata: Sequence[MetadataEntry], tensors: Sequence[TensorEntry],
                  alignment: int = DEFAULT_ALIGNMENT) -> Tuple[bytes, List[int]]:
    """The bytes before the tensor data (padded to the alignment) and each tensor's offset
    relative to the data section."""
    keys = [e.key for e in metadata]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise InvalidArgumentError(f"metadata key {dup!r} is given twice")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InvalidArgumentError(f"tensor {dup!r} is given twice")
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(metadata))]
    for e in metadata:
        parts += [_string(e.key), struct.pack("<I", e.value_type), _encode_value(e)]
    offsets, offset = [], 0
    for t in tensors:
        if len(t.name.encode("utf-8")) > MAX_TENSOR_NAME_BYTES:
            raise InvalidArgumentError(f"tensor name {t.name!r} is longer than {MAX_TENSOR_NAME_BYTES} bytes")
        if not 1 <= len(t.shape) <= MAX_DIMS or any(d <= 0 for d in t.shape):
            raise InvalidArgumentError(f"tensor {t.name!r}: shape {t.shape} is not 1 to {MAX_DIMS} positive sizes")
        block = GGML_TYPES[t.type_id].block_elems
        if t.shape[0] % block:
            raise InvalidArgumentError(f"tensor {t.name!r}: {t.shape[0]} values per row do not divide into "
                                       f"{GGML_TYPES[t.type_id].name} blocks of {block}")
        parts += [_string(t.name), struct.pack("<I", len(t.shape)), struct.pack(f"<{len(t.shape)}Q", *t.shape),
                  struct.pack("<IQ", t.type_id, offset)]
        offsets.append(offset)
        offset = _align(offset + t.nbytes, alignment)
    head = b"".join(parts)
    return head + b"\0" * (_align(len(head), alignment) - len(head)), offsets


class GGUFWriter:
    """Streams one GGUF file to `path` through a temporary file beside it.

    Give the metadata and the tensor index up front; then call `write(name, data)`
    for each tensor in index order, in as many pieces as convenient, and
    `commit()` (or leave the `with` block normally). Leaving it with an exception,
    or calling `abort()`, removes the temporary file.
    """

    def __init__(self, path: Union[str, os.PathLike], metadata: Sequence[MetadataEntry],
                 tensors: Sequence[TensorEntry], alignment: int = DEFAULT_ALIGNMENT):
        self.path = os.fspath(path)
        self.tensors = list(tensors)
        self.alignment = alignment
        all_metadata = [e for e in metadata if e.key != "general.alignment"]
        if alignment != DEFAULT_ALIGNMENT:
            all_metadata.append(MetadataEntry("general.alignment", T_UINT32, alignment))
        header, self._offsets = encode_header(all_metadata, self.tensors, alignment)
        self.total_bytes = len(header) + (self._offsets[-1] + self.tensors[-1].nbytes if self.tensors else 0)
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, self.temp_path = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".",
                                                  suffix=".partial", dir=directory)
        except OSError as exc:
            raise OutputWriteError(f"cannot create a file in {directory}: {exc.strerror}") from None
        self._file = os.fdopen(fd, "wb")
        self._index = 0        # tensor being written
        self._written = 0      # bytes of it written so far
        self._data_start = len(header)
        self._raw_write(header)

    # -- writing -------------------------------------------------------------

    def _raw_write(self, data) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            try:
                position = self._file.tell()
            except (OSError, ValueError):
                position = "?"
            self.abort()
            raise OutputWriteError(f"writing {self.path} failed after {position} bytes: {exc.strerror}; "
                                   f"the partial file was removed") from None
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, data) -> None:
        """Append the next bytes of tensor `name` (bytes-like or a numpy array)."""
        if self._file is None:
            raise InvalidArgumentError(f"{self.path}: the writer is closed")
        if self._index >= len(self.tensors):
            raise InvalidArgumentError(f"{self.path}: every tensor is written; {name!r} is not in the index")
        expected = self.tensors[self._index]
        if name != expected.name:
            raise InvalidArgumentError(f"{self.path}: tensor {expected.name!r} comes next in the index, not {name!r}")
        raw = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        if self._written + raw.nbytes > expected.nbytes:
            raise InvalidArgumentError(f"tensor {name!r} is {expected.nbytes} bytes; got {self._written + raw.nbytes}")
        self._raw_write(raw)
        self._written += raw.nbytes
        if self._written == expected.nbytes:
            self._index += 1
            self._written = 0
            if self._index < len(self.tensors):
                pad = self._data_start + self._offsets[self._index] - self._file.tell()
                self._raw_write(b"\0" * pad)

    @property
    def bytes_written(self) -> int:
        return self._file.tell() if self._file is not None else 0

    def commit(self) -> None:
        """Flush to disk and move the finished file to its name."""
        if self._file is None:
            raise InvalidArgumentError(f"{self.path}: the writer is closed")
        if self._index < len(self.tensors):
            missing = self.tensors[self._index]
            self.abort()
            raise InvalidArgumentError(f"{self.path}: tensor {missing.name!r} was not written "
                                       f"({len(self.tensors) - self._index} of {len(self.tensors)} missing)")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self.temp_path, self.path)
        except OSError as exc:
            self.abort()
            raise OutputWriteError(f"finishing {self.path} failed: {exc.strerror}; the partial file was removed") \
                from None

    def abort(self) -> None:
        """Close and remove the temporary file (nothing is left under either name)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # a close that fails to flush a full disk: the file goes anyway
            self._file = None
        try:
            os.unlink(self.temp_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "GGUFWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_gguf(path: Union[str, os.PathLike], metadata: Sequence[MetadataEntry],
               tensors: Dict[str, Tuple[int, Tuple[int, ...], Any]], alignment: int = DEFAULT_ALIGNMENT) -> None:
    """Write a whole file at once: tensors maps name -> (type id, GGUF shape, raw bytes)."""
    index = [TensorEntry(name, tuple(shape), type_id) for name, (type_id, shape, _) in tensors.items()]
    with GGUFWriter(path, metadata, index, alignment) as writer:
        for name, (_, _, data) in tensors.items():
            writer.write(name, data)
