"""Byte-level GGUF writing for tests: every field is written by hand so a test
can break exactly one of them and know the byte offset it broke.

Independent of edgesdk.gguf (which it tests) and of the gguf package (which
only writes valid files).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np

# GGUF value type ids (from the format's specification).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL = range(8)
STRING, ARRAY, UINT64, INT64, FLOAT64 = 8, 9, 10, 11, 12
# ggml tensor type ids used here.
F32, F16, Q4_0, Q8_0, Q4_K = 0, 1, 2, 8, 12


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(text) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return u64(len(raw)) + raw


def kv(key, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def kv_str_array(key: str, items: Sequence[str]) -> bytes:
    return kv(key, ARRAY, u32(STRING) + u64(len(items)) + b"".join(gstr(s) for s in items))


def tensor_info(name, dims: Sequence[int], type_id: int, offset: int) -> bytes:
    return gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(type_id) + u64(offset)


@dataclass
class Layout:
    """A file and where its parts start, for tests that name byte offsets."""
    data: bytes
    kv_offsets: List[int] = field(default_factory=list)
    info_offsets: List[int] = field(default_factory=list)
    data_offset: int = 0


def gguf_file(kvs: Sequence[bytes], infos: Sequence[bytes], tensor_bytes: bytes, *, version: int = 3,
              n_tensors: int = None, n_kv: int = None, alignment: int = 32, magic: bytes = b"GGUF") -> Layout:
    """Header + metadata + tensor index, zero padding to `alignment`, then tensor_bytes."""
    out = bytearray(magic + u32(version))
    out += u64(len(infos) if n_tensors is None else n_tensors)
    out += u64(len(kvs) if n_kv is None else n_kv)
    layout = Layout(b"")
    for item in kvs:
        layout.kv_offsets.append(len(out))
        out += item
    for item in infos:
        layout.info_offsets.append(len(out))
        out += item
    out += b"\0" * (-len(out) % alignment)
    layout.data_offset = len(out)
    out += tensor_bytes
    layout.data = bytes(out)
    return layout


def small_valid(rng: np.random.Generator = None) -> Layout:
    """A small valid v3 file: every scalar value type, string and numeric arrays,
    and three tensors (F32 with a 3-element tail, Q8_0, F16) packed in order."""
    rng = rng or np.random.default_rng(7)
    kvs = [
        kv("general.architecture", STRING, gstr("llama")),
        kv("t.u8", UINT8, struct.pack("<B", 200)), kv("t.i8", INT8, struct.pack("<b", -5)),
        kv("t.u16", UINT16, struct.pack("<H", 60000)), kv("t.i16", INT16, struct.pack("<h", -3000)),
        kv("t.u32", UINT32, u32(4_000_000_000)), kv("t.i32", INT32, struct.pack("<i", -7)),
        kv("t.f32", FLOAT32, struct.pack("<f", 1.5)), kv("t.bool", BOOL, b"\x01"),
        kv("t.u64", UINT64, u64(2**40 + 3)), kv("t.i64", INT64, struct.pack("<q", -2**40)),
        kv("t.f64", FLOAT64, struct.pack("<d", -0.25)),
        kv_str_array("tokenizer.ggml.tokens", ["a", "bc", "\u00e9", "<s>"]),
        kv("tokenizer.ggml.scores", ARRAY, u32(FLOAT32) + u64(4) + struct.pack("<4f", 0.5, -1.0, 2.0, 3.25)),
        kv("general.alignment", UINT32, u32(32)),
    ]
    f32_data = rng.standard_normal(3 * 2).astype("<f4").tobytes()            # shape (3, 2): 24 bytes
    q8_data = rng.integers(1, 255, size=2 * 34, dtype=np.uint8).tobytes()    # shape (32, 2): 68 bytes
    f16_data = rng.standard_normal(5).astype("<f2").tobytes()                # shape (5,): 10 bytes
    infos = [
        tensor_info("a.weight", [3, 2], F32, 0),
        tensor_info("b.weight", [32, 2], Q8_0, 32),
        tensor_info("c.norm", [5], F16, 128),
    ]
    tensor_bytes = f32_data + b"\0" * 8 + q8_data + b"\0" * 28 + f16_data
    return gguf_file(kvs, infos, tensor_bytes)
