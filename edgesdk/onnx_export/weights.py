"""GGUF weight blocks as com.microsoft.MatMulNBits operands, without changing a weight value.

MatMulNBits (ONNX Runtime contrib op) holds B as (N, k_blocks, blob) uint8 codes packed
low-first along K, one scale per (row, block), and dequantizes w = (code - zero_point) * scale.
Each GGUF type maps onto that exactly:

  Q4_0  32 codes 0..15, w = d (q - 8)          -> 4 bit, block 32, zero point 8
  Q4_1  w = d q + m                            -> 4 bit, block 32, zero point 0, min m
  Q4_K  8 sub-blocks of 32, w = (d sc) q - (dmin mn)
                                               -> 4 bit, block 32, zero point 0, min -(dmin mn)
  Q5_0  5-bit codes, w = d (q - 16)            -> 8 bit, block 32, zero point 16
  Q8_0  int8 codes, w = d q                    -> 8 bit, block 32, code q + 128, zero point 128
  Q6_K  16 sub-blocks of 16, w = (d sc) (q - 32)
                                               -> 8 bit, block 16, zero point 32

A min per block has no place in MatMulNBits but a float zero point, which the CPU
provider runs far slower; the graph adds it instead as a second, small product: the
input's block sums times the block minimums (edgesdk.onnx_export.graph). GGUF stores a
block's 32 4-bit codes as byte j = (code j, code j + 16); MatMulNBits wants byte j =
(code 2j, code 2j + 1), so 4-bit codes are re-paired, never re-quantized.

Scales are the products the GGUF dequantizer forms in float32 (d * sc for the K types),
so the dequantized weight equals ours to the bit where our dequantizer rounds the same
product, and within one rounding of it otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import UnsupportedModelError

# GGUF type -> (bits, block size, zero point) of the MatMulNBits form.
NBITS_FORMS = {"Q4_0": (4, 32, 8), "Q4_1": (4, 32, 0), "Q4_K": (4, 32, 0),
               "Q5_0": (8, 32, 16), "Q8_0": (8, 32, 128), "Q6_K": (8, 16, 32)}
FLOAT_TYPES = ("F32", "F16")
MAPPED_TYPES = tuple(NBITS_FORMS) + FLOAT_TYPES


@dataclass(frozen=True)
class NBitsMatrix:
    """One weight matrix of n_rows outputs by n_cols inputs in MatMulNBits form."""
    n_rows: int              # N
    n_cols: int              # K
    bits: int
    block_size: int
    zero_point: int          # the same for every block of the tensor
    codes: np.ndarray        # uint8 (N, k_blocks, block_size * bits / 8)
    scales: np.ndarray       # float32 (N, k_blocks)
    mins: Optional[np.ndarray]  # float32 (N, k_blocks) added per block, or None

    @property
    def k_blocks(self) -> int:
        return self.n_cols // self.block_size

    def zero_points(self) -> np.ndarray:
        """MatMulNBits' zero_points input: uint8, 4-bit values packed two to a byte per row."""
        if self.bits == 8:
            return np.full(self.n_rows * self.k_blocks, self.zero_point, dtype=np.uint8)
        per_row = (self.k_blocks + 1) // 2
        return np.full(self.n_rows * per_row, self.zero_point | (self.zero_point << 4), dtype=np.uint8)

    def unpacked_codes(self) -> np.ndarray:
        """The codes as uint8 (N, K), in K order."""
        if self.bits == 8:
            return self.codes.reshape(self.n_rows, self.n_cols)
        low, high = self.codes & 0x0F, self.codes >> 4
        return np.stack([low, high], axis=-1).reshape(self.n_rows, self.n_cols)

    def dequantize(self) -> np.ndarray:
        """float32 (N, K) as MatMulNBits (and the min product) defines the weight."""
        q = self.unpacked_codes().reshape(self.n_rows, self.k_blocks, self.block_size).astype(np.float32)
        w = (q - np.float32(self.zero_point)) * self.scales[:, :, None]
        if self.mins is not None:
            w = w + self.mins[:, :, None]
        return w.reshape(self.n_rows, self.n_cols)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte `at` of every block, as float32 (N, k_blocks)."""
    return np.ascontiguousarray(blocks[..., at:at + 2]).view(np.float16)[..., 0].astype(np.float32)


def _pack4(q: np.ndarray) -> np.ndarray:
    """uint8 codes (..., 2m) -> bytes (..., m) holding codes 2j (low nibble) and 2j + 1 (high)."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def _split_nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF's 16 bytes of 32 codes (low nibbles first, then high) -> (..., 32) codes in order."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _k_scales_mins(scales12: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    """Q4_K's 12 bytes of eight 6-bit scales and eight 6-bit mins -> two (..., 8) uint8 arrays."""
    s = scales12.astype(np.uint8)
    sc = np.empty(s.shape[:-1] + (8,), np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4] = s[..., 0:4] & 63
    mn[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc, mn


def _q6_k_codes(blocks: np.ndarray) -> np.ndarray:
    """Q6_K's ql (128 bytes), qh (64) -> (..., 256) codes 0..63 in order."""
    ql, qh = blocks[..., 0:128], blocks[..., 128:192]
    out = []
    for half in range(2):           # each half of the block: 128 codes from 64 ql and 32 qh bytes
        l = ql[..., 64 * half:64 * half + 64]
        h = qh[..., 32 * half:32 * half + 32]
        out += [(l[..., :32] & 0x0F) | ((h & 3) << 4), (l[..., 32:] & 0x0F) | (((h >> 2) & 3) << 4),
                (l[..., :32] >> 4) | (((h >> 4) & 3) << 4), (l[..., 32:] >> 4) | (((h >> 6) & 3) << 4)]
    return np.concatenate(out, axis=-1)


def map_matrix(type_name: str, raw: np.ndarray, n_rows: int, n_cols: int, name: str = "tensor") -> NBitsMatrix:
    """A GGUF matrix (raw bytes of n_rows rows of n_cols values) in MatMulNBits form."""
    if type_name not in NBITS_FORMS:
        raise UnsupportedModelError(f"{name}: {type_name} has no exact MatMulNBits form "
                                    f"(exported types: {', '.join(MAPPED_TYPES)})")
    bits, block, zp = NBITS_FORMS[type_name]
    from ..gguf import GGML_TYPES_BY_NAME
    gt = GGML_TYPES_BY_NAME[type_name]
    if n_cols % gt.block_elems or raw.size != n_rows * n_cols // gt.block_elems * gt.block_bytes:
        raise UnsupportedModelError(f"{name}: {raw.size} bytes are not {n_rows} rows of {n_cols} {type_name} values")
    b = raw.reshape(n_rows, n_cols // gt.block_elems, gt.block_bytes)
    mins = None
    if type_name in ("Q4_0", "Q4_1"):
        scales = _f16(b, 0)
        q = _split_nibbles(b[..., 4 if type_name == "Q4_1" else 2:])
        if type_name == "Q4_1":
            mins = _f16(b, 2)
    elif type_name == "Q5_0":
        scales = _f16(b, 0)
        high = np.ascontiguousarray(b[..., 2:6]).view("<u4")[..., 0]
        bits_hi = ((high[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        q = _split_nibbles(b[..., 6:]) | (bits_hi << 4)
    elif type_name == "Q8_0":
        scales = _f16(b, 0)
        q = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    elif type_name == "Q4_K":
        d, dmin = _f16(b, 0), _f16(b, 2)
        sc, mn = _k_scales_mins(b[..., 4:16])
        scales = (d[..., None] * sc.astype(np.float32)).reshape(n_rows, -1)
        mins = -(dmin[..., None] * mn.astype(np.float32)).reshape(n_rows, -1)
        qs = b[..., 16:].reshape(n_rows, -1, 4, 32)    # 4 chunks of 64 codes: low nibbles, then high
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    else:  # Q6_K
        d = _f16(b, 208)
        sc = b[..., 192:208].view(np.int8).astype(np.float32)
        scales = (d[..., None] * sc).reshape(n_rows, -1)
        q = _q6_k_codes(b)
    q = q.reshape(n_rows, n_cols // block, block).astype(np.uint8)
    codes = _pack4(q) if bits == 4 else q
    return NBitsMatrix(n_rows=n_rows, n_cols=n_cols, bits=bits, block_size=block, zero_point=zp,
                       codes=np.ascontiguousarray(codes), scales=np.ascontiguousarray(scales, dtype=np.float32),
                       mins=None if mins is None else np.ascontiguousarray(mins, dtype=np.float32))





@dataclass(frozen=True)
class StackedMatrix:
    """Matrices of one input stacked by rows into a single MatMulNBits (q, k, v; gate, up): one
    product instead of several. Rows keep their own zero points; a part without minimums gets zeros."""
    parts: "tuple[NBitsMatrix, ...]"

    @property
    def n_rows(self) -> int:
        return sum(p.n_rows for p in self.parts)

    @property
    def head(self) -> NBitsMatrix:
        return self.parts[0]

    def codes(self) -> np.ndarray:
        return np.concatenate([p.codes for p in self.parts])

    def scales(self) -> np.ndarray:
        return np.concatenate([p.scales for p in self.parts])

    def zero_points(self) -> np.ndarray:
        return np.concatenate([p.zero_points() for p in self.parts])

    def mins(self) -> Optional[np.ndarray]:
        if all(p.mins is None for p in self.parts):
            return None
        return np.concatenate([p.mins if p.mins is not None else np.zeros_like(p.scales) for p in self.parts])


def stackable(a: NBitsMatrix, b: NBitsMatrix) -> bool:
    """Whether two matrices of the same input can share one MatMulNBits."""
    return (a.n_cols, a.bits, a.block_size) == (b.n_cols, b.bits, b.block_size)

__all__ = ["NBitsMatrix", "NBITS_FORMS", "FLOAT_TYPES", "MAPPED_TYPES", "StackedMatrix", "map_matrix", "stackable"]
