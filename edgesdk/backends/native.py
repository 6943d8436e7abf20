"""The native backend: edgesdk's own engine (native/src/model.c) on its own kernels.

Everything about the file is checked here, once, before the C engine sees a
pointer: the architecture, the hyperparameters the engine needs (from the
model's ModelShape), each tensor's presence, shape and type. The engine then
trusts the description it is given; the same description answers the memory
planner (ek_model_memory_needs) and creates the engine. Quantized matrices of
a type the active kernels have a repacked layout for (on x86 Q4_0, Q4_1, Q5_0,
Q8_0, Q4_K, Q6_K; on NEON Q4_0, Q4_1, Q8_0) get an owned interleaved copy at
load (built over the thread pool), and their pages of the file mapping are
released (the file still backs them); the other matrices and the F32 vectors
stay memory-mapped; norm vectors stored as F16 are converted.
"""
from __future__ import annotations

import abc
import ctypes
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .. import gguf, memory
from ..config import MAX_N_SEQ, LoadConfig
from ..errors import InvalidArgumentError, ModelFormatError, NativeBuildError, UnsupportedModelError
from ..shape import ROPE_SCALING_TYPES, ModelShape, read_shape
from . import register
from .base import (Availability, Backend, BackendInfo, ModelSource, SeqInput, check_common_settings, check_ids,
                   check_seq_inputs, check_start, check_state, resolved, threads_text)

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3")
# Tensor types the engine multiplies (ek_type ids are GGUF's ggml_type ids).
MATRIX_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K")
VECTOR_TYPES = ("F32", "F16")
STATE_MAGIC = b"EKKV"
STATE_HEADER = struct.Struct("<4sIIIIq")  # magic, n_layer, kv_type, kv_dim, n_ctx, n_past
# Repack matrices at load (faster prompts and generation, benchmarks/RESULTS.md; every type the
# active kernels have a repacked layout for, see ek_weight_repacked_bytes in native/src/matmul.c).
# options={"repack": False} keeps the file layout.
DEFAULT_REPACK = True
# edgesdk's modules, the native library and the code pages an eval pages in, above python + numpy:
# 33 MiB RSS measured after a SmolLM2 eval with nothing else alive.
NATIVE_RUNTIME_RSS = 5 * memory.MIB

ModelArg = Union[str, os.PathLike, gguf.GGUFFile]


def _type_id(name: str) -> int:
    return gguf.GGML_TYPES_BY_NAME[name].type_id


def _engine():
    """The ctypes binding of the native library (NativeBuildError when it is not built)."""
    from .. import _native
    return _native


def _expected_tensors(shape: ModelShape) -> "tuple[Dict[str, tuple], Dict[str, tuple]]":
    """(required, optional): tensor name -> the GGUF shape the hyperparameters imply."""
    n_embd, n_ff, n_vocab, head_dim = shape.n_embd, shape.n_ff, shape.n_vocab, shape.head_dim_k
    qd, kd = shape.n_head * head_dim, shape.n_head_kv * head_dim
    required = {"token_embd.weight": (n_embd, n_vocab), "output_norm.weight": (n_embd,)}
    optional = {"output.weight": (n_embd, n_vocab), "rope_freqs.weight": (shape.n_rot // 2,)}
    for il in range(shape.n_layer):
        p = f"blk.{il}."
        required.update({
            p + "attn_norm.weight": (n_embd,), p + "attn_q.weight": (n_embd, qd),
            p + "attn_k.weight": (n_embd, kd), p + "attn_v.weight": (n_embd, kd),
            p + "attn_output.weight": (qd, n_embd), p + "ffn_norm.weight": (n_embd,),
            p + "ffn_gate.weight": (n_embd, n_ff), p + "ffn_up.weight": (n_embd, n_ff),
            p + "ffn_down.weight": (n_ff, n_embd),
        })
        if shape.architecture == "qwen2":
            required.update({p + "attn_q.bias": (qd,), p + "attn_k.bias": (kd,), p + "attn_v.bias": (kd,)})
        if shape.architecture == "gemma3":
            required.update({
                p + "attn_q_norm.weight": (head_dim,), p + "attn_k_norm.weight": (head_dim,),
                p + "post_attention_norm.weight": (n_embd,), p + "post_ffw_norm.weight": (n_embd,),
            })
    return required, optional


def _check_shape(path, shape: ModelShape) -> None:
    """What the engine needs of the hyperparameters beyond what read_shape already checked."""
    arch = shape.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"{path}: architecture {arch!r} is not supported by the native backend "
                                    f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    for name in ("feed_forward_length", "attention.head_count", "attention.head_count_kv"):
        shape.uniform(name)
    if shape.head_dim_v != shape.head_dim_k:
        raise UnsupportedModelError(f"{path}: key_length {shape.head_dim_k} != value_length {shape.head_dim_v}")
    if shape.head_dim_k % 2:
        raise UnsupportedModelError(f"{path}: head dimension {shape.head_dim_k} (must be even)")
    if shape.n_rot % 2:
        raise ModelFormatError(f"{path}: rope.dimension_count {shape.n_rot} must be even and <= head dim "
                               f"{shape.head_dim_k}")
    if shape.norm_eps is None:
        raise ModelFormatError(f"{path}: missing metadata {arch + '.attention.layer_norm_rms_epsilon'!r}")
    if shape.rope_scaling not in ROPE_SCALING_TYPES:
        raise UnsupportedModelError(f"{path}: RoPE scaling {shape.rope_scaling!r} (supported: "
                                    f"{', '.join(ROPE_SCALING_TYPES)})")
    if shape.yarn_log_multiplier != 0.0:
        raise UnsupportedModelError(f"{path}: {arch}.rope.scaling.yarn_log_multiplier {shape.yarn_log_multiplier} "
                                    f"(DeepSeek-style YaRN attention factor) is not supported")


def _check_tensors(f: gguf.GGUFFile, shape: ModelShape) -> None:
    """Every required tensor present, every tensor with the shape and a type the engine supports."""
    required, optional = _expected_tensors(shape)
    for name, expected in list(required.items()) + list(optional.items()):
        info = f.tensors.get(name)
        if info is None:
            if name in required:
                raise ModelFormatError(f"{f.path}: missing tensor {name!r} (architecture {shape.architecture})")
            continue
        if tuple(info.shape) != expected:
            raise ModelFormatError(
                f"{f.path}: tensor {name!r} has shape {tuple(info.shape)}, the metadata implies {expected}"
            )
        allowed = VECTOR_TYPES if len(expected) == 1 else MATRIX_TYPES
        if info.type_name not in allowed:
            raise UnsupportedModelError(
                f"{f.path}: tensor {name!r} is {info.type_name}; supported: {', '.join(allowed)}"
            )


def _check_settings(shape: ModelShape, config: LoadConfig) -> bool:
    """The settings the engine needs; returns the repack option."""
    check_common_settings(NativeBackend, config)
    if config.kv_type == "q8_0" and shape.head_dim_k % 32:
        raise InvalidArgumentError(f"kv_type 'q8_0' needs a head dimension multiple of 32, model has "
                                   f"{shape.head_dim_k}")
    repack = config.options.get("repack", DEFAULT_REPACK)
    if not isinstance(repack, bool):
        raise InvalidArgumentError(f"the native backend's option repack must be True or False, got {repack!r}")
    return repack


def weight_flags(repack: bool) -> int:
    """ek_weight_create flags for matrices in a GGUFFile's mapping (read-only, file-backed:
    releasing its pages after a repack is safe)."""
    ek = _engine()
    return ek.EK_WEIGHT_ALLOW_REPACK | ek.EK_WEIGHT_RELEASE_SOURCE if repack else 0


@dataclass
class _Checked:
    """A model the native engine accepts: its source, and the engine description built once."""
    source: ModelSource
    desc: "_Description"
    owns_file: bool               # close source.file with the backend


class _Description:
    """The ctypes ek_model_desc of a checked file, with the arrays it points into kept alive."""

    _SHAPE_FIELDS = ("n_vocab", "n_embd", "n_layer", "n_ff", "n_head", "n_head_kv", "n_rot", "rope_base",
                     "rope_freq_scale", "rope_base_swa", "norm_eps", "embd_scale", "attn_scale", "swa_pattern",
                     "yarn_ext_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_n_ctx_orig", "rope_mscale",
                     "rope_mscale_swa")
    _LAYER_TENSORS = {
        "attn_norm": "attn_norm.weight", "q": "attn_q.weight", "k": "attn_k.weight", "v": "attn_v.weight",
        "o": "attn_output.weight", "q_bias": "attn_q.bias", "k_bias": "attn_k.bias", "v_bias": "attn_v.bias",
        "q_norm": "attn_q_norm.weight", "k_norm": "attn_k_norm.weight",
        "post_attn_norm": "post_attention_norm.weight", "ffn_norm": "ffn_norm.weight",
        "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight",
        "post_ffn_norm": "post_ffw_norm.weight",
    }

    def __init__(self, f: gguf.GGUFFile, shape: ModelShape):
        ek = _engine()
        self.keep: List[np.ndarray] = []
        self.owned_vector_bytes = 0   # every vector is a copy; matrices are counted by the engine
        d = ek.EkModelDesc()
        for name in self._SHAPE_FIELDS:
            setattr(d, name, getattr(shape, name))
        d.head_dim = shape.head_dim_k
        d.arch = {"llama": ek.EK_ARCH_LLAMA, "qwen2": ek.EK_ARCH_QWEN2, "gemma3": ek.EK_ARCH_GEMMA3}[shape.architecture]
        d.rope_mode = {"norm": ek.EK_ROPE_NORM, "neox": ek.EK_ROPE_NEOX}[shape.rope_style]
        d.act = {"silu": ek.EK_ACT_SILU, "gelu": ek.EK_ACT_GELU}[shape.activation]
        # The window only means something to an architecture with a sliding/global layer pattern.
        d.n_swa = (shape.sliding_window or 0) if shape.swa_pattern else 0
        d.rope_freq_scale_swa = 1.0
        self.f = f
        d.tok_embd = self._tensor("token_embd.weight")
        d.output_norm = self._tensor("output_norm.weight")
        d.output = self._tensor("output.weight")
        freqs = self._tensor("rope_freqs.weight")
        d.rope_freqs = ctypes.cast(freqs.data, ek.c_float_p) if freqs.data else None
        n_slots = len(ek.LAYER_TENSOR_SLOTS)
        self.layers = (ek.EkTensorDesc * (shape.n_layer * n_slots))()
        for il in range(shape.n_layer):
            for k, slot in enumerate(ek.LAYER_TENSOR_SLOTS):
                self.layers[il * n_slots + k] = self._tensor(f"blk.{il}.{self._LAYER_TENSORS[slot]}")
        d.layers = ctypes.cast(self.layers, ctypes.POINTER(ek.EkTensorDesc))
        self.desc = d

    def configure(self, config: LoadConfig, repack: bool) -> None:
        """The settings part of the description: context, batch, threads, KV type, weight flags."""
        n_ctx, threads = resolved(config)
        d = self.desc
        d.n_ctx, d.n_batch, d.n_threads = n_ctx, min(config.n_batch, n_ctx), threads
        d.kv_type = _type_id(config.kv_type.upper())
        d.n_seq = config.n_seq
        d.weight_flags = weight_flags(repack)

    def _tensor(self, name: str):
        t = _engine().EkTensorDesc()
        info = self.f.tensors.get(name)
        if info is None:
            return t  # absent: data NULL (checked optional by _check_tensors)
        if len(info.shape) == 1:
            array = self.f.tensor_array(name)
            # Copied, F32 ones too: a read of a vector in the mapping during a pass would map the file's
            # pages around it again, and the kernel maps whole page-cache folios (up to megabytes of the
            # released matrices beside it), which no plan can bound.
            array = np.array(array, dtype=np.float32, order="C", copy=True)
            self.owned_vector_bytes += array.nbytes
            self.keep.append(array)
            t.data, t.n_rows, t.n_cols, t.type = array.ctypes.data, 1, info.shape[0], 0
        else:
            data = self.f.tensor_data(name)
            self.keep.append(data)
            t.data, t.n_rows, t.n_cols, t.type = data.ctypes.data, info.shape[1], info.shape[0], info.type_id
        return t

    def engine_parts(self, mem) -> Dict[str, int]:
        """The engine's bytes (an EkModelMemory) with the vectors this description holds."""
        return {"weights_mapped": int(mem.weights_mapped),
                "weights_owned": self.owned_vector_bytes + int(mem.weights_owned),
                "kv_cache": int(mem.kv_cache), "scratch": int(mem.scratch)}


def _open(model: ModelArg) -> "tuple[gguf.GGUFFile, bool]":
    if isinstance(model, gguf.GGUFFile):
        return model, False
    return gguf.open(model), True


def _check(model: ModelArg, config: LoadConfig) -> _Checked:
    """A path or GGUFFile checked for the engine (the file is owned when we opened it)."""
    f, owned = _open(model)
    try:
        source = ModelSource(path=Path(f.path), file=f, shape=read_shape(f))
        checked = NativeBackend.check(source, config)
    except BaseException:
        if owned:
            f.close()
        raise
    checked.owns_file = owned
    return checked


def memory_requirements(gguf_file: ModelArg, n_ctx: int, kv_type: str = "f16", n_batch: int = 512,
                        threads: int = 1, repack: bool = DEFAULT_REPACK, n_seq: int = 1) -> dict:
    """Bytes the native engine will allocate for this file and settings, before loading it.

    weights_mapped: tensor bytes that stay read from the mmap (resident once read);
    weights_owned: owned copies (repacked matrices, whose file pages are released,
    and every norm vector, copied as f32); kv_cache: K and V for n_seq x n_ctx positions;
    scratch: activations for n_batch tokens plus an attention tile's scratch per thread.
    """
    config = LoadConfig(backend="native", n_ctx=n_ctx, threads=threads, kv_type=kv_type, n_batch=n_batch,
                        n_seq=n_seq, options={"repack": repack})
    checked = _check(gguf_file, config)
    try:
        return NativeBackend._engine_needs(checked, config)
    finally:
        if checked.owns_file:
            checked.desc = None
            checked.source.file.close()


class EngineHandle(abc.ABC):
    """What a backend on one of edgesdk's C engines (native, cuda) does with its handle and its checked
    file: close() frees the engine, then the description's arrays, then the mapping they point into."""

    name: str
    _handle: Optional[int]
    _checked: Optional[_Checked]

    @abc.abstractmethod
    def _free_engine(self, handle: int) -> None:
        """Free the C engine behind handle (ek_model_free, ec_model_free)."""

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._free_engine(self._handle)
            self._handle = None
        checked = getattr(self, "_checked", None)
        if checked is not None:
            self._checked = None
            checked.desc = None          # the arrays it points into go before the mapping
            if checked.owns_file:
                checked.source.file.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _require_open(self) -> int:
        if not self._handle:
            raise InvalidArgumentError(f"the {self.name} backend is closed")
        return self._handle

    # -- session blobs: STATE_HEADER, then the engine's KV rows ---------------------------

    state_magic: bytes = STATE_MAGIC

    def _state_header(self, n_past: int) -> bytes:
        s = self.shape
        return STATE_HEADER.pack(self.state_magic, s.n_layer, _type_id(self.kv_type.upper()),
                                 s.n_head_kv * s.head_dim_k, self.n_ctx, n_past)

    def _state_payload(self, blob: bytes, n_past: int, payload_bytes) -> "ctypes.Array":
        """The KV rows of a load_state blob once check_state has found it to restore n_past positions."""
        def mismatch(saved):
            magic, n_layer, kv_type, kv_dim, n_ctx, saved_past = saved
            return (f"saved magic={magic!r}, n_layer={n_layer}, kv_type={kv_type}, kv_dim={kv_dim}, n_ctx={n_ctx}, "
                    f"n_past={saved_past}; expected {self._state_header(n_past)[:4]!r}, n_layer={self.shape.n_layer}, "
                    f"kv_type={_type_id(self.kv_type.upper())}, kv_dim={self.shape.n_head_kv * self.shape.head_dim_k}, "
                    f"n_ctx={self.n_ctx}, n_past={n_past}")
        head = check_state(blob, n_past, self.n_ctx, STATE_HEADER, self._state_header, payload_bytes, mismatch)
        return (ctypes.c_char * (len(blob) - head)).from_buffer_copy(blob, head)


@register
class NativeBackend(EngineHandle, Backend):
    """A GGUF model on edgesdk's own engine, with a KV cache of n_seq sequences of n_ctx positions.

    Made by edgesdk.load through the registry, or directly from a path or an
    open GGUFFile: NativeBackend(path, n_ctx=512, threads=2). repack=False keeps
    every matrix in the file's GGUF layout (slower; for comparisons)."""

    name = "native"
    description = "edgesdk's own engine and kernels (CPU)"
    kv_types = ("f16", "q8_0")
    options = ("repack",)
    auto_rank = 10
    keeps_file = True
    max_seqs = MAX_N_SEQ

    # -- the class: before loading --------------------------------------------------

    @classmethod
    def available(cls) -> Availability:
        try:
            _engine()
        except (NativeBuildError, OSError) as exc:
            return Availability(False, str(exc))
        return Availability(True)

    @classmethod
    def check(cls, source: ModelSource, config: LoadConfig) -> _Checked:
        _check_shape(source.path, source.shape)
        _check_tensors(source.file, source.shape)
        _check_settings(source.shape, config)
        return _Checked(source=source, desc=_Description(source.file, source.shape), owns_file=False)

    @classmethod
    def _engine_needs(cls, checked: _Checked, config: LoadConfig) -> Dict[str, int]:
        ek = _engine()
        checked.desc.configure(config, _check_settings(checked.source.shape, config))
        mem = ek.EkModelMemory()
        ek.check(ek.lib.ek_model_memory_needs(ctypes.byref(checked.desc.desc), ctypes.byref(mem)),
                 "ek_model_memory_needs")
        return checked.desc.engine_parts(mem)

    @classmethod
    def memory_parts(cls, checked: _Checked, config: LoadConfig) -> Dict[str, int]:
        shape = checked.source.shape
        parts = cls._engine_needs(checked, config)
        parts["scratch"] += 4 * shape.n_vocab * config.n_seq  # each sequence's last logits come back as numpy rows
        parts["tokenizer"] = memory.gguf_metadata_bytes(shape) + memory.tokenizer_table_bytes(shape)
        parts["runtime"] = memory.PYTHON_NUMPY_RSS + NATIVE_RUNTIME_RSS
        # Virtual memory: the whole file is mapped; everything else is allocated as planned.
        parts["address_space"] = (shape.file_bytes + parts["weights_owned"] + parts["kv_cache"] + parts["scratch"]
                                  + parts["tokenizer"] + config.threads * memory.THREAD_ADDRESS_SPACE)
        return parts

    @classmethod
    def open(cls, checked: _Checked, config: LoadConfig) -> "NativeBackend":
        checked.owns_file = True      # load() hands the file over: the engine reads weights from it
        return cls(checked, n_ctx=config.n_ctx, threads=config.threads, kv_type=config.kv_type,
                   n_batch=config.n_batch, repack=config.options.get("repack", DEFAULT_REPACK), n_seq=config.n_seq)

    # -- loading -----------------------------------------------------------------------

    def __init__(self, model: Union[ModelArg, _Checked], n_ctx: int, threads: int, kv_type: str = "f16",
                 n_batch: int = 512, repack: bool = DEFAULT_REPACK, n_seq: int = 1):
        self._handle: Optional[int] = None
        self._checked: Optional[_Checked] = None
        config = LoadConfig(backend=self.name, n_ctx=n_ctx, threads=threads, kv_type=kv_type, n_batch=n_batch,
                            n_seq=n_seq, options={"repack": repack})
        self._checked = model if isinstance(model, _Checked) else _check(model, config)
        try:
            ek = _engine()
            self._checked.desc.configure(config, repack)
            handle = ctypes.c_void_p()
            ek.check(ek.lib.ek_model_create(ctypes.byref(self._checked.desc.desc), ctypes.byref(handle)),
                     "ek_model_create")
            self._handle = handle.value
        except BaseException:
            self.close()
            raise
        self.shape = self._checked.source.shape
        self.n_ctx = n_ctx
        self.n_vocab = self.shape.n_vocab
        self.threads = threads
        self.kv_type = kv_type
        self._seq_n_past = [0] * n_seq   # positions each sequence's cache holds

    # -- Backend -----------------------------------------------------------

    def _checked_entry(self, seq: int, ids: Sequence[int], start) -> np.ndarray:
        """ids of one sequence's step as a contiguous int32 array, after every check the engine trusts."""
        arr = np.ascontiguousarray(check_ids(ids, self.n_vocab))
        where = "" if self.n_seq == 1 else f" of sequence {seq}"
        check_start(start, arr.size, self._seq_n_past[seq], self.n_ctx, where)
        return arr

    def eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        handle = self._require_open()
        arr = self._checked_entry(0, ids, start)
        rows = arr.size if all_logits else 1
        logits = np.empty((rows, self.n_vocab), dtype=np.float32)
        # Forget first: if the engine fails midway, the cache past `start` is not trusted.
        self._seq_n_past[0] = int(start)
        ek = _engine()
        status = ek.lib.ek_model_eval(handle, arr.ctypes.data_as(ek.c_int32_p), arr.size, start,
                                      logits.ctypes.data_as(ek.c_float_p), int(bool(all_logits)))
        ek.check(status, "ek_model_eval")
        self._seq_n_past[0] = int(start) + arr.size
        return logits if all_logits else logits[0]

    def abort(self) -> bool:
        handle = self._handle
        if handle:
            _engine().lib.ek_model_abort(handle)
        return True

    @property
    def n_past(self) -> int:
        return self._seq_n_past[0]

    # -- several sequences -------------------------------------------------

    @property
    def n_seq(self) -> int:
        return len(self._seq_n_past)

    def eval_batch(self, entries: Sequence[SeqInput]) -> List[np.ndarray]:
        handle = self._require_open()
        check_seq_inputs(entries, self.n_seq)
        arrays = [self._checked_entry(e.seq, e.ids, e.start) for e in entries]
        ek = _engine()
        inputs = (ek.EkSeqInput * len(entries))()
        for i, (e, arr) in enumerate(zip(entries, arrays)):
            inputs[i].ids, inputs[i].n = arr.ctypes.data_as(ek.c_int32_p), arr.size
            inputs[i].start, inputs[i].seq = int(e.start), e.seq
        logits = np.empty((len(entries), self.n_vocab), dtype=np.float32)
        for e in entries:  # forget first, as in eval
            self._seq_n_past[e.seq] = int(e.start)
        ek.check(ek.lib.ek_model_eval_batch(handle, inputs, len(entries), logits.ctypes.data_as(ek.c_float_p)),
                 "ek_model_eval_batch")
        for e, arr in zip(entries, arrays):
            self._seq_n_past[e.seq] = int(e.start) + arr.size
        return list(logits)

    def seq_n_past(self, seq: int) -> int:
        check_seq_inputs([SeqInput(seq, (0,), 0)], self.n_seq)
        return self._seq_n_past[seq]

    def copy_seq(self, src: int, dst: int, n: int) -> None:
        handle = self._require_open()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidArgumentError(f"n must be a non-negative integer, got {n!r}")
        super().copy_seq(src, dst, n)  # sequence ids, and n <= what src holds
        if src != dst:
            _engine().lib.ek_model_seq_copy(handle, src, dst, int(n))
        self._seq_n_past[dst] = int(n)

    def activation_sums_len(self) -> int:
        """Doubles record_activation_squares needs (layout: ek_model_set_activation_sums)."""
        return int(_engine().lib.ek_model_activation_sums_len(self._require_open()))

    def record_activation_squares(self, sums: Optional[np.ndarray]) -> None:
        """While set, every eval adds each matrix input's squared columns to `sums` (float64,
        activation_sums_len() values, kept alive here); None stops."""
        handle = self._require_open()
        if sums is not None:
            if not isinstance(sums, np.ndarray) or sums.dtype != np.float64 or not sums.flags.c_contiguous \
                    or sums.shape != (self.activation_sums_len(),) or not sums.flags.writeable:
                raise InvalidArgumentError(f"sums must be a writable contiguous float64 array of "
                                           f"{self.activation_sums_len()} values")
        self._activation_sums = sums
        _engine().lib.ek_model_set_activation_sums(handle, None if sums is None else sums.ctypes.data)

    def save_state(self, seq: int = 0) -> bytes:
        """Sequence seq's cache (sequence 0's, as the Backend contract says, by default)."""
        handle = self._require_open()
        n_past = self.seq_n_past(seq)
        size = int(_engine().lib.ek_model_state_bytes(handle, n_past))
        buf = ctypes.create_string_buffer(size)
        _engine().lib.ek_model_state_save(handle, seq, n_past, buf)
        return self._state_header(n_past) + buf.raw

    def load_state(self, blob: bytes, n_past: int, seq: int = 0) -> None:
        """Restore sequence seq's cache (sequence 0's by default) from save_state of any sequence."""
        handle = self._require_open()
        check_seq_inputs([SeqInput(seq, (0,), 0)], self.n_seq)
        payload = self._state_payload(blob, n_past, lambda n: int(_engine().lib.ek_model_state_bytes(handle, n)))
        _engine().lib.ek_model_state_load(handle, seq, n_past, payload)
        self._seq_n_past[seq] = int(n_past)

    def info(self) -> BackendInfo:
        return BackendInfo(name="native", device=f"cpu ({_engine().isa_current()}, {threads_text(self.threads)})",
                           n_ctx=self.n_ctx, n_vocab=self.n_vocab, threads=self.threads, kv_type=self.kv_type)

    def memory_used(self) -> dict:
        """Bytes the loaded engine holds, in memory_requirements' terms."""
        mem = _engine().EkModelMemory()
        _engine().lib.ek_model_memory_used(self._require_open(), ctypes.byref(mem))
        return self._checked.desc.engine_parts(mem)

    def _free_engine(self, handle: int) -> None:
        _engine().lib.ek_model_free(handle)


__all__ = ["EngineHandle", "NativeBackend", "memory_requirements", "SUPPORTED_ARCHITECTURES", "DEFAULT_REPACK"]
