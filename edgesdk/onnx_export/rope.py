"""RoPE cos/sin tables for the exported graph, computed as the native engine computes them.

The graph gathers rows of these tables by position instead of evaluating cos(pos * freq)
in float32, so the angles are the engine's float64 ones (ops_rope_angles in
native/src/ops.c: base^(-2i/n_rot), rope_freqs divisors, linear and YaRN scaling, the
attention factor on cos and sin) at every position up to the export's n_pos.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from ..shape import ModelShape


def _yarn_pair_for_turns(n_rot: int, n_ctx_orig: int, turns: float, base: float) -> float:
    # The rotary pair that completes `turns` full turns over the original context.
    return n_rot * math.log(n_ctx_orig / (turns * 2 * math.pi)) / (2 * math.log(base))


def rope_tables(shape: ModelShape, n_pos: int, sliding: bool,
                freq_factors: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each float32 (n_pos, n_rot / 2), for the global layers or the sliding ones."""
    half = shape.n_rot // 2
    # The engine holds these as float32 (ek_model_desc) and computes in double.
    base = float(np.float32(shape.rope_base_swa if sliding else shape.rope_base))
    freq_scale = float(np.float32(1.0 if sliding else shape.rope_freq_scale))
    mscale = float(np.float32(shape.rope_mscale_swa if sliding else shape.rope_mscale))
    i = np.arange(half, dtype=np.float64)
    inv_freq = np.power(base, -2.0 * i / shape.n_rot)
    scale = np.full(half, freq_scale)
    if shape.yarn_ext_factor != 0.0:
        # float32 bounds, as the engine keeps them (ops_rope_scaling_init).
        lo = np.float32(max(math.floor(_yarn_pair_for_turns(shape.n_rot, shape.yarn_n_ctx_orig,
                                                              shape.yarn_beta_fast, base)), 0.0))
        hi = np.float32(min(math.ceil(_yarn_pair_for_turns(shape.n_rot, shape.yarn_n_ctx_orig,
                                                             shape.yarn_beta_slow, base)), shape.n_rot - 1))
        span = float(hi - lo) if float(hi - lo) > float(np.float32(0.001)) else 0.001
        t = np.clip((i - float(lo)) / span, 0.0, 1.0)
        keep = (1.0 - t) * float(np.float32(shape.yarn_ext_factor))
        scale = freq_scale * (1.0 - keep) + keep
    theta = np.arange(n_pos, dtype=np.float64)[:, None] * inv_freq[None, :]
    if freq_factors is not None:
        theta = theta / freq_factors.astype(np.float64)[None, :]
    theta = theta * scale[None, :]
    return (np.cos(theta) * mscale).astype(np.float32), (np.sin(theta) * mscale).astype(np.float32)


__all__ = ["rope_tables"]
