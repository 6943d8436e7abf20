"""The cuda backend: edgesdk's engine on an NVIDIA GPU (native/cuda/, libedgecuda.so).

The model is checked and described exactly as for the native backend (its _check_shape,
_check_tensors and ek_model_desc, from backends/native.py); the CUDA engine then converts each
matrix to its GPU layout on the host and uploads it, runs every layer on the device and
returns logits once per pass. One sequence, an f16 KV cache. On integrated memory (Jetson) the
weights are held once: the file's pages are released as each matrix is uploaded, and the plan
counts the GPU copy in system RAM (memory.gpu_plan_parts); on a discrete GPU the plan is the
device's, checked against its free memory (plan_budget), before anything is allocated.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

from .. import _cuda, memory
from ..config import LoadConfig
from ..errors import InvalidArgumentError, NativeBuildError, UnsupportedModelError
from . import register
from .base import (Availability, Backend, BackendInfo, ModelSource, check_common_settings, check_ids, check_start,
                   resolved)
from .native import NATIVE_RUNTIME_RSS, EngineHandle, _check_shape, _check_tensors, _Description, _engine


@dataclass
class _Checked:
    source: ModelSource
    desc: _Description
    gpu: _cuda.GpuInfo
    owns_file: bool = False


def _check_settings(source: ModelSource, config: LoadConfig) -> int:
    """The settings the CUDA engine takes; returns the device index."""
    check_common_settings(CudaBackend, config)
    shape = source.shape
    if shape.head_dim_k % 32 or shape.head_dim_k > _cuda.MAX_HEAD_DIM:
        raise UnsupportedModelError(f"{source.path}: head dimension {shape.head_dim_k}: the cuda backend takes "
                                    f"multiples of 32 up to {_cuda.MAX_HEAD_DIM}")
    for name, info in source.file.tensors.items():
        if len(info.shape) == 2 and info.shape[0] % 32:
            raise UnsupportedModelError(f"{source.path}: tensor {name!r} has {info.shape[0]} columns, the GPU "
                                        f"layouts need a multiple of 32")
    device = config.options.get("device", 0)
    if isinstance(device, bool) or not isinstance(device, int) or device < 0:
        raise InvalidArgumentError(f"the cuda backend's option device must be a GPU index >= 0, got {device!r}")
    count, reason = _cuda.device_count()
    if device >= count:
        raise InvalidArgumentError(f"device {device}: {count} CUDA device(s) here" + (f" ({reason})" if reason else ""))
    supported, why = _cuda.device_supported(device)
    if not supported:
        raise UnsupportedModelError(f"CUDA device {device} cannot run this build of the library: {why}")
    return device


@register
class CudaBackend(EngineHandle, Backend):
    """A GGUF model on edgesdk's CUDA engine, one sequence with an f16 KV cache."""

    name = "cuda"
    description = "edgesdk's own engine on an NVIDIA GPU (CUDA)"
    kv_types = ("f16",)
    options = ("device",)
    auto_rank = 5          # before native: a usable GPU is faster than the CPU
    keeps_file = True
    max_seqs = 1
    state_magic = b"ECKV"   # the native engine's header and row layout, under its own magic

    @classmethod
    def available(cls) -> Availability:
        try:
            ek, lib = _engine(), _cuda.library()
        except (NativeBuildError, OSError) as exc:
            return Availability(False, str(exc))
        shared = ((ek.EK_STRUCT_TENSOR_DESC, ek.EkTensorDesc), (ek.EK_STRUCT_MODEL_DESC, ek.EkModelDesc))
        for which, structure in shared:
            if lib.ec_struct_size(which) != ctypes.sizeof(structure):
                return Availability(False, f"{_cuda.library_path()} was built from another edgekern.h than the "
                                           f"native library ({structure.__name__}): rebuild both (pip install .)")
        gpus, reason = _cuda.gpus()
        if not gpus:
            return Availability(False, f"no CUDA device: {reason}")
        if not any(_cuda.device_supported(g.index)[0] for g in gpus):
            found = ", ".join(f"{g.name} (sm_{g.compute_capability[0]}{g.compute_capability[1]})" for g in gpus)
            return Availability(False, f"no GPU the library was built for ({found}: "
                                       f"{_cuda.device_supported(gpus[0].index)[1]}); rebuild with "
                                       f"EDGESDK_CUDA_ARCHS naming its architecture")
        return Availability(True)

    @classmethod
    def check(cls, source: ModelSource, config: LoadConfig) -> _Checked:
        _check_shape(source.path, source.shape)
        _check_tensors(source.file, source.shape)
        device = _check_settings(source, config)
        return _Checked(source=source, desc=_Description(source.file, source.shape), gpu=_cuda.device_info(device))

    @classmethod
    def _needs(cls, checked: _Checked, config: LoadConfig) -> Dict[str, int]:
        desc = checked.desc
        desc.configure(config, repack=False)
        desc.desc.n_batch = min(desc.desc.n_batch, _cuda.MAX_BATCH)   # longer prompts go in several passes
        desc.desc.weight_flags = _engine().EK_WEIGHT_RELEASE_SOURCE
        mem = _cuda.EcModelMemory()
        _cuda.check(_cuda.library().ec_model_memory_needs(ctypes.byref(desc.desc), ctypes.byref(mem)),
                    "ec_model_memory_needs")
        return {name: int(getattr(mem, name)) for name, _ in mem._fields_}

    @classmethod
    def memory_parts(cls, checked: _Checked, config: LoadConfig) -> Dict[str, int]:
        shape, needs = checked.source.shape, cls._needs(checked, config)
        host = {"staging": needs["host_staging"], "pinned": needs["host_pinned"],
                "logits": 4 * shape.n_vocab,   # the last logits come back as a numpy row
                "tokenizer": memory.gguf_metadata_bytes(shape) + memory.tokenizer_table_bytes(shape),
                "runtime": memory.PYTHON_NUMPY_RSS + NATIVE_RUNTIME_RSS + memory.CUDA_RUNTIME_RSS}
        parts = memory.gpu_plan_parts(needs, host, checked.gpu.integrated)
        # the file is mapped whole; the CUDA runtime reserves address space of its own (not counted)
        parts["address_space"] = shape.file_bytes + sum(parts.values())
        return parts

    @classmethod
    def plan_budget(cls, checked: _Checked, host: memory.Budget) -> memory.Budget:
        gpu = checked.gpu
        return memory.gpu_budget(host, f"cuda:{gpu.index} ({gpu.name})", gpu.free_bytes, gpu.integrated)

    @classmethod
    def open(cls, checked: _Checked, config: LoadConfig) -> "CudaBackend":
        checked.owns_file = True
        return cls(checked, config)

    def __init__(self, checked: _Checked, config: LoadConfig):
        self._handle: Optional[int] = None
        self._checked = checked
        try:
            n_ctx, threads = resolved(config)
            self._needs(checked, config)      # the description configured for this context
            gpu = checked.gpu
            handle = ctypes.c_void_p()
            _cuda.check(_cuda.library().ec_model_create(ctypes.byref(checked.desc.desc), gpu.index,
                                                        ctypes.byref(handle)), "ec_model_create")
            self._handle = handle.value
        except BaseException:
            self.close()
            raise
        self.gpu = gpu
        self.shape = checked.source.shape
        self.n_ctx, self.threads = n_ctx, threads
        self.n_vocab = self.shape.n_vocab
        self.kv_type = config.kv_type
        self._n_past = 0

    def eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        handle = self._require_open()
        arr = np.ascontiguousarray(check_ids(ids, self.n_vocab))
        check_start(start, arr.size, self._n_past, self.n_ctx)
        logits = np.empty((arr.size if all_logits else 1, self.n_vocab), dtype=np.float32)
        self._n_past = int(start)   # forget first: a failed pass leaves nothing trusted past start
        _cuda.check(_cuda.library().ec_model_eval(handle, arr.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                                  arr.size, int(start),
                                                  logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                  int(bool(all_logits))), "ec_model_eval")
        self._n_past = int(start) + arr.size
        return logits if all_logits else logits[0]

    @property
    def n_past(self) -> int:
        return self._n_past

    def save_state(self) -> bytes:
        handle = self._require_open()
        size = int(_cuda.library().ec_model_state_bytes(handle, self._n_past))
        buf = ctypes.create_string_buffer(size)
        _cuda.check(_cuda.library().ec_model_state_save(handle, self._n_past, buf), "ec_model_state_save")
        return self._state_header(self._n_past) + buf.raw

    def load_state(self, blob: bytes, n_past: int) -> None:
        handle = self._require_open()
        payload = self._state_payload(blob, n_past, lambda n: int(_cuda.library().ec_model_state_bytes(handle, n)))
        _cuda.check(_cuda.library().ec_model_state_load(handle, int(n_past), payload), "ec_model_state_load")
        self._n_past = int(n_past)

    def info(self) -> BackendInfo:
        major, minor = self.gpu.compute_capability
        return BackendInfo(name="cuda", device=f"cuda:{self.gpu.index} ({self.gpu.name}, sm_{major}{minor})",
                           n_ctx=self.n_ctx, n_vocab=self.n_vocab, threads=self.threads, kv_type=self.kv_type)

    def _free_engine(self, handle: int) -> None:
        _cuda.library().ec_model_free(handle)


__all__ = ["CudaBackend"]
