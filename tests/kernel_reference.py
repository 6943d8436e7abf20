"""Independent numpy references for the kernel tests: GGUF block decoding written
from the format definitions, random blocks, and the activation-quantization
error bound. Nothing here calls edgesdk."""
from __future__ import annotations

import numpy as np

# (block_elems, block_bytes) per type, from the GGUF format definitions.
BLOCKS = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q8_0": (32, 34),
    "Q4_K": (256, 144), "Q6_K": (256, 210),
}
# Byte offsets of the f16 scale fields inside each block (set to sane values in random data).
F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q8_0": (0,), "Q4_K": (0, 2), "Q6_K": (208,)}


def random_blocks(type_name: str, n_values: int, rng: np.random.Generator, scale: float = 0.05) -> np.ndarray:
    """Random raw bytes of `type_name` holding n_values, with finite, non-zero f16 scales."""
    elems, nbytes = BLOCKS[type_name]
    n_blocks = n_values // elems
    if type_name == "F32":
        return rng.normal(size=n_values).astype(np.float32).view(np.uint8)
    if type_name == "F16":
        return rng.normal(size=n_values).astype(np.float16).view(np.uint8)
    if type_name == "BF16":
        return (rng.normal(size=n_values).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    for offset in F16_FIELDS[type_name]:
        sign = rng.choice([-1.0, 1.0], size=n_blocks) if type_name in ("Q4_0", "Q5_0", "Q8_0") else 1.0
        values = (sign * rng.uniform(0.2, 1.0, size=n_blocks) * scale).astype(np.float16)
        raw[:, offset:offset + 2] = values.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def _f16(raw: np.ndarray, offset: int) -> np.ndarray:
    return raw[:, offset:offset + 2].copy().view(np.float16).astype(np.float64).reshape(-1)


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """16 bytes per block -> 32 values: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int64)


def dequantize(type_name: str, raw: np.ndarray) -> np.ndarray:
    """float64 values of raw GGUF data of `type_name`."""
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if type_name == "F32":
        return raw.view(np.float32).astype(np.float64)
    if type_name == "F16":
        return raw.view(np.float16).astype(np.float64)
    if type_name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    elems, nbytes = BLOCKS[type_name]
    b = raw.reshape(-1, nbytes)
    if type_name == "Q4_0":
        return (_f16(b, 0)[:, None] * (_nibbles32(b[:, 2:18]) - 8)).reshape(-1)
    if type_name == "Q4_1":
        return (_f16(b, 0)[:, None] * _nibbles32(b[:, 4:20]) + _f16(b, 2)[:, None]).reshape(-1)
    if type_name == "Q5_0":
        qh = b[:, 2:6].copy().view("<u4").reshape(-1, 1).astype(np.int64)
        high = (qh >> np.arange(32)) & 1
        return (_f16(b, 0)[:, None] * ((_nibbles32(b[:, 6:22]) | (high << 4)) - 16)).reshape(-1)
    if type_name == "Q8_0":
        return (_f16(b, 0)[:, None] * b[:, 2:34].view(np.int8).astype(np.int64)).reshape(-1)
    if type_name == "Q4_K":
        d, dmin = _f16(b, 0), _f16(b, 2)
        s = b[:, 4:16].astype(np.int64)
        # 6-bit (scale, min) for sub-blocks 0..7: 0..3 in the low 6 bits of bytes 0..3 / 4..7,
        # 4..7 split between the low/high nibbles of bytes 8..11 and the top 2 bits of bytes 0..7.
        sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
        mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
        qs = b[:, 16:144].reshape(-1, 4, 32).astype(np.int64)
        q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32)  # sub-block 2c: low, 2c+1: high
        return (d[:, None, None] * sc[:, :, None] * q - dmin[:, None, None] * mn[:, :, None]).reshape(-1)
    if type_name == "Q6_K":
        ql = b[:, 0:128].reshape(-1, 2, 2, 32).astype(np.int64)   # (block, half, 32-byte row, l)
        qh = b[:, 128:192].reshape(-1, 2, 32).astype(np.int64)    # (block, half, l)
        scales = b[:, 192:208].view(np.int8).astype(np.int64).reshape(-1, 16)
        d = _f16(b, 208)
        low = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        high = np.stack([(qh >> (2 * s)) & 3 for s in range(4)], axis=2)
        q = (low | (high << 4)) - 32                               # (block, half, s, l): element 128h + 32s + l
        q = q.reshape(-1, 16, 16)                                  # sub-blocks of 16 in element order
        return (d[:, None, None] * scales[:, :, None] * q).reshape(-1)
    raise ValueError(type_name)


def activation_step(x: np.ndarray, block: int) -> np.ndarray:
    """Per-element step of 8-bit symmetric activation quantization: block max|x| / 127."""
    xb = np.abs(x.astype(np.float64)).reshape(x.shape[0], -1, block)
    return np.repeat(xb.max(axis=2) / 127.0, block, axis=1)


ACTIVATION_BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q8_0": 32, "Q4_K": 256, "Q6_K": 256}


def matmul_error_bound(type_name: str, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Worst-case |y - x @ w.T| from rounding x to 8 bits: each x moves by at most half a step,
    so |error| <= |w| @ (step / 2); plus float32 accumulation, far below it. F32/F16/BF16 get a
    float32 accumulation bound instead."""
    if type_name not in ACTIVATION_BLOCK:
        return 1e-5 * (np.abs(x.astype(np.float64)) @ np.abs(w).T) + 1e-6
    half_step = activation_step(x, ACTIVATION_BLOCK[type_name]) / 2
    return 1.001 * (half_step @ np.abs(w).T) + 1e-5 * (np.abs(x.astype(np.float64)) @ np.abs(w).T) + 1e-6
