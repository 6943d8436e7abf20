"""llama.cpp through llama-cpp-python's low-level binding: the reference backend.

It fills backends/base.Backend with llama.cpp's own context: one sequence
(seq 0) in the KV cache, `llama_memory_seq_rm` to forget positions >= start,
`llama_decode` in batches of at most n_batch tokens, and the per-sequence
state API for save_state/load_state.

`LlamaCppTokenizer` exposes llama.cpp's vocabulary (loaded vocab-only) with
edgesdk's Tokenizer interface; it is the reference tokenizer in tests and the
tokenizer `edgesdk.load` uses while edgesdk.tokenizer is not installed.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from typing import Dict, FrozenSet, List, Sequence

import numpy as np

from .. import gguf, memory
from ..config import LoadConfig
from ..errors import (BackendUnavailableError, ContextOverflowError, InvalidArgumentError, ModelFormatError,
                      NativeError, SessionFileError, TokenizerError)
from ..shape import ModelShape
from . import register
from .base import (Availability, Backend, BackendInfo, ModelSource, check_common_settings, check_ids,
                   threads_text)

# ggml type ids of the KV cache element types we offer, from the GGUF type table.
KV_TYPES = ("f32", "f16", "q4_0", "q8_0")
MAX_BATCH = 512          # tokens per llama_decode call: llama.cpp's default n_batch
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


def _load_llama_model(model_path: str, vocab_only: bool):
    lib = _require_llama_cpp()
    if not os.path.isfile(model_path):
        raise ModelFormatError(f"{model_path}: no such model file")
    params = lib.llama_model_default_params()
    params.vocab_only = vocab_only
    params.n_gpu_layers = 0
    params.use_extra_bufts = extra_buffer_types_work(lib.llama_print_system_info())
    handle = lib.llama_model_load_from_file(model_path.encode("utf-8"), params)
    if not handle:
        raise ModelFormatError(f"{model_path}: llama.cpp could not load this model")
    return handle


def _floats_per_token(shape: ModelShape) -> int:
    """Floats live at once for one token in a llama.cpp layer: the residual and its normed copy, q, k, v,
    and the feed-forward's gate, up and their product."""
    return (2 * shape.n_embd + shape.n_head * shape.head_dim_k + 2 * shape.n_head_kv * shape.head_dim_k
            + 3 * shape.n_ff)


@register
class LlamaCppBackend(Backend):
    """A GGUF model evaluated by llama.cpp on the CPU, KV cache in sequence 0."""

    name = "llamacpp"
    description = "llama.cpp through llama-cpp-python (CPU)"
    kv_types = KV_TYPES
    auto_rank = 20

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
        return source

    @classmethod
    def memory_parts(cls, checked: ModelSource, config: LoadConfig) -> Dict[str, int]:
        """llama.cpp as this backend runs it: weights mmapped (with extra buffer types on, the repacked ones
        are copies of the same size whose file pages it unmaps),
        flash attention, full-size sliding-window cache, n_ubatch = n_batch, logits of the last token only."""
        shape, n_ctx, kv_type, threads = checked.shape, config.n_ctx, config.kv_type, config.threads
        n_ubatch = min(config.n_batch, MAX_BATCH, n_ctx)
        # The f16 attention mask is (n_ctx, n_ubatch); sliding-window models keep a second one.
        mask = (2 if shape.sliding_window else 1) * 2 * n_ctx * n_ubatch
        activations = int(LLAMACPP_ACTIVATION_FACTOR * 4 * n_ubatch * _floats_per_token(shape))
        scratch = activations + mask + 4 * shape.n_vocab
        # llama.cpp's own vocabulary, and edgesdk.tokenizer's (it tokenizes for every backend) with the
        # parsed header it is built from (freed afterwards, but its pages stay with the process).
        vocab = (shape.n_vocab * LLAMACPP_VOCAB_BYTES_PER_TOKEN + memory.gguf_metadata_bytes(shape)
                 + memory.tokenizer_table_bytes(shape))
        kv = memory.kv_cache_bytes(shape, n_ctx, kv_type)
        # llama.cpp reserves its compute buffer for the worst case, logits of every token of a ubatch.
        compute_reserve = activations + mask + 4 * shape.n_vocab * n_ubatch
        address_space = (shape.file_bytes + kv + compute_reserve + vocab + LLAMACPP_LIBRARY_ADDRESS_SPACE
                         + threads * memory.THREAD_ADDRESS_SPACE)
        return {"weights_mapped": shape.tensor_bytes, "weights_owned": 0, "kv_cache": kv, "scratch": scratch,
                "tokenizer": vocab,
                "runtime": memory.PYTHON_NUMPY_RSS + LLAMACPP_LIBRARY_RSS + LLAMACPP_LOADER_RSS,
                "address_space": address_space}

    @classmethod
    def open(cls, checked: ModelSource, config: LoadConfig) -> "LlamaCppBackend":
        return cls(checked.path, n_ctx=config.n_ctx, threads=config.threads, kv_type=config.kv_type,
                   n_batch=config.n_batch)

    # -- loading -----------------------------------------------------------------------

    def __init__(self, model_path: str | os.PathLike, n_ctx: int, threads: int, kv_type: str = "f16",
                 n_batch: int = MAX_BATCH):
        config = LoadConfig(backend=self.name, n_ctx=n_ctx, threads=threads, kv_type=kv_type, n_batch=n_batch)
        check_common_settings(type(self), config)
        lib = _require_llama_cpp()
        self.model_path = os.fspath(model_path)
        self.n_ctx = n_ctx
        self.threads = threads
        self.kv_type = kv_type
        self._lib = lib
        self._model = None
        self._ctx = None
        self._batch = None
        self._model = _load_llama_model(self.model_path, vocab_only=False)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))

        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        self.n_batch = min(n_ctx, n_batch, MAX_BATCH)
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = 1
        # Every position may be an output (score() asks for all logits): 0 means n_batch.
        params.n_outputs_max = 0
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
        if int(lib.llama_n_ctx(self._ctx)) < n_ctx:
            got = int(lib.llama_n_ctx(self._ctx))
            self.close()
            raise NativeError(f"llama.cpp gave a context of {got} positions, {n_ctx} were asked")
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        # Every token of the batch belongs to sequence 0, set once.
        for i in range(self.n_batch):
            self._batch.n_seq_id[i] = 1
            self._batch.seq_id[i][0] = 0
        self._batch_tokens = np.ctypeslib.as_array(self._batch.token, shape=(self.n_batch,))
        self._batch_pos = np.ctypeslib.as_array(self._batch.pos, shape=(self.n_batch,))
        self._batch_logits = np.ctypeslib.as_array(self._batch.logits, shape=(self.n_batch,))

    # -- Backend -------------------------------------------------------------

    @property
    def n_past(self) -> int:
        # Ask llama.cpp: a KeyboardInterrupt between llama_decode returning and
        # our bookkeeping must not make us believe the cache holds less than it does.
        if self._ctx is None:
            return 0
        return int(self._lib.llama_memory_seq_pos_max(self._memory, 0)) + 1

    def eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        self._check_open()
        arr = check_ids(ids, self.n_vocab)
        if not isinstance(start, (int, np.integer)) or isinstance(start, bool):
            raise InvalidArgumentError(f"start must be an int, got {start!r}")
        start = int(start)
        n_past = self.n_past
        if start < 0 or start > n_past:
            raise InvalidArgumentError(
                f"start {start} is outside [0, n_past={n_past}]: the cache holds positions 0..{n_past - 1}"
            )
        if start + arr.size > self.n_ctx:
            raise ContextOverflowError(
                f"{arr.size} tokens at position {start} need {start + arr.size} positions, the context holds {self.n_ctx}"
            )
        lib = self._lib
        if start < n_past:
            if not lib.llama_memory_seq_rm(self._memory, 0, start, -1):
                raise NativeError(f"llama.cpp could not drop cache positions >= {start}")
        out = np.empty((arr.size if all_logits else 1, self.n_vocab), dtype=np.float32)
        for lo in range(0, arr.size, self.n_batch):
            chunk = arr[lo:lo + self.n_batch]
            n = chunk.size
            is_last_chunk = lo + n == arr.size
            self._batch.n_tokens = n
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
        return BackendInfo(name=self.name, device=f"cpu (llama.cpp, {threads_text(self.threads)})", n_ctx=self.n_ctx,
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
