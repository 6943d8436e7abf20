"""The exact math of a quantized model ("the truth"): a float64 forward pass.

Every weight is dequantized exactly from the GGUF through our dequantizers
(edgesdk.kernels.dequantize, tested against the gguf package), and everything
after that is float64 with no activation quantization and an exact softmax. An
engine is faithful when its logits stray from these no further than llama.cpp's do
(tests/fidelity.py measures it).

The same forward serves the tiny random-weight models of tests/tiny_gguf.py
(reference_logits there maps a TinyConfig to a ForwardConfig) and the real files
(config_from_shape maps the ModelShape edgesdk reads).

Public API used across the tests: truth_logits(gguf_path, ids), truth_hidden(gguf_path, ids)
and TruthRows (the output head applied a few rows at a time, for perplexity over a big
vocabulary). The final hidden states of a real file are cached under $EDGESDK_HOME/truth,
keyed by the model's sha256, the ids and the code the truth runs (this file, the shape
reader, the dequantizers), so that editing any of them invalidates every cached result.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgesdk import gguf as ek_gguf
from edgesdk import kernels
from edgesdk.registry import home
from edgesdk.shape import ModelShape, read_shape

# Queries handled at once in attention: bounds the score block to n_head x QUERY_CHUNK x n
# float64 (9 x 256 x 8192 x 8 B = 151 MiB at SmolLM2's longest context).
QUERY_CHUNK = 256

RopeTable = Tuple[np.ndarray, float]  # per-pair inverse frequencies (d/2,), factor on cos and sin


@dataclass(frozen=True, eq=False)
class ForwardConfig:
    """Everything the forward pass depends on beyond the weights."""
    arch: str                  # llama, qwen2 or gemma3
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    eps: float
    attn_scale: float          # factor on q.k
    embd_scale: float          # factor on token embeddings
    rope_neox: bool            # pairs (i, i + d/2), else (2i, 2i + 1)
    rope_global: RopeTable     # the RoPE of global layers (every layer of an architecture without a window)
    rope_local: RopeTable      # the RoPE of sliding-window layers
    swa_pattern: int = 0       # every swa_pattern-th layer is global, the others slide; 0 = none
    n_swa: int = 0             # window: a key is seen from positions pos .. pos + n_swa - 1

    def sliding(self, il: int) -> bool:
        return self.swa_pattern > 0 and (il + 1) % self.swa_pattern != 0


def plain_rope(d: int, base: float, freq_scale: float = 1.0, mscale: float = 1.0) -> RopeTable:
    return base ** (-2.0 * np.arange(d // 2) / d) * freq_scale, mscale


def yarn_frequencies(d: int, base: float, orig_ctx: int, factor: float, ext_factor: float = 1.0,
                     attn_factor: Optional[float] = None, beta_fast: float = 32.0, beta_slow: float = 1.0
                     ) -> RopeTable:
    """YaRN (Peng et al. 2023) as Hugging Face transformers defines it (_compute_yarn_parameters,
    with llama.cpp's ext_factor weighting the extrapolated share): per-pair inverse
    frequencies (d/2,) and the factor on cos and sin (attn_factor, else 0.1 ln(factor) + 1)."""
    def pair_for_turns(turns):  # pair whose wavelength 2 pi base^(2i/d) fits `turns` times in orig_ctx
        return d * math.log(orig_ctx / (turns * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(pair_for_turns(beta_fast)), 0)
    high = min(math.ceil(pair_for_turns(beta_slow)), d - 1)
    ramp = np.clip((np.arange(d // 2) - low) / max(high - low, 0.001), 0.0, 1.0)  # 0: keep, 1: interpolate
    keep = (1.0 - ramp) * ext_factor
    extrapolated = base ** (-2.0 * np.arange(d // 2) / d)
    inv_freq = extrapolated / factor * (1.0 - keep) + extrapolated * keep
    if attn_factor is not None:
        mscale = attn_factor
    else:
        mscale = 0.1 * math.log(factor) + 1.0 if factor > 1 and ext_factor != 0 else 1.0
    return inv_freq, mscale


def llama3_frequencies(d: int, base: float, factor: float, low_freq_factor: float, high_freq_factor: float,
                       orig_ctx: int) -> RopeTable:
    """Llama 3.1's RoPE scaling as Hugging Face transformers defines it (_compute_llama3_parameters):
    pairs whose wavelength exceeds orig_ctx / low_freq_factor turn `factor` times slower, pairs
    under orig_ctx / high_freq_factor keep their speed, and those between blend the two, weighted
    by orig_ctx / wavelength; cos and sin are not scaled."""
    inv_freq = base ** (-2.0 * np.arange(d // 2) / d)
    wavelength = 2 * math.pi / inv_freq
    low_wavelength, high_wavelength = orig_ctx / low_freq_factor, orig_ctx / high_freq_factor
    scaled = np.where(wavelength > low_wavelength, inv_freq / factor, inv_freq)
    smooth = (orig_ctx / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= high_wavelength) & (wavelength <= low_wavelength)
    return np.where(medium, blended, scaled), 1.0


def config_from_shape(shape: ModelShape) -> ForwardConfig:
    """The forward's settings for a real file; ValueError for what this reference does not model."""
    if shape.architecture not in ("llama", "qwen2", "gemma3"):
        raise ValueError(f"no float64 reference for architecture {shape.architecture!r}")
    if shape.per_layer:
        raise ValueError(f"per-layer hyperparameters {sorted(shape.per_layer)} are not modelled")
    if shape.n_rot != shape.head_dim_k or shape.head_dim_v != shape.head_dim_k:
        raise ValueError(f"partial RoPE or value width != key width (n_rot {shape.n_rot}, "
                         f"k {shape.head_dim_k}, v {shape.head_dim_v}) is not modelled")
    if shape.norm_eps is None:
        raise ValueError("the file states no RMS norm epsilon")
    d = shape.head_dim_k
    if shape.rope_scaling == "yarn":
        if shape.yarn_log_multiplier:
            raise ValueError("YaRN's log multiplier is not modelled")
        rope_global = yarn_frequencies(d, shape.rope_base, shape.yarn_n_ctx_orig, 1.0 / shape.rope_freq_scale,
                                       shape.yarn_ext_factor, shape.rope_mscale, shape.yarn_beta_fast,
                                       shape.yarn_beta_slow)
    elif shape.rope_scaling in ("none", "linear"):
        rope_global = plain_rope(d, shape.rope_base, shape.rope_freq_scale, shape.rope_mscale)
    else:
        raise ValueError(f"RoPE scaling {shape.rope_scaling!r} is not modelled")
    return ForwardConfig(
        arch=shape.architecture, n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head,
        n_head_kv=shape.n_head_kv, head_dim=d, eps=shape.norm_eps, attn_scale=shape.attn_scale,
        embd_scale=shape.embd_scale, rope_neox=shape.rope_style == "neox", rope_global=rope_global,
        rope_local=plain_rope(d, shape.rope_base_swa, 1.0, shape.rope_mscale_swa),
        swa_pattern=shape.swa_pattern, n_swa=shape.sliding_window or 0)


# ------------------------------------------------------------------ forward

def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, positions: np.ndarray, table: RopeTable, neox: bool) -> np.ndarray:
    """x (n, n_heads, head_dim) at positions (n,), all dims rotated."""
    inv_freq, mscale = table
    d = x.shape[-1]
    theta = positions[:, None] * inv_freq[None, :]              # (n, d/2)
    c, s = (np.cos(theta) * mscale)[:, None, :], (np.sin(theta) * mscale)[:, None, :]
    i = np.arange(d // 2)
    a, b = (i, i + d // 2) if neox else (2 * i, 2 * i + 1)
    out = np.empty_like(x)
    out[..., a] = x[..., a] * c - x[..., b] * s
    out[..., b] = x[..., a] * s + x[..., b] * c
    return out


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, window: int) -> np.ndarray:
    """Causal softmax attention from position 0: q (n, H, d), k and v (n, Hkv, d) -> (n, H, d).
    window > 0: query i sees keys i - window + 1 .. i (llama.cpp's standard sliding window)."""
    n, n_head, d = q.shape
    n_kv = k.shape[1]
    group = n_head // n_kv
    # Contiguous (Hkv, rows, d) stacks, a kv head's queries one after another: each product is
    # then a plain 3-D matmul, which numpy runs as one BLAS call per head (broadcasting is not).
    qh = np.ascontiguousarray(q.reshape(n, n_kv, group, d).transpose(1, 0, 2, 3))  # (Hkv, n, group, d)
    kt = np.ascontiguousarray(k.transpose(1, 2, 0))                                # (Hkv, d, n)
    vh = np.ascontiguousarray(v.transpose(1, 0, 2))                                # (Hkv, n, d)
    out = np.empty((n_kv, n, group, d))
    keys = np.arange(n)
    for i0 in range(0, n, QUERY_CHUNK):
        i1 = min(n, i0 + QUERY_CHUNK)
        rows = np.arange(i0, i1)[:, None]
        seen = keys[None, :i1] <= rows
        if window > 0:
            seen &= keys[None, :i1] > rows - window
        scores = (qh[:, i0:i1].reshape(n_kv, -1, d) @ kt[:, :, :i1]) * scale
        scores = np.where(seen[None, :, None, :], scores.reshape(n_kv, i1 - i0, group, i1), -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out[:, i0:i1] = (p.reshape(n_kv, -1, i1) @ vh[:, :i1]).reshape(n_kv, i1 - i0, group, d)
    return out.transpose(1, 0, 2, 3).reshape(n, n_head, d)


def forward_hidden(cfg: ForwardConfig, w: Mapping[str, np.ndarray], ids: Sequence[int]) -> np.ndarray:
    """(len(ids), n_embd) float64: the final normalized hidden states of ids from position 0.
    w maps tensor names to float64 arrays in numpy order (GGUF shape reversed)."""
    gemma = cfg.arch == "gemma3"
    n, hd = len(ids), cfg.head_dim
    positions = np.arange(n, dtype=np.float64)
    x = w["token_embd.weight"][np.asarray(ids, dtype=np.int64)] * cfg.embd_scale
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        sliding = cfg.sliding(il)
        h = _rms(x, w[p + "attn_norm.weight"], cfg.eps)
        q, k, v = h @ w[p + "attn_q.weight"].T, h @ w[p + "attn_k.weight"].T, h @ w[p + "attn_v.weight"].T
        if cfg.arch == "qwen2":
            q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
        q = q.reshape(n, cfg.n_head, hd)
        k = k.reshape(n, cfg.n_head_kv, hd)
        v = v.reshape(n, cfg.n_head_kv, hd)
        if gemma:
            q = _rms(q, w[p + "attn_q_norm.weight"], cfg.eps)
            k = _rms(k, w[p + "attn_k_norm.weight"], cfg.eps)
        table = cfg.rope_local if sliding else cfg.rope_global
        q, k = _rope(q, positions, table, cfg.rope_neox), _rope(k, positions, table, cfg.rope_neox)
        att = _attention(q, k, v, cfg.attn_scale, cfg.n_swa if sliding else 0)
        o = att.reshape(n, -1) @ w[p + "attn_output.weight"].T
        if gemma:
            o = _rms(o, w[p + "post_attention_norm.weight"], cfg.eps)
        x = x + o
        h = _rms(x, w[p + "ffn_norm.weight"], cfg.eps)
        g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        if gemma:  # gelu with the tanh approximation, as Gemma-3 is defined (gelu_pytorch_tanh)
            act = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
        else:
            act = g / (1 + np.exp(-g))
        f = (act * u) @ w[p + "ffn_down.weight"].T
        if gemma:
            f = _rms(f, w[p + "post_ffw_norm.weight"], cfg.eps)
        x = x + f
    return _rms(x, w["output_norm.weight"], cfg.eps)


def output_head(w: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n_vocab, n_embd): the output matrix, or the embedding where the file ties them."""
    return w["output.weight"] if "output.weight" in w else w["token_embd.weight"]


def forward_logits(cfg: ForwardConfig, w: Mapping[str, np.ndarray], ids: Sequence[int]) -> np.ndarray:
    """(len(ids), n_vocab) float64 logits of ids from position 0."""
    return forward_hidden(cfg, w, ids) @ output_head(w).T


# ------------------------------------------------------------ real files

class DequantizedWeights(Mapping):
    """A GGUF file's tensors as float64 arrays, each dequantized on first use and kept."""

    def __init__(self, path: os.PathLike):
        self.file = ek_gguf.open(path)
        self._arrays: dict = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            info = self.file.tensors[name]
            values = kernels.dequantize(info.type_name, self.file.tensor_data(name))
            self._arrays[name] = values.astype(np.float64).reshape(tuple(reversed(info.shape)))
        return self._arrays[name]

    def __iter__(self):
        return iter(self.file.tensors)

    def __len__(self) -> int:
        return len(self.file.tensors)


@dataclass(eq=False)
class TruthModel:
    """One real file's forward settings and float64 weights."""
    path: Path
    config: ForwardConfig
    weights: DequantizedWeights
    sha256: str

    @property
    def head(self) -> np.ndarray:
        return output_head(self.weights)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)  # one model's float64 weights at a time: Gemma-3-270M's are 2.1 GiB
def _model(path: str, size: int, mtime_ns: int) -> TruthModel:
    weights = DequantizedWeights(path)
    cfg = config_from_shape(read_shape(weights.file))
    return TruthModel(Path(path), cfg, weights, _file_sha256(Path(path)))


def truth_model(gguf_path: os.PathLike) -> TruthModel:
    """The process's TruthModel for a file (rebuilt when the file changes)."""
    path = Path(gguf_path).resolve()
    st = path.stat()
    return _model(str(path), st.st_size, st.st_mtime_ns)


def _truth_inputs() -> list:
    """The code a cached truth depends on: this forward, the shape reader and the dequantizers
    (their C source in a checkout, else the built extension)."""
    import edgesdk
    from edgesdk import _native, shape

    package = Path(edgesdk.__file__).resolve().parent
    formats = package.parent / "native" / "src" / "formats.c"
    return [Path(__file__), Path(shape.__file__), formats if formats.exists() else Path(_native.lib._name)]


@functools.lru_cache(maxsize=None)
def _code_digest() -> str:
    digest = hashlib.sha256()
    for path in _truth_inputs():
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cache_path(model: TruthModel, ids: np.ndarray) -> Path:
    key = hashlib.sha256(_code_digest().encode() + ids.astype("<i8").tobytes()).hexdigest()
    return home() / "truth" / model.sha256[:32] / f"{key[:32]}.npy"


def _computed_hidden(model: TruthModel, ids: np.ndarray) -> np.ndarray:
    cache = _cache_path(model, ids)
    try:
        hidden = np.load(cache, allow_pickle=False)
        if hidden.shape == (ids.size, model.config.n_embd) and hidden.dtype == np.float64:
            return hidden
    except (OSError, ValueError):
        pass  # absent or unreadable: computed again below
    hidden = forward_hidden(model.config, model.weights, ids)
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, hidden)
        os.replace(tmp, cache)  # whole or not at all: a reader never sees half a file
    except BaseException:
        os.unlink(tmp)
        raise
    return hidden


def truth_hidden(gguf_path: os.PathLike, ids: Sequence[int]) -> np.ndarray:
    """(len(ids), n_embd) float64 final normalized hidden states of ids from position 0."""
    model = truth_model(gguf_path)
    arr = np.asarray(ids, dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0 or arr.min() < 0 or arr.max() >= output_head(model.weights).shape[0]:
        raise ValueError("ids must be a non-empty sequence of token ids below the vocabulary size")
    return _computed_hidden(model, arr)


def truth_logits(gguf_path: os.PathLike, ids: Sequence[int]) -> np.ndarray:
    """(len(ids), n_vocab) float64 teacher-forced logits of ids from position 0: the truth."""
    return truth_hidden(gguf_path, ids) @ truth_model(gguf_path).head.T


class TruthRows:
    """The truth's logits for rows first.. of ids, computed when sliced (a 1,024-row block
    of Gemma-3's 262,144-entry vocabulary is 2 GiB of float64)."""

    def __init__(self, gguf_path: os.PathLike, ids: Sequence[int], first: int = 0):
        self._hidden = truth_hidden(gguf_path, ids)[first:]
        self._head = truth_model(gguf_path).head

    def __len__(self) -> int:
        return self._hidden.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self._hidden[rows] @ self._head.T


def truth_logits_from(gguf_path: os.PathLike) -> Callable[[Sequence[int], int], TruthRows]:
    """logits_from(window, first) for fidelity.perplexity: the truth's rows first.. of window."""
    return lambda window, first: TruthRows(gguf_path, window, first)
