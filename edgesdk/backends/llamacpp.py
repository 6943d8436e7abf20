"""llama.cpp through llama-cpp-python's low-level binding: the reference backend.

It fills backends/base.Backend with llama.cpp's own context: n_seq sequences
in the KV cache (llama.cpp's n_seq_max, one stream of n_ctx cells each: kv_unified
off, so no sequence can take another's room), `llama_memory_seq_rm` to forget
positions >= start, `llama_decode` in batches of at most n_batch tokens tagged with
their sequence, `llama_memory_seq_cp` for a shared prefix, and the per-sequence
state API for save_state/load_state (sequence 0).

`LlamaCppTokenizer` exposes llama.cpp's vocabulary (loaded vocab-only) with
edgesdk's Tokenizer interface; it is the reference tokenizer in tests and the
tokenizer `edgesdk.load` uses while edgesdk.tokenizer is not installed.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from .. import gguf, memory
from ..config import MAX_N_SEQ, LoadConfig
from ..errors import (BackendUnavailableError, ContextOverflowError, InvalidArgumentError, ModelFormatError,
                      NativeError, SessionFileError, TokenizerError)
from ..shape import ModelShape
from . import register
from .base import (Availability, Backend, BackendInfo, ModelSource, SeqInput, check_common_settings, check_ids,
                   check_seq_inputs, threads_text)

# ggml type ids of the KV cache element types we offer, from the GGUF type table.
KV_TYPES = ("f32", "f16", "q4_0", "q8_0")
MAX_BATCH = 512          # tokens per llama_decode call: llama.cpp's default n_batch
LLAMACPP_MAX_SEQ = 256   # llama.cpp's LLAMA_MAX_SEQ: a context with more is refused
INSTALL_HINT = "pip install 'edgesdk[llamacpp]' (or: pip install llama-cpp-python)"

# -- constants of llama.cpp's memory, measured on this project's build machine (x86-64,
#    Python 3.11, llama-cpp-python 0.3.36) with tools in tests/test_memory.py.
LLAMACPP_LIBRARY_RSS = 14 * memory.MIB      # `import llama_cpp`: libllama + libggml* mapped and relocated
LLAMACPP_LOADER_RSS = 11 * memory.MIB       # a vocab-only load of any model, less its per-token tables
LLAMACPP_VOCAB_BYTES_PER_TOKEN = 123        # llama.cpp's id->token, token->id and piece caches, per entry
# ggml's graph allocator keeps about 1.5x the live activations of one layer resident (inputs held
# for reuse, quantized copies of matmul inputs): measured 1.51 (SmolLM2) and 1.46 (Gemma-3).
LLAMACPP_ACTIVATION_FACTOR = 1.5
LLAMACPP_LIBRARY_ADDRESS_SPACE = 64 * memory.MIB  # code and data mappings of the libraries, plus the main arena

_init_lock = threading.Lock()
_llama = None                 # the llama_cpp module once imported and initialised
# enum ggml_log_level of the pinned ggml. llama-cpp-python's own logger maps an older enum (ERROR = 3):
# it prints warnings and drops errors, so edgesdk installs its own.
GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 4, 5
_log_callback = None          # kept alive while llama.cpp may call it
_last_log_level = 0


def _print_errors(level: int, text: bytes, _user_data) -> None:
    """llama.cpp's log: only its errors (and their continuation lines), on stderr."""
    global _last_log_level
    if level != GGML_LOG_LEVEL_CONT:
        _last_log_level = level
    if _last_log_level == GGML_LOG_LEVEL_ERROR:
        print(text.decode("utf-8", "replace"), end="", file=sys.stderr, flush=True)


def _require_llama_cpp():
    """llama_cpp, imported and its backend initialised once; BackendUnavailableError when missing."""
    global _llama
    with _init_lock:
        if _llama is None:
            try:
                import llama_cpp
                import llama_cpp._logger as llama_logger
            except ImportError as exc:
                raise BackendUnavailableError(
                    f"the llamacpp backend needs llama-cpp-python, which does not import here ({exc}); "
                    f"install it with: {INSTALL_HINT}") from None
            # llama.cpp logs every load step to stderr; keep only its errors.
            llama_logger.set_verbose(False)
            global _log_callback
            _log_callback = llama_cpp.llama_log_callback(_print_errors)
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _llama = llama_cpp
    return _llama


def extra_buffer_types_work(system_info: bytes) -> bool:
    """Whether llama.cpp's "extra" CPU buffer types (runtime weight repacking, AMX tiles) may be on,
    from the build's llama_print_system_info().
    Builds with AMX crash in llama_decode for batches of more than one token on CPUs that report AMX
    where the OS does not grant its tile state (this project's build machine); builds without AMX
    (tools/build_llamacpp.py) repack weights for AVX2/AVX-512 and run faster with them on."""
    return b"AMX_INT8 = 1" not in system_info


def _load_llama_model(model_path: str, vocab_only: bool, devices: Sequence[int] = (),
                      tensor_split: Sequence[float] = (), n_gpu_layers: int = 0):
    """The model on this CPU with its last n_gpu_layers layers on the local GPU, or with its layers on
    `devices` (ggml devices, such as RPC workers) in the proportions of tensor_split (see
    memory.SplitPlan.tensor_split)."""
    lib = _require_llama_cpp()
    if not os.path.isfile(model_path):
        raise ModelFormatError(f"{model_path}: no such model file")
    params = lib.llama_model_default_params()
    params.vocab_only = vocab_only
    params.n_gpu_layers = 0 if vocab_only else n_gpu_layers
    if devices:
        # llama.cpp copies both lists during the load: these arrays need to live only as long as this call.
        device_list = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
        split = (ctypes.c_float * lib.LLAMA_MAX_DEVICES)(*tensor_split)
        params.devices = ctypes.cast(device_list, ctypes.c_void_p)
        params.tensor_split = split
        params.n_gpu_layers = -1       # every layer and the output head on the devices
    params.use_extra_bufts = extra_buffer_types_work(lib.llama_print_system_info())
    handle = lib.llama_model_load_from_file(model_path.encode("utf-8"), params)
    if not handle:
        raise ModelFormatError(f"{model_path}: llama.cpp could not load this model")
    return handle


def _cells_per_seq(n_ctx: int) -> int:
    """KV cells llama.cpp gives each sequence for n_ctx positions: it pads them to a multiple of 256."""
    return -(-n_ctx // 256) * 256


def _layer_of(tensor_name: str) -> Optional[int]:
    """i of a "blk.i.*" tensor, else None."""
    parts = tensor_name.split(".", 2)
    return int(parts[1]) if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() else None


def _held_by_host(tensor_name: str) -> bool:
    """Whether llama.cpp keeps a tensor on the host when the layers are on other devices: the input layer."""
    return _layer_of(tensor_name) is None and not tensor_name.startswith("output")


def _floats_per_token(shape: ModelShape) -> int:
    """Floats live at once for one token in a llama.cpp layer: the residual and its normed copy, q, k, v,
    and the feed-forward's gate, up and their product."""
    return (2 * shape.n_embd + shape.n_head * shape.head_dim_k + 2 * shape.n_head_kv * shape.head_dim_k
            + 3 * shape.n_ff)


@dataclass(frozen=True)
class _LayerParts:
    """A model's bytes as llama.cpp places them on devices: per layer, the output head, the KV cache of
    one layer, one device's compute buffer and the logits of a batch."""
    layer_weights: List[int]
    output_weights: int
    kv_per_layer: int
    compute: int
    logits: int


def _layer_parts(checked: ModelSource, config: LoadConfig) -> _LayerParts:
    shape, n_ctx = checked.shape, config.n_ctx
    n_ubatch = min(config.n_batch, MAX_BATCH, n_ctx)
    layer_weights = [0] * shape.n_layer
    output_bytes = 0
    for t in checked.file.tensors.values():
        layer = _layer_of(t.name)
        if layer is not None and layer < shape.n_layer:
            layer_weights[layer] += t.nbytes
        elif t.name.startswith("output"):
            output_bytes += t.nbytes
    if "output.weight" not in checked.file.tensors:
        # Tied embeddings: llama.cpp puts a copy of token_embd on the output head's device.
        output_bytes += checked.file.tensors["token_embd.weight"].nbytes
    kv_per_layer = config.n_seq * memory.kv_cache_bytes(shape, _cells_per_seq(n_ctx), config.kv_type) // shape.n_layer
    mask = (2 if shape.sliding_window else 1) * 2 * n_ctx * n_ubatch * config.n_seq
    compute = int(LLAMACPP_ACTIVATION_FACTOR * 4 * n_ubatch * _floats_per_token(shape)) + mask
    return _LayerParts(layer_weights, output_bytes, kv_per_layer, compute,
                       4 * shape.n_vocab * max(n_ubatch, config.n_seq))


@dataclass(frozen=True)
class _Offload:
    """Layers llama.cpp puts on the local GPU (n_gpu_layers; n_layer + 1 includes the output head)."""
    n_gpu_layers: int = 0
    device: str = ""
    integrated: bool = False
    weights: int = 0             # bytes of the offloaded tensors
    kv_cache: int = 0            # their KV cache


def _offload(checked: ModelSource, config: LoadConfig) -> _Offload:
    """What goes on the GPU: option n_gpu_layers (an int), or by default ("auto") as many layers as the
    device's free memory holds (memory.gpu_layers), none without a GPU llama.cpp can use."""
    from .. import ggml_rpc
    wanted = config.options.get("n_gpu_layers", "auto")
    gpus = ggml_rpc.gpu_devices() if wanted != 0 and not config.workers else []
    if not gpus:
        return _Offload()
    name, free, _, integrated = gpus[0]
    parts = _layer_parts(checked, config)
    layer_bytes = [w + parts.kv_per_layer for w in parts.layer_weights]
    if wanted == "auto":
        # integrated memory: what the GPU takes comes out of the RAM the plan already holds the model in
        n = (len(layer_bytes) + 1 if integrated else
             memory.gpu_layers(layer_bytes, parts.output_weights + parts.logits, parts.compute, free))
    else:
        n = min(int(wanted), len(layer_bytes) + 1)
    on_gpu = min(n, len(layer_bytes))
    weights = sum(parts.layer_weights[len(layer_bytes) - on_gpu:]) + (parts.output_weights if n > len(layer_bytes)
                                                                     else 0)
    return _Offload(n, name, integrated, weights, on_gpu * parts.kv_per_layer)


@register
class LlamaCppBackend(Backend):
    """A GGUF model evaluated by llama.cpp on the CPU, KV cache in sequences 0..n_seq-1."""

    name = "llamacpp"
    description = "llama.cpp through llama-cpp-python (CPU; layers on the GPU when built with CUDA)"
    kv_types = KV_TYPES
    options = ("n_gpu_layers",)
    auto_rank = 20
    max_seqs = min(MAX_N_SEQ, LLAMACPP_MAX_SEQ)
    takes_workers = True

    # -- the class: before loading --------------------------------------------------

    @classmethod
    def available(cls) -> Availability:
        if importlib.util.find_spec("llama_cpp") is None:
            return Availability(False, f"llama-cpp-python is not installed; {INSTALL_HINT}")
        try:
            _require_llama_cpp()
        except BackendUnavailableError as exc:
            return Availability(False, str(exc))
        return Availability(True)

    @classmethod
    def check(cls, source: ModelSource, config: LoadConfig) -> ModelSource:
        check_common_settings(cls, config)
        wanted = config.options.get("n_gpu_layers", "auto")
        if wanted != "auto" and (isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 0):
            raise InvalidArgumentError(f"the llamacpp backend's option n_gpu_layers is \"auto\" or a layer count "
                                       f">= 0, got {wanted!r}")
        if config.workers:
            from .. import ggml_rpc
            ok, why = ggml_rpc.available()
            if not ok:
                raise BackendUnavailableError(why)
        return source

    @classmethod
    def memory_parts(cls, checked: ModelSource, config: LoadConfig) -> Dict[str, int]:
        """llama.cpp as this backend runs it: weights mmapped (with extra buffer types on, the repacked ones
        are copies of the same size whose file pages it unmaps),
        flash attention, full-size sliding-window cache, n_ubatch = n_batch, logits of the last token only."""
        shape, n_ctx, kv_type, threads = checked.shape, config.n_ctx, config.kv_type, config.threads
        n_ubatch = min(config.n_batch, MAX_BATCH, n_ctx)
        # The f16 attention mask is (n_ctx, n_ubatch) per stream (one per sequence); sliding-window
        # models keep a second one.
        mask = (2 if shape.sliding_window else 1) * 2 * n_ctx * n_ubatch * config.n_seq
        activations = int(LLAMACPP_ACTIVATION_FACTOR * 4 * n_ubatch * _floats_per_token(shape))
        scratch = activations + mask + 4 * shape.n_vocab * config.n_seq
        # llama.cpp's own vocabulary, and edgesdk.tokenizer's (it tokenizes for every backend) with the
        # parsed header it is built from (freed afterwards, but its pages stay with the process).
        vocab = (shape.n_vocab * LLAMACPP_VOCAB_BYTES_PER_TOKEN + memory.gguf_metadata_bytes(shape)
                 + memory.tokenizer_table_bytes(shape))
        kv = config.n_seq * memory.kv_cache_bytes(shape, _cells_per_seq(n_ctx), kv_type)
        # llama.cpp reserves its compute buffer for the worst case, logits of every token of a ubatch.
        compute_reserve = activations + mask + 4 * shape.n_vocab * n_ubatch
        runtime = memory.PYTHON_NUMPY_RSS + LLAMACPP_LIBRARY_RSS + LLAMACPP_LOADER_RSS
        if config.workers:
            # The host keeps the token embeddings, the logits of a batch and the vocabulary; the layers,
            # their KV cache and the output head live on the workers (plan_split). The model's llama.cpp
            # runs in a child process: a second interpreter with numpy and the libraries.
            host_weights = sum(t.nbytes for t in checked.file.tensors.values() if _held_by_host(t.name))
            scratch = 4 * shape.n_vocab * n_ubatch + 2 * 4 * shape.n_embd * n_ubatch
            return {"weights_mapped": host_weights, "weights_owned": 0, "kv_cache": 0, "scratch": scratch,
                    "tokenizer": vocab, "runtime": 2 * runtime,
                    "address_space": shape.file_bytes + scratch + vocab + 2 * LLAMACPP_LIBRARY_ADDRESS_SPACE
                    + threads * memory.THREAD_ADDRESS_SPACE}
        address_space = (shape.file_bytes + kv + compute_reserve + vocab + LLAMACPP_LIBRARY_ADDRESS_SPACE
                         + threads * memory.THREAD_ADDRESS_SPACE)
        off = _offload(checked, config)
        # Offloaded tensors leave the mapping once uploaded (llama.cpp unmaps them); on integrated memory
        # their GPU copy stays in this RAM (counted once, as owned), on a discrete GPU it is the device's.
        mapped, owned = shape.tensor_bytes - off.weights, off.weights if off.integrated else 0
        kv -= 0 if off.integrated else off.kv_cache
        return {"weights_mapped": mapped, "weights_owned": owned, "kv_cache": kv, "scratch": scratch,
                "tokenizer": vocab, "runtime": runtime, "address_space": address_space}

    # -- workers: the layers on `edgesdk worker`s over ggml's RPC -----------------------------

    @classmethod
    def probe_workers(cls, endpoints: Sequence[str]) -> List[Tuple[str, int, int]]:
        """(endpoint, free, total) bytes each worker offers (asked from a child process: see _rpc_host)."""
        from ._rpc_host import probe
        return probe(endpoints)

    @classmethod
    def plan_split(cls, checked: ModelSource, config: LoadConfig,
                   offered: Sequence[Tuple[str, int, int]]) -> memory.SplitPlan:
        """Which layers each worker holds at config.n_ctx: layer i's weights and KV cache where it goes,
        a compute buffer on every worker, the output head on the last. MemoryBudgetError when they do not fit."""
        parts = _layer_parts(checked, config)
        kv_per_layer = memory.kv_cache_bytes(checked.shape, config.n_ctx, config.kv_type) // checked.shape.n_layer
        return memory.split_layers(str(checked.path), config.n_ctx, [(e, free) for e, free, _ in offered],
                                   [w + kv_per_layer for w in parts.layer_weights], parts.compute,
                                   parts.output_weights + parts.logits)

    @classmethod
    def open_split(cls, checked: ModelSource, config: LoadConfig, split: memory.SplitPlan) -> Backend:
        """The model with its layers on the workers of the split, in a child process (see _rpc_host).
        A worker the split gives nothing is not connected: a worker serves one host at a time, and this
        host would hold it idle."""
        from ._rpc_host import OpenRequest, SplitLlamaCpp
        used = split.used_shares()
        request = OpenRequest(model_path=str(checked.path), n_ctx=config.n_ctx, threads=config.threads,
                              kv_type=config.kv_type, n_batch=config.n_batch,
                              endpoints=tuple(s.endpoint for s in used),
                              tensor_split=tuple(split.tensor_split()), n_seq=config.n_seq)
        return SplitLlamaCpp(request, [(s.endpoint, s.n_layers) for s in used])

    @classmethod
    def open(cls, checked: ModelSource, config: LoadConfig) -> "LlamaCppBackend":
        return cls(checked.path, n_ctx=config.n_ctx, threads=config.threads, kv_type=config.kv_type,
                   n_batch=config.n_batch, n_seq=config.n_seq, n_gpu_layers=_offload(checked, config).n_gpu_layers)

    # -- loading -----------------------------------------------------------------------

    def __init__(self, model_path: str | os.PathLike, n_ctx: int, threads: int, kv_type: str = "f16",
                 n_batch: int = MAX_BATCH, devices: Sequence[int] = (), tensor_split: Sequence[float] = (),
                 n_seq: int = 1, n_gpu_layers: int = 0):
        config = LoadConfig(backend=self.name, n_ctx=n_ctx, threads=threads, kv_type=kv_type, n_batch=n_batch,
                            n_seq=n_seq)
        check_common_settings(type(self), config)
        lib = _require_llama_cpp()
        self.model_path = os.fspath(model_path)
        self.n_ctx = n_ctx
        self.threads = threads
        self.kv_type = kv_type
        self._n_seq = n_seq
        self._lib = lib
        self._model = None
        self._ctx = None
        self._batch = None
        self.n_gpu_layers = n_gpu_layers
        self._model = _load_llama_model(self.model_path, vocab_only=False, devices=devices,
                                        tensor_split=tensor_split, n_gpu_layers=n_gpu_layers)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))

        params = lib.llama_context_default_params()
        params.n_ctx = n_seq * _cells_per_seq(n_ctx)   # llama.cpp splits it evenly over the streams
        self.n_batch = min(n_ctx, n_batch, MAX_BATCH)
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = n_seq
        params.kv_unified = False
        # Every position may be an output (score() asks for all logits), and llama.cpp reserves
        # its graph for one output per sequence: so at least n_batch and n_seq.
        params.n_outputs_max = max(self.n_batch, n_seq)
        params.n_outputs_max_per_seq = 0
        params.n_threads = threads
        params.n_threads_batch = threads
        params.type_k = params.type_v = gguf.GGML_TYPES_BY_NAME[kv_type.upper()].type_id
        # A quantized V cache needs flash attention in llama.cpp; f16/f32 work either way.
        params.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_AUTO if kv_type in ("f16", "f32") else 1)
        # Sliding-window models (Gemma-3) keep every position so that dropping a
        # suffix and re-evaluating it gives the same logits as a fresh eval.
        params.swa_full = True
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            self.close()
            raise NativeError(f"llama.cpp could not create a context of {n_ctx} positions for {self.model_path}")
        if int(lib.llama_n_ctx_seq(self._ctx)) < n_ctx:
            got = int(lib.llama_n_ctx_seq(self._ctx))
            self.close()
            raise NativeError(f"llama.cpp gave sequences of {got} positions, {n_ctx} were asked")
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        # Every token of the batch belongs to one sequence (sequence 0 unless eval_batch says otherwise).
        for i in range(self.n_batch):
            self._batch.n_seq_id[i] = 1
            self._batch.seq_id[i][0] = 0
        self._batch_tokens = np.ctypeslib.as_array(self._batch.token, shape=(self.n_batch,))
        self._batch_pos = np.ctypeslib.as_array(self._batch.pos, shape=(self.n_batch,))
        self._batch_logits = np.ctypeslib.as_array(self._batch.logits, shape=(self.n_batch,))

    # -- Backend -------------------------------------------------------------

    @property
    def n_past(self) -> int:
        return self._held(0)

    def _held(self, seq: int) -> int:
        # Ask llama.cpp: a KeyboardInterrupt between llama_decode returning and
        # our bookkeeping must not make us believe the cache holds less than it does.
        if self._ctx is None:
            return 0
        return int(self._lib.llama_memory_seq_pos_max(self._memory, seq)) + 1

    def _prepare(self, seq: int, ids: Sequence[int], start) -> "tuple[np.ndarray, int]":
        """(ids, start) of one sequence's step, checked, after its cache forgot positions >= start."""
        arr = check_ids(ids, self.n_vocab)
        if not isinstance(start, (int, np.integer)) or isinstance(start, bool):
            raise InvalidArgumentError(f"start must be an int, got {start!r}")
        start = int(start)
        n_past = self._held(seq)
        where = "" if self._n_seq == 1 else f" of sequence {seq}"
        if start < 0 or start > n_past:
            raise InvalidArgumentError(
                f"start {start} is outside [0, n_past={n_past}]: the cache{where} holds positions 0..{n_past - 1}"
            )
        if start + arr.size > self.n_ctx:
            raise ContextOverflowError(
                f"{arr.size} tokens at position {start} need {start + arr.size} positions, the context{where} "
                f"holds {self.n_ctx}"
            )
        return arr, start

    def _set_seqs(self, seqs: Sequence[int]) -> None:
        """The sequence of each of the batch's first len(seqs) tokens (llama_batch keeps one array per token)."""
        seq_id = self._batch.seq_id
        for i, seq in enumerate(seqs):
            if seq_id[i][0] != seq:
                seq_id[i][0] = seq

    def _forget(self, seq: int, start: int) -> None:
        if start < self._held(seq) and not self._lib.llama_memory_seq_rm(self._memory, seq, start, -1):
            raise NativeError(f"llama.cpp could not drop cache positions >= {start} of sequence {seq}")

    def eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        self._check_open()
        arr, start = self._prepare(0, ids, start)
        lib = self._lib
        self._forget(0, start)
        out = np.empty((arr.size if all_logits else 1, self.n_vocab), dtype=np.float32)
        for lo in range(0, arr.size, self.n_batch):
            chunk = arr[lo:lo + self.n_batch]
            n = chunk.size
            is_last_chunk = lo + n == arr.size
            self._batch.n_tokens = n
            self._set_seqs([0] * n)
            self._batch_tokens[:n] = chunk
            self._batch_pos[:n] = np.arange(start + lo, start + lo + n, dtype=np.int32)
            self._batch_logits[:n] = 1 if all_logits else 0
            if is_last_chunk:
                self._batch_logits[n - 1] = 1
            rc = lib.llama_decode(self._ctx, self._batch)
            if rc != 0:
                # The cache may hold part of this chunk: forget it so n_past stays true.
                lib.llama_memory_seq_rm(self._memory, 0, start + lo, -1)
                raise NativeError(f"llama_decode returned {rc} for {n} tokens at position {start + lo}")
            if all_logits:
                ptr = lib.llama_get_logits(self._ctx)
                out[lo:lo + n] = np.ctypeslib.as_array(ptr, shape=(n, self.n_vocab))
            elif is_last_chunk:
                ptr = lib.llama_get_logits_ith(self._ctx, n - 1)
                out[0] = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        return out if all_logits else out[0]

    # -- several sequences ---------------------------------------------------

    @property
    def n_seq(self) -> int:
        return self._n_seq

    def eval_batch(self, entries: Sequence[SeqInput]) -> List[np.ndarray]:
        self._check_open()
        check_seq_inputs(entries, self._n_seq)
        steps = [(e.seq,) + self._prepare(e.seq, e.ids, e.start) for e in entries]
        for seq, _, start in steps:
            self._forget(seq, start)
        # The rows of every entry in order, n_batch per llama_decode; each entry's last row is an output.
        rows = [(seq, int(t), start + i, i == arr.size - 1) for seq, arr, start in steps for i, t in enumerate(arr)]
        out: List[np.ndarray] = []
        lib = self._lib
        for lo in range(0, len(rows), self.n_batch):
            chunk = rows[lo:lo + self.n_batch]
            n = len(chunk)
            self._batch.n_tokens = n
            self._set_seqs([r[0] for r in chunk])
            self._batch_tokens[:n] = [r[1] for r in chunk]
            self._batch_pos[:n] = [r[2] for r in chunk]
            self._batch_logits[:n] = [r[3] for r in chunk]
            rc = lib.llama_decode(self._ctx, self._batch)
            if rc != 0:
                for seq, _, start in steps:     # the caches may hold part of the step: forget it
                    lib.llama_memory_seq_rm(self._memory, seq, start, -1)
                raise NativeError(f"llama_decode returned {rc} for a step of {n} tokens over {len(steps)} sequences")
            for i, row in enumerate(chunk):
                if row[3]:
                    out.append(np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, i),
                                                     shape=(self.n_vocab,)).copy())
        return out

    def seq_n_past(self, seq: int) -> int:
        check_seq_inputs([SeqInput(seq, (0,), 0)], self._n_seq)
        return self._held(seq)

    def copy_seq(self, src: int, dst: int, n: int) -> None:
        self._check_open()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidArgumentError(f"n must be a non-negative integer, got {n!r}")
        super().copy_seq(src, dst, n)  # sequence ids, and n <= what src holds
        if src == dst:
            self._forget(dst, int(n))
            return
        lib = self._lib
        lib.llama_memory_seq_rm(self._memory, dst, -1, -1)
        # Between streams llama.cpp copies a whole sequence (its p0/p1 must be the full range);
        # the positions past n are dropped from the copy.
        lib.llama_memory_seq_cp(self._memory, src, dst, -1, -1)
        self._forget(dst, int(n))

    def save_state(self) -> bytes:
        self._check_open()
        lib = self._lib
        size = int(lib.llama_state_seq_get_size(self._ctx, 0))
        buf = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_seq_get_data(self._ctx, buf, size, 0))
        if written == 0 and self.n_past > 0:
            raise NativeError(f"llama.cpp wrote no state for a cache of {self.n_past} positions")
        return bytes(memoryview(buf)[:written])

    def load_state(self, blob: bytes, n_past: int) -> None:
        self._check_open()
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"state must be bytes, got {type(blob).__name__}")
        if not isinstance(n_past, int) or n_past < 0 or n_past > self.n_ctx:
            raise InvalidArgumentError(f"n_past must be an int in [0, {self.n_ctx}], got {n_past!r}")
        lib = self._lib
        lib.llama_memory_clear(self._memory, True)
        data = bytes(blob)
        if n_past == 0 and not data:
            return
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        read = int(lib.llama_state_seq_set_data(self._ctx, buf, len(data), 0))
        held = self.n_past
        if read == 0 or held != n_past:
            lib.llama_memory_clear(self._memory, True)
            raise SessionFileError(
                f"state of {len(data)} bytes does not restore {n_past} positions of this model "
                f"(llama.cpp read {read} bytes, cache holds {held} positions)"
            )

    def info(self) -> BackendInfo:
        device = f"cpu (llama.cpp, {threads_text(self.threads)})"
        if self.n_gpu_layers:
            device += f" + gpu ({self.n_gpu_layers} layers offloaded)"
        return BackendInfo(name=self.name, device=device, n_ctx=self.n_ctx,
                           n_vocab=self.n_vocab, threads=self.threads, kv_type=self.kv_type)

    def close(self) -> None:
        lib = self._lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _check_open(self) -> None:
        if self._ctx is None:
            raise InvalidArgumentError("this backend is closed")


class _Utf8StreamDecoder:
    """Turns ids into text as they come, holding back an incomplete UTF-8 sequence."""

    def __init__(self, token_bytes):
        self._token_bytes = token_bytes
        self._pending = b""

    def push(self, token_id: int) -> str:
        self._pending += self._token_bytes(token_id)
        # Longest prefix that is complete UTF-8 (an incomplete tail is at most 3 bytes).
        for cut in range(len(self._pending), max(len(self._pending) - 4, -1), -1):
            try:
                text = self._pending[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self._pending = self._pending[cut:]
            return text
        text = self._pending.decode("utf-8", errors="replace")
        self._pending = b""
        return text

    def flush(self) -> str:
        text = self._pending.decode("utf-8", errors="replace")
        self._pending = b""
        return text


class LlamaCppTokenizer:
    """llama.cpp's tokenizer for a GGUF file, with edgesdk's Tokenizer interface."""

    def __init__(self, model_path: str | os.PathLike):
        lib = _require_llama_cpp()
        self._lib = lib
        self._model = _load_llama_model(os.fspath(model_path), vocab_only=True)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.bos_id = int(lib.llama_vocab_bos(self._vocab))
        self.eos_id = int(lib.llama_vocab_eos(self._vocab))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self.eot_ids: FrozenSet[int] = frozenset(
            i for i in range(self.n_vocab) if lib.llama_vocab_is_eog(self._vocab, i))
        self._piece_cache: Dict[int, bytes] = {}

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> "LlamaCppTokenizer":
        return cls(path)

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> List[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"text must be str, got {type(text).__name__}")
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        while True:
            buf = (ctypes.c_int32 * cap)()
            n = int(self._lib.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, parse_special))
            if n >= 0:
                return list(buf[:n])
            cap = -n

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._piece_cache.get(token_id)
        if piece is None:
            if not 0 <= token_id < self.n_vocab:
                raise TokenizerError(f"token id {token_id} is out of range [0, {self.n_vocab})")
            buf = ctypes.create_string_buffer(256)
            n = int(self._lib.llama_token_to_piece(self._vocab, token_id, buf, 256, 0, True))
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = int(self._lib.llama_token_to_piece(self._vocab, token_id, buf, -n, 0, True))
            piece = buf.raw[:n]
            self._piece_cache[token_id] = piece
        return piece

    def token_text(self, token_id: int) -> str:
        return self._lib.llama_vocab_get_text(self._vocab, token_id).decode("utf-8", errors="replace")

    def is_control(self, token_id: int) -> bool:
        return bool(self._lib.llama_vocab_is_control(self._vocab, token_id))

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        parts = []
        for i in ids:
            i = int(i)
            if skip_special and self.is_control(i):
                continue
            parts.append(self.token_bytes(i))
        return b"".join(parts).decode("utf-8", errors="replace")

    def streaming_decoder(self) -> _Utf8StreamDecoder:
        return _Utf8StreamDecoder(self.token_bytes)

    def __del__(self):
        try:
            if self._model is not None:
                self._lib.llama_model_free(self._model)
                self._model = None
        except Exception:
            pass


__all__ = ["LlamaCppBackend", "LlamaCppTokenizer", "KV_TYPES"]
