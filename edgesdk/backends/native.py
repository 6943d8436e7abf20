"""The native backend: edgesdk's own engine (native/src/model.c) on its own kernels.

Everything about the file is checked here, before the C engine sees a
pointer: the architecture, every hyperparameter, each tensor's presence,
shape and type. The engine then trusts the description it is given. Q4_0, Q4_1
and Q8_0 matrices get an owned interleaved copy at load (built over the thread
pool), and their pages of the file mapping are released (the file still backs
them); the other matrices and the F32 vectors stay memory-mapped; norm vectors
stored as F16 are converted.
"""
from __future__ import annotations

import ctypes
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .. import _native, gguf
from ..errors import (
    ContextOverflowError,
    InvalidArgumentError,
    ModelFormatError,
    SessionFileError,
    UnsupportedModelError,
)
from .base import Backend, BackendInfo, check_ids

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3")
# Matrix types the kernels multiply (ek_type ids = GGUF ggml_type ids).
MATRIX_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}
VECTOR_TYPES = ("F32", "F16")
KV_TYPES = {"f16": 1, "q8_0": 8}
MAX_HEAD_DIM = 1024  # the engine's RoPE angle table holds head_dim / 2 entries
GEMMA3_SWA_PATTERN = 6  # every 6th gemma3 layer is global, the others slide
GEMMA3_ROPE_BASE_LOCAL = 10000.0
# rope.scaling.type values the engine applies; llama3 is its rope_freqs.weight tensor.
ROPE_SCALING_TYPES = ("none", "linear", "llama3", "yarn")
# llama.cpp's YaRN defaults (llama_hparams) when the file leaves them out: the ramp runs
# from pairs that turn 32 times within the original context to pairs that turn once.
YARN_EXT_FACTOR = 1.0
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0
STATE_MAGIC = b"EKKV"
STATE_HEADER = struct.Struct("<4sIIIIq")  # magic, n_layer, kv_type, kv_dim, n_ctx, n_past

ModelSource = Union[str, os.PathLike, gguf.GGUFFile]


@dataclass
class ModelSpec:
    """Hyperparameters of one file, read and checked from its metadata."""
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_mode: int
    rope_base: float
    rope_freq_scale: float
    rope_base_swa: float
    norm_eps: float
    embd_scale: float
    attn_scale: float
    n_swa: int
    swa_pattern: int
    act: int
    # factors on cos and sin of global / sliding layers' rotations (YaRN's attention factor)
    rope_mscale: float = 1.0
    rope_mscale_swa: float = 1.0
    # YaRN's frequency ramp (rope.scaling.type yarn; ext_factor 0 = off)
    yarn_ext_factor: float = 0.0
    yarn_beta_fast: float = YARN_BETA_FAST
    yarn_beta_slow: float = YARN_BETA_SLOW
    yarn_n_ctx_orig: int = 0
    # tensor name -> GGUF shape it must have; optional ones may be absent
    required: Dict[str, tuple] = field(default_factory=dict)
    optional: Dict[str, tuple] = field(default_factory=dict)


def _meta(f: gguf.GGUFFile, key: str, kind=int, default=None):
    value = f.get(key, default)
    if value is None:
        raise ModelFormatError(f"{f.path}: missing metadata {key!r}")
    if isinstance(value, (np.ndarray, list)):
        # Some converters store per-layer arrays; the engine needs one value for all layers.
        values = np.asarray(value).ravel()
        if values.size == 0 or np.any(values != values[0]):
            raise UnsupportedModelError(f"{f.path}: {key} varies per layer ({values.tolist()[:8]}...)")
        value = values[0].item()
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ModelFormatError(f"{f.path}: metadata {key!r} = {value!r} is not a {kind.__name__}") from None


def _positive(f: gguf.GGUFFile, key: str, value: int) -> int:
    if value <= 0:
        raise ModelFormatError(f"{f.path}: metadata {key!r} is {value}, must be positive")
    return value


def _finite(f: gguf.GGUFFile, key: str, value: float, minimum: float = 0.0, inclusive: bool = False) -> float:
    """value, checked finite and > minimum (>= with inclusive); ModelFormatError naming key otherwise."""
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        bound = f">= {minimum}" if inclusive else f"> {minimum}"
        raise ModelFormatError(f"{f.path}: metadata {key!r} is {value}, must be finite and {bound}")
    return value


def _read_yarn(f: gguf.GGUFFile, a: str, spec: "ModelSpec") -> None:
    """YaRN's settings into spec, with llama.cpp's defaults for the optional ones."""
    p = f"{a}.rope.scaling."
    for key in (p + "original_context_length", p + "orig_ctx_len", f"{a}.context_length"):
        if f.get(key) is not None:
            spec.yarn_n_ctx_orig = _positive(f, key, _meta(f, key))
            break
    else:
        raise ModelFormatError(f"{f.path}: missing metadata {p + 'original_context_length'!r} (RoPE scaling yarn)")
    spec.yarn_ext_factor = _finite(f, p + "yarn_ext_factor",
                                   _meta(f, p + "yarn_ext_factor", float, default=YARN_EXT_FACTOR), inclusive=True)
    # The attention factor on the scaled (global) layers' cos and sin: the file's (converted
    # from transformers' rope_scaling "attention_factor", which replaces the default there),
    # else YaRN's 0.1 ln(factor) + 1, which keeps attention as sharp as within the original
    # context (1 for factor <= 1, as transformers and llama.cpp have it).
    factor = 1.0 / spec.rope_freq_scale
    default = 0.1 * math.log(factor) + 1.0 if factor > 1.0 and spec.yarn_ext_factor != 0.0 else 1.0
    spec.rope_mscale *= _finite(f, p + "yarn_attn_factor", _meta(f, p + "yarn_attn_factor", float, default=default))
    for name, default in (("yarn_beta_fast", YARN_BETA_FAST), ("yarn_beta_slow", YARN_BETA_SLOW)):
        setattr(spec, name, _finite(f, p + name, _meta(f, p + name, float, default=default)))
    log_mul = _meta(f, p + "yarn_log_multiplier", float, default=0.0)
    if log_mul != 0.0:
        raise UnsupportedModelError(f"{f.path}: {p + 'yarn_log_multiplier'} {log_mul} (DeepSeek-style YaRN "
                                    f"attention factor) is not supported")


def read_spec(f: gguf.GGUFFile) -> ModelSpec:
    """The architecture's hyperparameters and the tensor shapes they imply."""
    arch = f.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{f.path}: architecture {arch!r} is not supported by the native backend "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    a = arch
    n_embd = _positive(f, f"{a}.embedding_length", _meta(f, f"{a}.embedding_length"))
    n_layer = _positive(f, f"{a}.block_count", _meta(f, f"{a}.block_count"))
    n_ff = _positive(f, f"{a}.feed_forward_length", _meta(f, f"{a}.feed_forward_length"))
    n_head = _positive(f, f"{a}.attention.head_count", _meta(f, f"{a}.attention.head_count"))
    n_head_kv = _positive(f, f"{a}.attention.head_count_kv",
                          _meta(f, f"{a}.attention.head_count_kv", default=n_head))
    if n_head % n_head_kv:
        raise ModelFormatError(f"{f.path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    head_dim = _meta(f, f"{a}.attention.key_length", default=n_embd // n_head)
    head_dim_v = _meta(f, f"{a}.attention.value_length", default=head_dim)
    if head_dim_v != head_dim:
        raise UnsupportedModelError(f"{f.path}: key_length {head_dim} != value_length {head_dim_v}")
    if head_dim <= 0 or head_dim % 2 or head_dim > MAX_HEAD_DIM:
        raise UnsupportedModelError(f"{f.path}: head dimension {head_dim} (must be even and <= {MAX_HEAD_DIM})")
    n_rot = _meta(f, f"{a}.rope.dimension_count", default=head_dim)
    if n_rot <= 0 or n_rot % 2 or n_rot > head_dim:
        raise ModelFormatError(f"{f.path}: rope.dimension_count {n_rot} must be even and <= head dim {head_dim}")
    norm_eps = _meta(f, f"{a}.attention.layer_norm_rms_epsilon", float)
    rope_base = _meta(f, f"{a}.rope.freq_base", float, default=10000.0)
    rope_freq_scale = 1.0
    scaling = f.get(f"{a}.rope.scaling.type")
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise UnsupportedModelError(f"{f.path}: RoPE scaling {scaling!r} (supported: {', '.join(ROPE_SCALING_TYPES)})")
    if scaling in ("linear", "yarn"):
        key = f"{a}.rope.scaling.factor"
        rope_freq_scale = 1.0 / _finite(f, key, _meta(f, key, float))
    key = f"{a}.rope.scaling.attn_factor"  # llama.cpp applies it to every layer, with or without scaling
    rope_attn_factor = _finite(f, key, _meta(f, key, float, default=1.0))

    token_embd = f.tensors.get("token_embd.weight")
    if token_embd is None:
        raise ModelFormatError(f"{f.path}: missing tensor 'token_embd.weight'")
    n_vocab = int(token_embd.shape[1]) if len(token_embd.shape) == 2 else -1
    tokens = f.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) != n_vocab:
        raise ModelFormatError(
            f"{f.path}: token_embd.weight has {n_vocab} rows but the vocabulary has {len(tokens)} tokens"
        )

    qd, kd = n_head * head_dim, n_head_kv * head_dim
    required = {"token_embd.weight": (n_embd, n_vocab), "output_norm.weight": (n_embd,)}
    optional = {"output.weight": (n_embd, n_vocab), "rope_freqs.weight": (n_rot // 2,)}
    for il in range(n_layer):
        p = f"blk.{il}."
        required.update({
            p + "attn_norm.weight": (n_embd,), p + "attn_q.weight": (n_embd, qd),
            p + "attn_k.weight": (n_embd, kd), p + "attn_v.weight": (n_embd, kd),
            p + "attn_output.weight": (qd, n_embd), p + "ffn_norm.weight": (n_embd,),
            p + "ffn_gate.weight": (n_embd, n_ff), p + "ffn_up.weight": (n_embd, n_ff),
            p + "ffn_down.weight": (n_ff, n_embd),
        })
        if arch == "qwen2":
            required.update({p + "attn_q.bias": (qd,), p + "attn_k.bias": (kd,), p + "attn_v.bias": (kd,)})
        if arch == "gemma3":
            required.update({
                p + "attn_q_norm.weight": (head_dim,), p + "attn_k_norm.weight": (head_dim,),
                p + "post_attention_norm.weight": (n_embd,), p + "post_ffw_norm.weight": (n_embd,),
            })

    spec = ModelSpec(
        arch=arch, n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head,
        n_head_kv=n_head_kv, head_dim=head_dim, n_rot=n_rot, rope_mode=_native.EK_ROPE_NORM,
        rope_base=rope_base, rope_freq_scale=rope_freq_scale, rope_base_swa=rope_base, norm_eps=norm_eps,
        embd_scale=1.0, attn_scale=1.0 / math.sqrt(head_dim), n_swa=0, swa_pattern=0,
        act=_native.EK_ACT_SILU, rope_mscale=rope_attn_factor, rope_mscale_swa=rope_attn_factor,
        required=required, optional=optional,
    )
    if scaling == "yarn":
        _read_yarn(f, a, spec)
    if arch == "qwen2":
        spec.rope_mode = _native.EK_ROPE_NEOX
    if arch == "gemma3":
        spec.rope_mode = _native.EK_ROPE_NEOX
        spec.act = _native.EK_ACT_GELU
        spec.embd_scale = math.sqrt(n_embd)
        spec.rope_base_swa = GEMMA3_ROPE_BASE_LOCAL
        spec.n_swa = _meta(f, "gemma3.attention.sliding_window", default=0)
        spec.swa_pattern = GEMMA3_SWA_PATTERN
        # Gemma-3 scales queries by query_pre_attn_scalar^-1/2: head_dim for every size but
        # 27B (62 layers), where it is n_embd / n_head.
        spec.attn_scale = 1.0 / math.sqrt(n_embd // n_head if n_layer == 62 else head_dim)
    return spec


def check_tensors(f: gguf.GGUFFile, spec: ModelSpec) -> None:
    """Every required tensor present, every tensor with the shape and a type the engine supports."""
    for name, shape in list(spec.required.items()) + list(spec.optional.items()):
        info = f.tensors.get(name)
        if info is None:
            if name in spec.required:
                raise ModelFormatError(f"{f.path}: missing tensor {name!r} (architecture {spec.arch})")
            continue
        if tuple(info.shape) != shape:
            raise ModelFormatError(
                f"{f.path}: tensor {name!r} has shape {tuple(info.shape)}, the metadata implies {shape}"
            )
        allowed = VECTOR_TYPES if len(shape) == 1 else MATRIX_TYPES
        if info.type_name not in allowed:
            raise UnsupportedModelError(
                f"{f.path}: tensor {name!r} is {info.type_name}; supported: {', '.join(allowed)}"
            )


def _open(model: ModelSource) -> tuple[gguf.GGUFFile, bool]:
    if isinstance(model, gguf.GGUFFile):
        return model, False
    return gguf.open(model), True


def _check_settings(spec: ModelSpec, n_ctx: int, threads: int, kv_type: str, n_batch: int) -> None:
    for name, value in (("n_ctx", n_ctx), ("threads", threads), ("n_batch", n_batch)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    if n_ctx >= 1 << 30:
        raise InvalidArgumentError(f"n_ctx {n_ctx} is too large (limit {1 << 30})")
    if kv_type not in KV_TYPES:
        raise InvalidArgumentError(f"kv_type {kv_type!r} is not one of {', '.join(KV_TYPES)}")
    if kv_type == "q8_0" and spec.head_dim % 32:
        raise InvalidArgumentError(f"kv_type 'q8_0' needs a head dimension multiple of 32, model has {spec.head_dim}")


class _Description:
    """The ctypes ek_model_desc of a checked file, with the arrays it points into kept alive."""

    def __init__(self, f: gguf.GGUFFile, spec: ModelSpec, n_ctx: int, threads: int, kv_type: str,
                 n_batch: int, weight_flags: int = 0):
        self.keep: List[np.ndarray] = []
        self.owned_vector_bytes = 0
        self.mapped_vector_bytes = 0  # F32 vectors read in place; matrices are counted by the engine
        d = _native.EkModelDesc()
        for name in ("n_vocab", "n_embd", "n_layer", "n_ff", "n_head", "n_head_kv", "head_dim", "n_rot",
                     "rope_mode", "rope_base", "rope_freq_scale", "rope_base_swa", "norm_eps", "embd_scale",
                     "attn_scale", "n_swa", "swa_pattern", "act", "yarn_ext_factor", "yarn_beta_fast",
                     "yarn_beta_slow", "yarn_n_ctx_orig", "rope_mscale", "rope_mscale_swa"):
            setattr(d, name, getattr(spec, name))
        d.arch = {"llama": _native.EK_ARCH_LLAMA, "qwen2": _native.EK_ARCH_QWEN2,
                  "gemma3": _native.EK_ARCH_GEMMA3}[spec.arch]
        d.rope_freq_scale_swa = 1.0
        d.n_ctx, d.n_batch, d.n_threads = n_ctx, min(n_batch, n_ctx), threads
        d.kv_type = KV_TYPES[kv_type]
        d.weight_flags = weight_flags
        self.f = f
        d.tok_embd = self._tensor("token_embd.weight")
        d.output_norm = self._tensor("output_norm.weight")
        d.output = self._tensor("output.weight")
        freqs = self._tensor("rope_freqs.weight")
        d.rope_freqs = ctypes.cast(freqs.data, _native.c_float_p) if freqs.data else None
        slots = {
            "attn_norm": "attn_norm.weight", "q": "attn_q.weight", "k": "attn_k.weight", "v": "attn_v.weight",
            "o": "attn_output.weight", "q_bias": "attn_q.bias", "k_bias": "attn_k.bias", "v_bias": "attn_v.bias",
            "q_norm": "attn_q_norm.weight", "k_norm": "attn_k_norm.weight",
            "post_attn_norm": "post_attention_norm.weight", "ffn_norm": "ffn_norm.weight",
            "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight",
            "post_ffn_norm": "post_ffw_norm.weight",
        }
        n_slots = len(_native.LAYER_TENSOR_SLOTS)
        self.layers = (_native.EkTensorDesc * (spec.n_layer * n_slots))()
        for il in range(spec.n_layer):
            for k, slot in enumerate(_native.LAYER_TENSOR_SLOTS):
                self.layers[il * n_slots + k] = self._tensor(f"blk.{il}.{slots[slot]}")
        d.layers = ctypes.cast(self.layers, ctypes.POINTER(_native.EkTensorDesc))
        self.desc = d

    def _tensor(self, name: str) -> "_native.EkTensorDesc":
        t = _native.EkTensorDesc()
        info = self.f.tensors.get(name)
        if info is None:
            return t  # absent: data NULL (checked optional by check_tensors)
        if len(info.shape) == 1:
            array = self.f.tensor_array(name)
            if info.type_name != "F32":
                array = np.ascontiguousarray(array, dtype=np.float32)
                self.owned_vector_bytes += array.nbytes
            else:
                self.mapped_vector_bytes += info.nbytes
            self.keep.append(array)
            t.data, t.n_rows, t.n_cols, t.type = array.ctypes.data, 1, info.shape[0], 0
        else:
            data = self.f.tensor_data(name)
            self.keep.append(data)
            t.data, t.n_rows, t.n_cols, t.type = data.ctypes.data, info.shape[1], info.shape[0], info.type_id
        return t


# Repack matrices at load (measured on SmolLM2: ~2.5x faster prompts, ~2x faster generation;
# benchmarks/RESULTS.md; the engine picks the types, see flags_for in native/src/model.c).
# repack=False keeps the file layout.
DEFAULT_REPACK = True


def weight_flags(repack: bool) -> int:
    """ek_weight_create flags for matrices in a GGUFFile's mapping (read-only, file-backed:
    releasing its pages after a repack is safe)."""
    return _native.EK_WEIGHT_ALLOW_REPACK | _native.EK_WEIGHT_RELEASE_SOURCE if repack else 0


def _weight_parts(desc: "_Description", mem: "_native.EkModelMemory") -> dict:
    return {"weights_mapped": desc.mapped_vector_bytes + int(mem.weights_mapped),
            "weights_owned": desc.owned_vector_bytes + int(mem.weights_owned)}


def memory_requirements(gguf_file: ModelSource, n_ctx: int, kv_type: str = "f16", n_batch: int = 512,
                        threads: int = 1, repack: bool = DEFAULT_REPACK) -> dict:
    """Bytes the native engine will use for this file and settings, before loading it.

    weights_mapped: tensor bytes that stay read from the mmap (resident once read);
    weights_owned: owned copies (repacked matrices, whose file pages are released,
    and norm vectors converted to f32); kv_cache: K and V
    for n_ctx positions; scratch: activations for n_batch tokens plus attention
    scores per thread (threads: the count the backend will run with).
    """
    f, owned = _open(gguf_file)
    desc = None
    try:
        spec = read_spec(f)
        check_tensors(f, spec)
        _check_settings(spec, n_ctx, threads, kv_type, n_batch)
        desc = _Description(f, spec, n_ctx, threads, kv_type, n_batch, weight_flags(repack))
        mem = _native.EkModelMemory()
        _native.check(_native.lib.ek_model_memory_needs(ctypes.byref(desc.desc), ctypes.byref(mem)),
                      "ek_model_memory_needs")
        return {
            **_weight_parts(desc, mem),
            "kv_cache": int(mem.kv_cache),
            "scratch": int(mem.scratch),
        }
    finally:
        if owned:
            del desc
            f.close()


class NativeBackend(Backend):
    """A GGUF model on edgesdk's own engine, with a KV cache of n_ctx positions.

    repack=False keeps every matrix in the file's GGUF layout (slower; for comparisons)."""

    name = "native"

    def __init__(self, model: ModelSource, n_ctx: int, threads: int, kv_type: str = "f16", n_batch: int = 512,
                 repack: bool = DEFAULT_REPACK):
        self._handle: Optional[int] = None
        self._file, self._owns_file = _open(model)
        try:
            self.spec = read_spec(self._file)
            check_tensors(self._file, self.spec)
            _check_settings(self.spec, n_ctx, threads, kv_type, n_batch)
            self._desc = _Description(self._file, self.spec, n_ctx, threads, kv_type, n_batch,
                                      weight_flags(repack))
            handle = ctypes.c_void_p()
            _native.check(_native.lib.ek_model_create(ctypes.byref(self._desc.desc), ctypes.byref(handle)),
                          "ek_model_create")
            self._handle = handle.value
        except BaseException:
            self.close()
            raise
        self.n_ctx = n_ctx
        self.n_vocab = self.spec.n_vocab
        self.threads = threads
        self.kv_type = kv_type
        self._n_past = 0

    # -- Backend -----------------------------------------------------------

    def eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        handle = self._require_open()
        arr = np.ascontiguousarray(check_ids(ids, self.n_vocab))
        if not isinstance(start, (int, np.integer)) or isinstance(start, bool) or start < 0:
            raise InvalidArgumentError(f"start must be a non-negative integer, got {start!r}")
        if start > self._n_past:
            raise InvalidArgumentError(f"start {start} is past the {self._n_past} cached positions")
        if start + arr.size > self.n_ctx:
            raise ContextOverflowError(
                f"{start} cached + {arr.size} new tokens = {start + arr.size} exceeds the context of {self.n_ctx}"
            )
        rows = arr.size if all_logits else 1
        logits = np.empty((rows, self.n_vocab), dtype=np.float32)
        # Forget first: if the engine fails midway, the cache past `start` is not trusted.
        self._n_past = start
        status = _native.lib.ek_model_eval(handle, arr.ctypes.data_as(_native.c_int32_p), arr.size, start,
                                           logits.ctypes.data_as(_native.c_float_p), int(bool(all_logits)))
        _native.check(status, "ek_model_eval")
        self._n_past = start + arr.size
        return logits if all_logits else logits[0]

    @property
    def n_past(self) -> int:
        return self._n_past

    def _state_header(self, n_past: int) -> bytes:
        s = self.spec
        return STATE_HEADER.pack(STATE_MAGIC, s.n_layer, KV_TYPES[self.kv_type], s.n_head_kv * s.head_dim,
                                 self.n_ctx, n_past)

    def save_state(self) -> bytes:
        handle = self._require_open()
        size = int(_native.lib.ek_model_state_bytes(handle, self._n_past))
        buf = ctypes.create_string_buffer(size)
        _native.lib.ek_model_state_save(handle, self._n_past, buf)
        return self._state_header(self._n_past) + buf.raw

    def load_state(self, blob: bytes, n_past: int) -> None:
        handle = self._require_open()
        if not isinstance(n_past, (int, np.integer)) or n_past < 0 or n_past > self.n_ctx:
            raise InvalidArgumentError(f"n_past {n_past!r} must be in [0, {self.n_ctx}]")
        head = STATE_HEADER.size
        if len(blob) < head:
            raise SessionFileError(f"KV state is {len(blob)} bytes, shorter than its {head}-byte header")
        if bytes(blob[:head]) != self._state_header(n_past):
            magic, n_layer, kv_type, kv_dim, _, saved_past = STATE_HEADER.unpack(bytes(blob[:head]))
            raise SessionFileError(
                f"KV state does not belong to this model/settings: saved n_layer={n_layer}, kv_type={kv_type}, "
                f"kv_dim={kv_dim}, n_past={saved_past}; expected n_layer={self.spec.n_layer}, "
                f"kv_type={KV_TYPES[self.kv_type]}, kv_dim={self.spec.n_head_kv * self.spec.head_dim}, "
                f"n_past={n_past}"
            )
        size = int(_native.lib.ek_model_state_bytes(handle, n_past))
        if len(blob) - head != size:
            raise SessionFileError(f"KV state holds {len(blob) - head} bytes, {n_past} positions need {size}")
        payload = (ctypes.c_char * size).from_buffer_copy(blob, head)
        _native.lib.ek_model_state_load(handle, n_past, payload)
        self._n_past = n_past

    def info(self) -> BackendInfo:
        return BackendInfo(name="native", device=f"cpu ({_native.isa_current()}, {self.threads} threads)",
                           n_ctx=self.n_ctx, n_vocab=self.n_vocab, threads=self.threads, kv_type=self.kv_type)

    def memory_used(self) -> dict:
        """Bytes the loaded engine holds, in memory_requirements' terms."""
        mem = _native.EkModelMemory()
        _native.lib.ek_model_memory_used(self._require_open(), ctypes.byref(mem))
        return {**_weight_parts(self._desc, mem),
                "kv_cache": int(mem.kv_cache), "scratch": int(mem.scratch)}

    def close(self) -> None:
        if getattr(self, "_handle", None):
            _native.lib.ek_model_free(self._handle)
            self._handle = None
        self._desc = None
        if getattr(self, "_owns_file", False) and getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _require_open(self) -> int:
        if not self._handle:
            raise InvalidArgumentError("the native backend is closed")
        return self._handle


__all__ = ["NativeBackend", "memory_requirements", "read_spec", "SUPPORTED_ARCHITECTURES"]
