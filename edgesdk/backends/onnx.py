"""The ONNX Runtime backend: the GGUF exported to an ONNX graph (edgesdk.onnx_export), run on an
execution provider (OpenVINO's NPU or GPU, QNN, CUDA/TensorRT, or the CPU).

The export is made on first use and cached under $EDGESDK_HOME/onnx, keyed by the GGUF's
sha256 and the export options. The KV cache lives here, in numpy arrays of kv_type:
the dynamic graph takes the cache of positions 0..start-1 and returns it grown by the new
tokens; the static graph (fixed context and chunk, for NPU compilers) takes the whole cache
and returns only the chunk's rows, which are written into it here.

Options (LoadConfig.options):
  providers        list of provider names or (name, {option: value}) pairs, tried in order;
                   default: chosen from the hardware probe (choose_providers)
  static           fixed-shape graph; default: True for an NPU provider, else False
  chunk            tokens per run of the static graph (default 64)
  accuracy_4bit, accuracy_8bit   MatMulNBits accuracy_level of 4- and 8-bit weights (ExportOptions)
  attention        "plain" or "gqa" (GroupQueryAttention, dynamic graph only; ExportOptions)
"""
from __future__ import annotations

import logging
import os
import re
import struct
import tempfile
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import memory
from ..config import LoadConfig
from ..errors import BackendUnavailableError, InvalidArgumentError, NativeError, ProviderUnavailableError
from . import register
from .base import (Availability, Backend, BackendInfo, ModelSource, check_common_settings, check_ids, check_start, check_state,
                   resolved, threads_text)

log = logging.getLogger("edgesdk")

INSTALL_HINT = "pip install 'edgesdk[onnx]' (onnxruntime and onnx)"
CPU = "CPUExecutionProvider"
NPU_PROVIDERS = ("QNNExecutionProvider",)          # and OpenVINO with device_type NPU
DYNAMIC_TABLE_POSITIONS = 4096                      # smallest RoPE table a dynamic export covers
STATE_MAGIC = b"EKOX"
STATE_HEADER = struct.Struct("<4sIIIIq")            # magic, n_layer, n_kv_heads, head_dim, kv itemsize, n_past
OPTION_NAMES = ("providers", "static", "chunk", "accuracy_4bit", "accuracy_8bit", "attention")
# -- ONNX Runtime's memory on the CPU provider, measured (benchmarks/bench_onnx.py, x86-64,
#    onnxruntime 1.32) as RSS growth: `import onnxruntime, onnx` and edgesdk.loading +42 MiB over numpy; a session holds
#    the initializers, less those MatMulNBits repacks and frees, plus the repacked copy of a tied
#    embedding, whose original the Gather still reads: 1.68 (SmolLM2) and 1.46 (Gemma-3) times
#    its bytes above the initializers.
ORT_LIBRARY_RSS = 42 * memory.MIB
ORT_SHARED_PREPACK_FACTOR = 1.7
# The arena keeps the largest activations of a run: per token, about one layer's widest tensors
# (measured after a 512-token prompt: 40 MiB on SmolLM2 against 44 MiB counted this way).
ORT_ACTIVATION_FACTOR = 1


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(f"the onnx backend needs onnxruntime ({exc}); {INSTALL_HINT}") from None
    return onnxruntime


ProviderSpec = Tuple[str, Dict[str, str]]


def _provider_specs(value: Any) -> List[ProviderSpec]:
    """The providers option as [(name, options)]; InvalidArgumentError for another shape."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidArgumentError(f"providers must be a non-empty list of provider names, got {value!r}")
    specs = []
    for item in value:
        if isinstance(item, str):
            specs.append((item, {}))
        elif (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
              and isinstance(item[1], dict)):
            specs.append((item[0], {str(k): str(v) for k, v in item[1].items()}))
        else:
            raise InvalidArgumentError(f"a provider is a name or (name, options), got {item!r}")
    return specs


def choose_providers(available: Sequence[str], npu_vendors: Sequence[str] = (), cuda: bool = False,
                     openvino_devices: Sequence[str] = ()) -> List[ProviderSpec]:
    """The providers to use when none are given: OpenVINO on an Intel NPU, then on a GPU, then QNN on
    a Qualcomm NPU, CUDA/TensorRT where a CUDA device was found, and the CPU provider last."""
    specs: List[ProviderSpec] = []
    if "OpenVINOExecutionProvider" in available:
        if "intel" in npu_vendors or "NPU" in openvino_devices:
            specs.append(("OpenVINOExecutionProvider", {"device_type": "NPU"}))
        elif any(d.startswith("GPU") for d in openvino_devices):
            specs.append(("OpenVINOExecutionProvider", {"device_type": "GPU"}))
    if "QNNExecutionProvider" in available and "qualcomm" in npu_vendors:
        specs.append(("QNNExecutionProvider", {"backend_path": "libQnnHtp.so"}))
    if cuda:
        specs += [(name, {}) for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if name in available]
    specs.append((CPU, {}))
    return specs


def _probe_providers() -> List[ProviderSpec]:
    from .. import hardware
    ort = _ort()
    info = hardware.probe()
    devices: Sequence[str] = ()
    # onnxruntime-openvino has this in its binding only
    get_devices = getattr(getattr(ort.capi, "_pybind_state", None), "get_available_openvino_device_ids", None)
    if get_devices is not None:
        try:
            devices = tuple(get_devices())
        except Exception as exc:        # an OpenVINO install without a usable plugin
            log.debug("OpenVINO device query failed: %s", exc)
    return choose_providers(ort.get_available_providers(), [d.vendor for d in info.accelerators.npu_devices],
                            cuda=bool(info.board.cuda_libraries), openvino_devices=devices)


def is_npu(spec: ProviderSpec) -> bool:
    name, opts = spec
    return name in NPU_PROVIDERS or (name == "OpenVINOExecutionProvider" and opts.get("device_type", "").startswith("NPU"))


@dataclass
class _Checked:
    source: ModelSource
    providers: List[ProviderSpec]
    export_options: Any        # onnx_export.ExportOptions


def _export_options(source: ModelSource, config: LoadConfig, providers: List[ProviderSpec]):
    """The export this load needs (config.n_ctx may still be None when load() checks a model)."""
    from ..onnx_export import ExportOptions, check_options
    n_ctx, opts = config.n_ctx, config.options
    static = opts.get("static", is_npu(providers[0]))
    if not isinstance(static, bool):
        raise InvalidArgumentError(f"the onnx backend's option static must be True or False, got {static!r}")
    base = ExportOptions()
    chunk = opts.get("chunk", base.chunk)
    n_ctx = n_ctx or source.shape.context_length or DYNAMIC_TABLE_POSITIONS
    if static:
        table = n_ctx                  # the static cache is exactly the context
    else:                              # a few table sizes, so that most contexts share one export
        table = DYNAMIC_TABLE_POSITIONS
        while table < n_ctx:
            table *= 2
    kv_dtype = "f16" if config.kv_type == "f16" else "f32"
    return check_options(replace(base, static=static, n_ctx=table, chunk=chunk, kv_dtype=kv_dtype,
                                 accuracy_4bit=opts.get("accuracy_4bit", base.accuracy_4bit),
                                 accuracy_8bit=opts.get("accuracy_8bit", base.accuracy_8bit),
                                 attention=opts.get("attention", "plain" if static else base.attention)))


def _capture_stderr(fn):
    """fn()'s result and what the native library wrote to file descriptor 2 meanwhile."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return result, sink.read(1 << 20).decode("utf-8", "replace")


_PLACED_ALL = re.compile(r"All nodes placed on \[(\w+)\]\. Number of nodes: (\d+)")
_PLACED_SOME = re.compile(r"Node\(s\) placed on \[(\w+)\]\. Number of nodes: (\d+)")


def node_placement(log_text: str) -> Dict[str, int]:
    """Nodes per execution provider from ONNX Runtime's session log ({} when it said nothing)."""
    counts: Dict[str, int] = {}
    for pattern in (_PLACED_ALL, _PLACED_SOME):
        for name, n in pattern.findall(log_text):
            counts[name] = counts.get(name, 0) + int(n)
    return counts


@register
class OnnxBackend(Backend):
    """A GGUF model exported to ONNX, on ONNX Runtime's execution providers."""

    name = "onnx"
    description = "ONNX Runtime on its execution providers (OpenVINO NPU/GPU, QNN, CUDA, CPU), from an ONNX export"
    kv_types = ("f16", "f32")
    options = OPTION_NAMES
    auto_rank = None           # only when asked for: the first load exports the model

    # -- the class: before loading --------------------------------------------------

    @classmethod
    def available(cls) -> Availability:
        try:
            _ort()
            import onnx  # noqa: F401  (the exporter)
        except (BackendUnavailableError, ImportError) as exc:
            return Availability(False, f"{exc}; {INSTALL_HINT}")
        return Availability(True)

    @classmethod
    def check(cls, source: ModelSource, config: LoadConfig) -> _Checked:
        from ..onnx_export.graph import check_exportable
        check_common_settings(cls, config)
        check_exportable(source.file, source.shape)
        providers = cls._providers(config)
        return _Checked(source=source, providers=providers,
                        export_options=_export_options(source, config, providers))

    @classmethod
    def _providers(cls, config: LoadConfig) -> List[ProviderSpec]:
        if "providers" not in config.options or config.options["providers"] is None:
            return _probe_providers()
        specs = _provider_specs(config.options["providers"])
        have = _ort().get_available_providers()
        for name, _ in specs:
            if name not in have:
                raise ProviderUnavailableError(f"execution provider {name} is not in this onnxruntime build "
                                               f"(it has {', '.join(have)})")
        return specs

    @classmethod
    def memory_parts(cls, checked: _Checked, config: LoadConfig) -> Dict[str, int]:
        from ..onnx_export.graph import initializer_bytes, tied_embedding_bytes
        shape, n_ctx = checked.source.shape, config.n_ctx
        options = _export_options(checked.source, config, checked.providers)
        init = initializer_bytes(checked.source.file, shape, options)
        weights = init + int(ORT_SHARED_PREPACK_FACTOR * tied_embedding_bytes(checked.source.file))
        item = 2 if options.kv_dtype == "f16" else 4
        kv_len = options.n_ctx if options.static else n_ctx
        kv = 2 * shape.n_layer * shape.n_head_kv * shape.head_dim_k * kv_len * item
        rows = options.chunk if options.static else min(config.n_batch, n_ctx)
        keys = kv_len + (options.chunk if options.static else 0)
        per_token = (3 * shape.n_embd + 3 * shape.n_ff + 2 * shape.n_head * shape.head_dim_k
                     + 3 * shape.n_head * keys)
        # The dynamic graph returns the grown cache while its input is still held: one more cache,
        # and float32 copies of one layer's keys and values for the attention products.
        transient = (kv if not options.static else 0) + 2 * 4 * shape.n_head_kv * shape.head_dim_k * keys
        logits = 4 * shape.n_vocab * (options.chunk if options.static else 1)
        scratch = ORT_ACTIVATION_FACTOR * 4 * rows * per_token + transient + logits
        tokenizer = memory.gguf_metadata_bytes(shape) + memory.tokenizer_table_bytes(shape)
        runtime = memory.PYTHON_NUMPY_RSS + ORT_LIBRARY_RSS
        address_space = (weights + init + kv + scratch + tokenizer + runtime
                         + config.threads * memory.THREAD_ADDRESS_SPACE)
        return {"weights_mapped": 0, "weights_owned": weights, "kv_cache": kv, "scratch": scratch,
                "tokenizer": tokenizer, "runtime": runtime, "address_space": address_space}

    @classmethod
    def open(cls, checked: _Checked, config: LoadConfig) -> "OnnxBackend":
        return cls(checked, config)

    # -- loading -----------------------------------------------------------------------

    def __init__(self, checked: _Checked, config: LoadConfig):
        from .. import onnx_export
        n_ctx, threads = resolved(config)
        ort = _ort()
        self._session = None
        shape = checked.source.shape
        self.shape, self.n_ctx, self.n_vocab, self.threads = shape, n_ctx, shape.n_vocab, threads
        self.kv_type = config.kv_type
        self.export_options = _export_options(checked.source, config, checked.providers)
        self.static = self.export_options.static
        self.n_batch = min(config.n_batch, n_ctx)
        self.export = onnx_export.cached(checked.source.path, self.export_options)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 1 if checked.providers[0][0] != CPU else 3   # INFO says where nodes run
        names = [name for name, _ in checked.providers]
        opts = [o for _, o in checked.providers]

        def make():
            return ort.InferenceSession(str(self.export.graph_path), so, providers=names, provider_options=opts)
        try:
            self._session, session_log = _capture_stderr(make)
        except Exception as exc:    # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BackendUnavailableError(f"ONNX Runtime could not load {self.export.graph_path} on "
                                          f"{', '.join(names)}: {exc}") from None
        self.placement = node_placement(session_log) or {}
        self.providers = list(self._session.get_providers())
        self._kv_dtype = np.float16 if self.export_options.kv_dtype == "f16" else np.float32
        self._n_kv, self._hd = shape.n_head_kv, shape.head_dim_k
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._n_past = 0
        if self.static:
            self._chunk = self.export_options.chunk
            self._cache_len = self.export_options.n_ctx
            self._k = [np.zeros((1, self._n_kv, self._cache_len, self._hd), self._kv_dtype)
                       for _ in range(shape.n_layer)]
            self._v = [np.zeros_like(k) for k in self._k]
            self._local = any(i.name == "attention_bias_local" for i in self._session.get_inputs())
        else:
            empty = np.zeros((1, self._n_kv, 0, self._hd), self._kv_dtype)
            self._k = [empty] * shape.n_layer
            self._v = [empty] * shape.n_layer

    # -- Backend -----------------------------------------------------------

    def eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        self._require_open()
        arr = check_ids(ids, self.n_vocab).astype(np.int64)
        check_start(start, arr.size, self._n_past, self.n_ctx)
        self._truncate(start)
        step = self._chunk if self.static else self.n_batch
        rows = []
        for done in range(0, arr.size, step):
            piece = arr[done:done + step]
            last = done + step >= arr.size
            rows.append((self._run_static if self.static else self._run_dynamic)(piece, all_logits or not last))
        return np.concatenate(rows) if all_logits else rows[-1][-1]

    def _run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        try:
            return dict(zip(self._output_names, self._session.run(None, feeds)))
        except Exception as exc:     # onnxruntime's own error types; inputs were checked above
            raise NativeError(f"ONNX Runtime failed running {self.export.graph_path} on "
                              f"{self.providers[0]}: {exc}") from None

    def _truncate(self, start: int) -> None:
        if start < self._n_past and not self.static:
            self._k = [np.ascontiguousarray(k[:, :, :start]) for k in self._k]
            self._v = [np.ascontiguousarray(v[:, :, :start]) for v in self._v]
        self._n_past = start

    def _run_dynamic(self, ids: np.ndarray, every_row: bool) -> np.ndarray:
        feeds = {"input_ids": ids[None], "logits_from": np.array([0 if every_row else ids.size - 1], np.int64)}
        for il in range(self.shape.n_layer):
            feeds[f"past_key_values.{il}.key"] = self._k[il]
            feeds[f"past_key_values.{il}.value"] = self._v[il]
        out = self._run(feeds)
        self._k = [out[f"present.{il}.key"] for il in range(self.shape.n_layer)]
        self._v = [out[f"present.{il}.value"] for il in range(self.shape.n_layer)]
        self._n_past += ids.size
        return out["logits"][0]

    def _static_bias(self, pos: np.ndarray, n: int, window: Optional[int]) -> np.ndarray:
        """(1, 1, C, L + C) additive bias: each query sees the cached positions before the chunk and
        the chunk's valid tokens up to itself (within the window, for sliding layers)."""
        from ..onnx_export.graph import MASKED
        C, L, start = self._chunk, self._cache_len, self._n_past
        key_pos = np.concatenate([np.arange(L), start + np.arange(C)])
        valid = np.concatenate([np.arange(L) < start, np.arange(C) < n])
        visible = valid[None, :] & (key_pos[None, :] <= pos[:, None])
        if window:
            visible &= pos[:, None] - key_pos[None, :] < window
        return np.where(visible, 0.0, MASKED).astype(np.float32)[None, None]

    def _run_static(self, ids: np.ndarray, every_row: bool) -> np.ndarray:
        C, n, start = self._chunk, ids.size, self._n_past
        padded = np.zeros((1, C), np.int64)
        padded[0, :n] = ids
        pos = start + np.arange(C, dtype=np.int64)
        feeds = {"input_ids": padded, "position_ids": pos[None], "attention_bias": self._static_bias(pos, n, None)}
        if self._local:
            feeds["attention_bias_local"] = self._static_bias(pos, n, self.shape.sliding_window)
        for il in range(self.shape.n_layer):
            feeds[f"past_key.{il}"] = self._k[il]
            feeds[f"past_value.{il}"] = self._v[il]
        out = self._run(feeds)
        for il in range(self.shape.n_layer):
            self._k[il][:, :, start:start + n] = out[f"new_key.{il}"][:, :, :n]
            self._v[il][:, :, start:start + n] = out[f"new_value.{il}"][:, :, :n]
        self._n_past += n
        return out["logits"][0, :n]

    @property
    def n_past(self) -> int:
        return self._n_past

    def _state_header(self, n_past: int) -> bytes:
        return STATE_HEADER.pack(STATE_MAGIC, self.shape.n_layer, self._n_kv, self._hd,
                                 np.dtype(self._kv_dtype).itemsize, n_past)

    def _state_bytes(self, n_past: int) -> int:
        return 2 * self.shape.n_layer * self._n_kv * n_past * self._hd * np.dtype(self._kv_dtype).itemsize

    def save_state(self) -> bytes:
        self._require_open()
        n = self._n_past
        parts = [self._state_header(n)]
        for k, v in zip(self._k, self._v):
            parts += [np.ascontiguousarray(k[:, :, :n]).tobytes(), np.ascontiguousarray(v[:, :, :n]).tobytes()]
        return b"".join(parts)

    def load_state(self, blob: bytes, n_past: int) -> None:
        self._require_open()

        def mismatch(saved):
            magic, n_layer, n_kv, hd, item, saved_past = saved
            return (f"saved magic={magic!r} n_layer={n_layer}, n_kv_heads={n_kv}, head_dim={hd}, kv bytes={item}, "
                    f"n_past={saved_past}; expected n_layer={self.shape.n_layer}, n_kv_heads={self._n_kv}, "
                    f"head_dim={self._hd}, kv bytes={np.dtype(self._kv_dtype).itemsize}, n_past={n_past}")
        head = check_state(blob, n_past, self.n_ctx, STATE_HEADER, self._state_header, self._state_bytes, mismatch)
        data = np.frombuffer(blob, dtype=self._kv_dtype, offset=head).reshape(
            self.shape.n_layer, 2, 1, self._n_kv, n_past, self._hd)
        if self.static:
            for il in range(self.shape.n_layer):
                self._k[il][:, :, :n_past] = data[il, 0]
                self._v[il][:, :, :n_past] = data[il, 1]
        else:
            self._k = [data[il, 0].copy() for il in range(self.shape.n_layer)]
            self._v = [data[il, 1].copy() for il in range(self.shape.n_layer)]
        self._n_past = n_past

    def info(self) -> BackendInfo:
        running = self.providers[0] if self.providers else "none"
        device = f"{running} ({threads_text(self.threads)}, {'static' if self.static else 'dynamic'} graph"
        off = {name: n for name, n in self.placement.items() if name != running}
        if off:
            device += "; nodes elsewhere: " + ", ".join(f"{n} on {name}" for name, n in sorted(off.items()))
        device += ")"
        return BackendInfo(name=self.name, device=device, n_ctx=self.n_ctx, n_vocab=self.n_vocab,
                           threads=self.threads, kv_type=self.kv_type)

    def close(self) -> None:
        self._session = None
        self._k = self._v = []

    def _require_open(self) -> None:
        if self._session is None:
            raise InvalidArgumentError("the onnx backend is closed")


__all__ = ["OnnxBackend", "choose_providers", "is_npu", "node_placement"]
