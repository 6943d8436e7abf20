"""A model's shape: every hyperparameter, read once from the GGUF metadata and checked.

This is the one place that reads hyperparameters (as llama.cpp's
`llama_hparams`): the memory planner, every backend, `edgesdk info` and `load`
use the `ModelShape` it returns. It imports nothing of ours above the GGUF
reader, so anything may use it.

Every count is a lie until bounded: each is checked against what the file
can hold (a layer count above the number of tensors, a head count above the
embedding width, a vocabulary other than the embedding's rows) before anything
is sized from it. Floats are checked finite and in range.

One rule for per-layer arrays (some converters store `feed_forward_length` or
`attention.head_count_kv` once per layer): the array must have one entry per
layer; the shape's field holds the largest entry (what memory is sized for),
and `per_layer` keeps the whole array of every hyperparameter whose entries
differ. A consumer that needs one value for all layers calls `uniform()`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from . import gguf
from .errors import ModelFormatError, UnsupportedModelError

MAX_HEAD_DIM = 1024           # above any published model; bounds the RoPE tables sized from it
MAX_CONTEXT_LENGTH = 1 << 24  # 16M positions: above any published model's trained context
ROPE_FREQ_BASE_DEFAULT = 10000.0
# rope.scaling.type values we know the meaning of (llama3 is carried by its rope_freqs tensor).
ROPE_SCALING_TYPES = ("none", "linear", "llama3", "yarn")
# llama.cpp's YaRN defaults (llama_hparams) when the file leaves them out: the ramp runs
# from pairs that turn 32 times within the original context to pairs that turn once.
YARN_EXT_FACTOR = 1.0
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0
GEMMA3_SWA_PATTERN = 6        # every 6th gemma3 layer is global, the others slide
GEMMA3_ROPE_BASE_LOCAL = 10000.0
GEMMA3_27B_LAYERS = 62        # the one size whose query scale is n_embd / n_head, not head_dim


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters of one GGUF file and the sizes memory depends on."""
    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int                     # largest over the layers (see per_layer)
    n_head: int
    n_head_kv: int                # largest over the layers (see per_layer)
    head_dim_k: int
    head_dim_v: int
    n_rot: int                    # rotated dimensions of each head
    n_vocab: int
    context_length: Optional[int]  # trained context, None when the file does not say
    sliding_window: Optional[int]
    norm_eps: Optional[float]     # None when absent: a backend that normalizes requires it
    # RoPE: base frequency, how positions are scaled, and the YaRN ramp (ext_factor 0 = off)
    rope_base: float
    rope_scaling: str             # one of ROPE_SCALING_TYPES, or the file's unknown value
    rope_freq_scale: float        # 1 / rope.scaling.factor for linear and yarn, else 1
    rope_mscale: float            # factor on cos and sin (YaRN attention factor x attn_factor)
    rope_mscale_swa: float
    rope_base_swa: float          # sliding-window layers' base (gemma3's local base)
    yarn_ext_factor: float
    yarn_beta_fast: float
    yarn_beta_slow: float
    yarn_n_ctx_orig: int
    yarn_log_multiplier: float
    # Architecture facts the forward pass depends on
    rope_style: str               # "norm" (pairs 2i, 2i+1) or "neox" (pairs i, i + n_rot/2)
    activation: str               # "silu" or "gelu" gate
    embd_scale: float             # factor on token embeddings (gemma3: sqrt(n_embd))
    attn_scale: float             # factor on q.k
    swa_pattern: int              # every swa_pattern-th layer is global, the others slide; 0 = none
    # The file: what the tokenizer tables and the mapping cost
    n_merges: int
    n_token_arrays: int           # per-token numeric arrays in the metadata (scores, token types)
    header_bytes: int             # metadata and tensor index: the file before the tensor data
    tensor_bytes: int
    file_bytes: int
    n_tensors: int
    per_layer: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)

    def uniform(self, name: str) -> int:
        """The one value of a hyperparameter for all layers; UnsupportedModelError if it varies."""
        values = self.per_layer.get(name)
        if values is not None:
            raise UnsupportedModelError(f"{self.architecture}.{name} varies per layer ({list(values)[:8]}...); "
                                        f"this backend needs one value for all layers")
        return getattr(self, _FIELD_OF_KEY.get(name, name))


# per-layer metadata key (after the architecture prefix) -> ModelShape field
_FIELD_OF_KEY = {"feed_forward_length": "n_ff", "attention.head_count": "n_head",
                 "attention.head_count_kv": "n_head_kv"}


class _Reader:
    """Typed, bounded access to one file's `<arch>.*` metadata; errors name the key."""

    def __init__(self, file: gguf.GGUFFile, arch: str):
        self.file = file
        self.arch = arch
        self.n_layer: Optional[int] = None   # known once block_count is read: per-layer arrays match it
        self.per_layer: Dict[str, Tuple[int, ...]] = {}

    def _fail(self, key: str, why: str) -> ModelFormatError:
        return ModelFormatError(f"{self.file.path}: metadata {key!r} {why}")

    def raw(self, name: str) -> Any:
        return self.file.get(f"{self.arch}.{name}")

    def _stated(self, name: str, default: Any) -> "tuple[str, Any]":
        """(key, the file's value or else the default)."""
        key = f"{self.arch}.{name}"
        value = self.file.get(key)
        return key, default if value is None else value

    def int(self, name: str, default: Optional[int] = None, positive: bool = True,
            limit: Optional[int] = None) -> Optional[int]:
        key, value = self._stated(name, default)
        if value is None:
            return None
        if isinstance(value, (np.ndarray, list, tuple)):
            value = self._per_layer_int(key, name, value)
        elif isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise self._fail(key, f"is {value!r}, not an integer")
        value = int(value)
        if value < 0 or (positive and value == 0):
            raise self._fail(key, f"is {value}, must be {'positive' if positive else 'non-negative'}")
        if limit is not None and value > limit:
            raise self._fail(key, f"is {value}, more than this file can hold ({limit})")
        return value

    def _per_layer_int(self, key: str, name: str, value) -> int:
        values = np.asarray(value).ravel()
        if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
            raise self._fail(key, f"is an array of {values.size} {values.dtype} entries, not integers")
        if self.n_layer is not None and values.size != self.n_layer:
            raise self._fail(key, f"has {values.size} entries, one per layer means {self.n_layer}")
        if np.any(values != values[0]):
            self.per_layer[name] = tuple(int(v) for v in values)
        return int(values.max())

    def need(self, name: str, limit: Optional[int] = None) -> int:
        value = self.int(name, limit=limit)
        if value is None:
            raise ModelFormatError(f"{self.file.path}: missing metadata {f'{self.arch}.{name}'!r}")
        return value

    def float(self, name: str, default: Optional[float], minimum: float = 0.0,
              inclusive: bool = False) -> Optional[float]:
        """A float checked finite and > minimum (>= with inclusive)."""
        key, value = self._stated(name, default)
        if value is None:
            return None
        if isinstance(value, (np.ndarray, list, tuple)):
            values = np.asarray(value, dtype=np.float64).ravel() if np.asarray(value).dtype.kind in "fiu" else None
            if values is None or values.size == 0 or np.any(values != values[0]):
                raise UnsupportedModelError(f"{self.file.path}: {key} varies per layer or is not a number")
            value = float(values[0])
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise self._fail(key, f"is {value!r}, not a number")
        value = float(value)
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise self._fail(key, f"is {value}, must be finite and {'>=' if inclusive else '>'} {minimum}")
        return value


def _n_vocab(file: gguf.GGUFFile) -> int:
    """The embedding's rows, which must equal the vocabulary's size where both are given."""
    tokens = file.get("tokenizer.ggml.tokens")
    embd = file.tensors.get("token_embd.weight")
    rows = int(embd.shape[1]) if embd is not None and len(embd.shape) == 2 else None
    if rows is not None and tokens is not None and len(tokens) != rows:
        raise ModelFormatError(f"{file.path}: token_embd.weight has {rows} rows but the vocabulary has "
                               f"{len(tokens)} tokens")
    if rows is not None:
        return rows
    return len(tokens) if tokens is not None else 0


def read_shape(file: gguf.GGUFFile) -> ModelShape:
    """The checked hyperparameters of an opened GGUF file.

    Raises ModelFormatError naming the key for a missing, mistyped, out-of-range
    or unbounded value, and UnsupportedModelError for a value we cannot honour
    anywhere (a per-layer float).
    """
    arch = file.architecture
    if not arch or not isinstance(arch, str):
        raise ModelFormatError(f"{file.path}: no general.architecture in the metadata")
    n_tensors = len(file.tensors)
    # A layer holds at least one tensor: a block count above the tensor count is a lie, and a
    # per-layer table sized from it could exhaust memory before any tensor is looked at.
    r = _Reader(file, arch)
    n_layer = r.need("block_count")
    n_embd = r.need("embedding_length")
    if n_layer > n_tensors:
        raise ModelFormatError(f"{file.path}: metadata {arch + '.block_count'!r} is {n_layer}, "
                               f"but the file holds only {n_tensors} tensors")
    r.n_layer = n_layer
    n_ff = r.need("feed_forward_length")
    n_head = r.need("attention.head_count", limit=n_embd)
    n_head_kv = r.int("attention.head_count_kv", default=n_head, limit=n_head)
    if n_head % n_head_kv:
        raise ModelFormatError(f"{file.path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    head_dim_k = r.int("attention.key_length", default=max(n_embd // n_head, 1), limit=MAX_HEAD_DIM)
    head_dim_v = r.int("attention.value_length", default=head_dim_k, limit=MAX_HEAD_DIM)
    n_rot = r.int("rope.dimension_count", default=head_dim_k, limit=head_dim_k)
    context_length = r.int("context_length", limit=MAX_CONTEXT_LENGTH)
    sliding_window = r.int("attention.sliding_window", positive=False)
    norm_eps = r.float("attention.layer_norm_rms_epsilon", default=None)

    rope_base = r.float("rope.freq_base", default=ROPE_FREQ_BASE_DEFAULT)
    scaling = r.raw("rope.scaling.type")
    if scaling is not None and not isinstance(scaling, str):
        raise ModelFormatError(f"{file.path}: metadata {arch + '.rope.scaling.type'!r} is {scaling!r}, not a string")
    scaling = scaling or "none"
    freq_scale = 1.0
    if scaling in ("linear", "yarn"):
        factor = r.float("rope.scaling.factor", default=None)
        if factor is None:
            raise ModelFormatError(f"{file.path}: missing metadata {arch + '.rope.scaling.factor'!r} "
                                   f"(RoPE scaling {scaling})")
        freq_scale = 1.0 / factor
    # llama.cpp applies rope.scaling.attn_factor to every layer, with or without scaling.
    attn_factor = r.float("rope.scaling.attn_factor", default=1.0)
    yarn = _read_yarn(r, file, arch, freq_scale, context_length) if scaling == "yarn" else None

    per_arch = _architecture_facts(r, arch, n_layer, n_embd, n_head, head_dim_k, rope_base)
    mscale = attn_factor * (yarn["attn_factor"] if yarn else 1.0)
    merges = file.get("tokenizer.ggml.merges")
    return ModelShape(
        architecture=arch, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv,
        head_dim_k=head_dim_k, head_dim_v=head_dim_v, n_rot=n_rot, n_vocab=_n_vocab(file),
        context_length=context_length, sliding_window=sliding_window or None, norm_eps=norm_eps,
        rope_base=rope_base, rope_scaling=scaling, rope_freq_scale=freq_scale,
        rope_mscale=mscale, rope_mscale_swa=attn_factor,
        yarn_ext_factor=yarn["ext_factor"] if yarn else 0.0,
        yarn_beta_fast=yarn["beta_fast"] if yarn else YARN_BETA_FAST,
        yarn_beta_slow=yarn["beta_slow"] if yarn else YARN_BETA_SLOW,
        yarn_n_ctx_orig=yarn["n_ctx_orig"] if yarn else 0,
        yarn_log_multiplier=yarn["log_multiplier"] if yarn else 0.0,
        n_merges=len(merges) if merges is not None else 0,
        n_token_arrays=sum(1 for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type")
                           if key in file.metadata),
        header_bytes=file.data_offset, tensor_bytes=sum(t.nbytes for t in file.tensors.values()),
        file_bytes=file.file_size, n_tensors=n_tensors, per_layer=dict(r.per_layer), **per_arch,
    )


@dataclass(frozen=True)
class ShapeSummary:
    """The hyperparameters a file states, None where it states none: for describing any GGUF file,
    also one that no backend can run (read with read_shape's checks and per-layer rule)."""
    architecture: Optional[str]
    n_layer: Optional[int]
    n_embd: Optional[int]
    n_ff: Optional[int]
    n_head: Optional[int]
    n_head_kv: Optional[int]      # defaults to n_head, as every reader of GGUF does
    head_dim: Optional[int]       # key_length, else n_embd / n_head when both are stated
    context_length: Optional[int]
    sliding_window: Optional[int]
    vocab_size: Optional[int]     # the `<arch>.vocab_size` key, which some files state


def read_summary(file: gguf.GGUFFile) -> ShapeSummary:
    """What the file states of its hyperparameters; a stated value that is wrong (mistyped,
    out of range) still raises ModelFormatError naming the key."""
    arch = file.architecture if isinstance(file.architecture, str) else None
    if arch is None:
        return ShapeSummary(None, None, None, None, None, None, None, None, None, None)
    r = _Reader(file, arch)
    n_layer = r.int("block_count")
    if n_layer is not None and n_layer <= len(file.tensors):
        r.n_layer = n_layer
    n_embd = r.int("embedding_length")
    n_head = r.int("attention.head_count", limit=n_embd)
    n_head_kv = r.int("attention.head_count_kv", default=n_head, limit=n_head) if n_head else None
    head_dim = r.int("attention.key_length", limit=MAX_HEAD_DIM)
    if head_dim is None and n_head and n_embd:
        head_dim = n_embd // n_head
    return ShapeSummary(
        architecture=arch, n_layer=n_layer, n_embd=n_embd, n_ff=r.int("feed_forward_length"), n_head=n_head,
        n_head_kv=n_head_kv, head_dim=head_dim, context_length=r.int("context_length", limit=MAX_CONTEXT_LENGTH),
        sliding_window=r.int("attention.sliding_window", positive=False) or None, vocab_size=r.int("vocab_size"))


def _read_yarn(r: _Reader, file: gguf.GGUFFile, arch: str, freq_scale: float,
               context_length: Optional[int]) -> Dict[str, float]:
    """YaRN's settings, with llama.cpp's defaults for the optional ones."""
    p = "rope.scaling."
    for name in (p + "original_context_length", p + "orig_ctx_len"):
        n_ctx_orig = r.int(name, limit=MAX_CONTEXT_LENGTH)
        if n_ctx_orig is not None:
            break
    else:
        n_ctx_orig = context_length
    if n_ctx_orig is None:
        raise ModelFormatError(f"{file.path}: missing metadata {arch + '.' + p + 'original_context_length'!r} "
                               f"(RoPE scaling yarn)")
    ext_factor = r.float(p + "yarn_ext_factor", default=YARN_EXT_FACTOR, inclusive=True)
    # The attention factor on the scaled (global) layers' cos and sin: the file's (converted
    # from transformers' rope_scaling "attention_factor", which replaces the default there),
    # else YaRN's 0.1 ln(factor) + 1, which keeps attention as sharp as within the original
    # context (1 for factor <= 1, as transformers and llama.cpp have it).
    factor = 1.0 / freq_scale
    default = 0.1 * math.log(factor) + 1.0 if factor > 1.0 and ext_factor != 0.0 else 1.0
    return {
        "n_ctx_orig": n_ctx_orig, "ext_factor": ext_factor,
        "attn_factor": r.float(p + "yarn_attn_factor", default=default),
        "beta_fast": r.float(p + "yarn_beta_fast", default=YARN_BETA_FAST),
        "beta_slow": r.float(p + "yarn_beta_slow", default=YARN_BETA_SLOW),
        "log_multiplier": r.float(p + "yarn_log_multiplier", default=0.0, inclusive=True),
    }


def _architecture_facts(r: _Reader, arch: str, n_layer: int, n_embd: int, n_head: int, head_dim: int,
                        rope_base: float) -> Dict[str, Any]:
    """What the architecture fixes rather than the metadata: RoPE pairing, gate, scales, layer pattern."""
    facts = {"rope_style": "norm", "activation": "silu", "embd_scale": 1.0,
             "attn_scale": 1.0 / math.sqrt(head_dim), "swa_pattern": 0, "rope_base_swa": rope_base}
    if arch == "qwen2":
        facts["rope_style"] = "neox"
    elif arch == "gemma3":
        facts.update(rope_style="neox", activation="gelu", embd_scale=math.sqrt(n_embd),
                     swa_pattern=GEMMA3_SWA_PATTERN, rope_base_swa=GEMMA3_ROPE_BASE_LOCAL,
                     # Gemma-3 scales queries by query_pre_attn_scalar^-1/2: head_dim for
                     # every size but 27B, where it is n_embd / n_head.
                     attn_scale=1.0 / math.sqrt(n_embd // n_head if n_layer == GEMMA3_27B_LAYERS else head_dim))
    return facts


__all__ = ["ModelShape", "ShapeSummary", "read_shape", "read_summary", "MAX_HEAD_DIM", "ROPE_SCALING_TYPES"]
