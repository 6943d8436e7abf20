"""What fits: a model's memory, part by part, from its GGUF header, before anything is loaded.

`plan()` adds up, for one backend and context size:
  weights_mapped  tensor bytes of the file, resident once read (mmap pages)
  weights_owned   copies the backend makes of them (repacked or converted)
  kv_cache        K and V for n_ctx positions of every layer, in the KV type
  scratch         activations, attention and logits for one batch of n_batch tokens
  tokenizer       the vocabulary's tables in memory
  runtime         the interpreter, numpy, the backend's libraries and their fixed costs
Its `total` is the peak resident set of a process that loads the model and
fills the whole context; `address_space` is the virtual memory the load adds
(what an RLIMIT_AS limit counts: whole mappings and reservations, touched or not).

`fit()` checks a plan against what this device (or the user) allows and picks
the largest context that fits when none is given; otherwise it raises
MemoryBudgetError with the numbers and the ways out. It only reads the header.
"""
from __future__ import annotations

import errno
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from . import gguf, hardware
from .errors import InvalidArgumentError, MemoryBudgetError, ModelFormatError, UnsupportedModelError

MIB = 1 << 20
BACKENDS = ("native", "llamacpp")

# KV cache element types: (values per block, bytes per block).
KV_TYPES: Dict[str, Tuple[int, int]] = {"f32": (1, 4), "f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)}

CONTEXT_STEP = 256          # fit() picks contexts in multiples of this
MIN_CONTEXT = 256           # below this a chat model is of little use: fit() gives up instead
# fit() keeps this share of the plan free when the budget is the device's own memory: the plan
# is measured to be within 10% of the peak RSS, and the kernel needs some room to reclaim cache.
SAFETY_MARGIN_FRACTION = 0.10
SAFETY_MARGIN_MIN = 32 * MIB

# -- constants measured on this project's build machine (x86-64, Python 3.11, llama-cpp-python
#    0.3.36) with tools in tests/test_memory.py; each says what it stands for.
PYTHON_NUMPY_RSS = 28 * MIB          # `python -c "import numpy"`: 13 MiB interpreter + 14 MiB numpy
LLAMACPP_LIBRARY_RSS = 14 * MIB      # `import llama_cpp`: libllama + libggml* mapped and relocated
LLAMACPP_LOADER_RSS = 11 * MIB       # a vocab-only load of any model, less its per-token tables
LLAMACPP_VOCAB_BYTES_PER_TOKEN = 123  # llama.cpp's id->token, token->id and piece caches, per entry
# ggml's graph allocator keeps about 1.5x the live activations of one layer resident (inputs held
# for reuse, quantized copies of matmul inputs): measured 1.51 (SmolLM2) and 1.46 (Gemma-3).
LLAMACPP_ACTIVATION_FACTOR = 1.5
LLAMACPP_THREAD_ADDRESS_SPACE = 72 * MIB   # per compute thread: an 8 MiB stack + a 64 MiB malloc arena
LLAMACPP_LIBRARY_ADDRESS_SPACE = 64 * MIB  # code and data mappings of the libraries, plus the main arena
# edgesdk's modules, the native library and the code pages an eval pages in, above python + numpy:
# 33 MiB RSS measured after a SmolLM2 eval with nothing else alive.
NATIVE_RUNTIME_RSS = 5 * MIB
# A parsed GGUF header (the native backend keeps its GGUFFile open; the tokenizer is built from one):
# every token and merge string of the vocabulary as a Python str in a list (~90 bytes traced per item, ~110 with the allocator's slack), the per-token
# score/type arrays, and the header's pages of the mapping. Measured 12.6 MiB (SmolLM2: 49k tokens,
# 49k merges) and 35.9 MiB (Gemma-3: 262k tokens, scores, types).
GGUF_BYTES_PER_STRING = 110
GGUF_BYTES_PER_ARRAY_ITEM = 4
# edgesdk.tokenizer.Tokenizer's tables above the metadata it is built from: +16.6 MiB (SmolLM2,
# 49k tokens + 49k merges) and +33.6 MiB (Gemma-3, 262k tokens) measured.
TOKENIZER_BYTES_PER_TOKEN = 135
TOKENIZER_BYTES_PER_MERGE = 220


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters memory depends on, from the GGUF metadata."""
    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_merges: int
    n_token_arrays: int          # per-token numeric arrays in the metadata (scores, token types)
    header_bytes: int            # metadata and tensor index: the file before the tensor data
    context_length: Optional[int]
    sliding_window: Optional[int]
    tensor_bytes: int
    file_bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a model needs on one backend at one context size, part by part, and the budget it meets."""
    model: str
    backend: str
    n_ctx: int
    kv_type: str
    n_batch: int
    threads: int
    weights_mapped: int
    weights_owned: int
    kv_cache: int
    scratch: int
    tokenizer: int
    runtime: int
    address_space: int
    context_length: Optional[int] = None     # the model's maximum, from its metadata
    budget: Optional[int] = None              # bytes available to this process, None if unknown
    budget_source: str = "unknown"            # "MemAvailable", "cgroup v2 memory.max", "max_memory", ...

    @property
    def total(self) -> int:
        return (self.weights_mapped + self.weights_owned + self.kv_cache + self.scratch
                + self.tokenizer + self.runtime)

    def parts(self) -> Dict[str, int]:
        return {"weights_mapped": self.weights_mapped, "weights_owned": self.weights_owned,
                "kv_cache": self.kv_cache, "scratch": self.scratch, "tokenizer": self.tokenizer,
                "runtime": self.runtime}

    def breakdown(self) -> str:
        weights = f"weights {_mib(self.weights_mapped)} mapped"
        if self.weights_owned:
            weights += f" + {_mib(self.weights_owned)} owned"
        return (f"{weights}, KV cache {_mib(self.kv_cache)} ({self.kv_type}), scratch {_mib(self.scratch)}, "
                f"tokenizer {_mib(self.tokenizer)}, runtime {_mib(self.runtime)}")

    def summary(self) -> str:
        line = (f"{os.path.basename(self.model)} on {self.backend}, n_ctx={self.n_ctx}: needs {_mib(self.total)} "
                f"({self.breakdown()})")
        if self.budget is not None:
            line += f"; {_mib(self.budget)} available ({self.budget_source})"
        return line


def _mib(n: Optional[int]) -> str:
    return "unknown" if n is None else f"{n / MIB:,.0f} MiB"


# -- reading the header -------------------------------------------------------------

def _meta_int(meta: dict, key: str, default: Optional[int] = None) -> Optional[int]:
    """An integer hyperparameter; per-layer arrays (some models vary n_ff or n_head_kv) give their maximum."""
    value = meta.get(key)
    if value is None:
        return default
    try:
        if hasattr(value, "__len__") and not isinstance(value, str):
            return int(max(value)) if len(value) else default
        number = int(value)
    except (TypeError, ValueError):
        raise ModelFormatError(f"metadata {key!r} is {value!r}, not an integer") from None
    if number < 0:
        raise ModelFormatError(f"metadata {key!r} is {number}, must not be negative")
    return number


def read_shape(file: gguf.GGUFFile) -> ModelShape:
    """The hyperparameters of an opened GGUF file; raises UnsupportedModelError when a required one is missing."""
    meta = file.metadata
    arch = file.architecture
    if not arch:
        raise UnsupportedModelError(f"{file.path}: no general.architecture in the metadata")

    def need(name: str) -> int:
        value = _meta_int(meta, f"{arch}.{name}")
        if not value:
            raise UnsupportedModelError(f"{file.path}: metadata {arch}.{name} is missing or zero")
        return value

    n_embd, n_head = need("embedding_length"), need("attention.head_count")
    n_head_kv = _meta_int(meta, f"{arch}.attention.head_count_kv", n_head) or n_head
    default_head_dim = n_embd // n_head
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens) if tokens is not None else _meta_int(meta, f"{arch}.vocab_size")
    if not n_vocab and "token_embd.weight" in file.tensors:
        n_vocab = file.tensors["token_embd.weight"].shape[-1]
    merges = meta.get("tokenizer.ggml.merges")
    return ModelShape(
        architecture=arch, n_layer=need("block_count"), n_embd=n_embd, n_ff=need("feed_forward_length"),
        n_head=n_head, n_head_kv=n_head_kv,
        head_dim_k=_meta_int(meta, f"{arch}.attention.key_length", default_head_dim) or default_head_dim,
        head_dim_v=_meta_int(meta, f"{arch}.attention.value_length", default_head_dim) or default_head_dim,
        n_vocab=int(n_vocab or 0), n_merges=len(merges) if merges is not None else 0,
        n_token_arrays=sum(1 for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type") if key in meta),
        header_bytes=file.data_offset,
        context_length=_meta_int(meta, f"{arch}.context_length"),
        sliding_window=_meta_int(meta, f"{arch}.attention.sliding_window"),
        tensor_bytes=sum(t.nbytes for t in file.tensors.values()), file_bytes=file.file_size,
    )


# -- per-backend formulas --------------------------------------------------------------

def kv_row_bytes(kv_type: str, n_values: int) -> int:
    """Bytes of n_values K (or V) values of one position in the KV type (quantized rows are whole blocks)."""
    block_values, block_bytes = KV_TYPES[kv_type]
    return -(-n_values // block_values) * block_bytes


def kv_cache_bytes(shape: ModelShape, n_ctx: int, kv_type: str) -> int:
    """K and V of every layer for n_ctx positions (every layer keeps all positions, sliding-window ones too)."""
    k = kv_row_bytes(kv_type, shape.n_head_kv * shape.head_dim_k)
    v = kv_row_bytes(kv_type, shape.n_head_kv * shape.head_dim_v)
    return shape.n_layer * n_ctx * (k + v)


def _native_floats_per_token(shape: ModelShape) -> int:
    """The native engine's buffers per batch token: x, xb, q, att, k, v, hb, hb2, and the RoPE
    cos/sin table (native/src/model.c; the rotated dimensions are at most head_dim)."""
    return (2 * shape.n_embd + 2 * shape.n_head * shape.head_dim_k + 2 * shape.n_head_kv * shape.head_dim_k
            + 2 * shape.n_ff + 2 * shape.head_dim_k)


def _ggml_floats_per_token(shape: ModelShape) -> int:
    """Floats live at once for one token in a llama.cpp layer: the residual and its normed copy, q, k, v,
    and the feed-forward's gate, up and their product."""
    return 2 * shape.n_embd + shape.n_head * shape.head_dim_k + 2 * shape.n_head_kv * shape.head_dim_k + 3 * shape.n_ff


def gguf_metadata_bytes(shape: ModelShape) -> int:
    """Resident bytes of an open GGUFFile's vocabulary: its strings as Python objects, its numeric
    arrays, and the header's pages of the mapping."""
    return ((shape.n_vocab + shape.n_merges) * GGUF_BYTES_PER_STRING
            + shape.n_token_arrays * shape.n_vocab * GGUF_BYTES_PER_ARRAY_ITEM + shape.header_bytes)


def native_formula(shape: ModelShape, n_ctx: int, kv_type: str, n_batch: int, threads: int) -> Dict[str, int]:
    """The native engine's allocations as native/src/model.c lays them out, from the header alone: the
    fallback when edgesdk.backends.native is not importable, and a cross-check of its memory_requirements."""
    # Activation buffers for n_batch tokens plus one attention row of n_ctx per thread, and the
    # matmul's quantized copy of its widest input: at most 40 bytes per 32 values (q8 blocks
    # with their f32 scale and sum, native/src/kernels.h).
    scratch_floats = n_batch * _native_floats_per_token(shape) + threads * n_ctx
    act_bytes = n_batch * max(shape.n_embd, shape.n_ff) * 40 // 32
    return {"weights_mapped": shape.tensor_bytes, "weights_owned": 0,
            "kv_cache": kv_cache_bytes(shape, n_ctx, kv_type), "scratch": 4 * scratch_floats + act_bytes}


def tokenizer_table_bytes(shape: ModelShape) -> int:
    """edgesdk.tokenizer's own tables (both directions of the vocabulary, merge ranks), any backend."""
    return shape.n_vocab * TOKENIZER_BYTES_PER_TOKEN + shape.n_merges * TOKENIZER_BYTES_PER_MERGE


def _native_parts(file: gguf.GGUFFile, shape: ModelShape, n_ctx: int, kv_type: str, n_batch: int,
                  threads: int) -> Dict[str, int]:
    try:
        from .backends import native
        requirements = getattr(native, "memory_requirements", None)
    except ImportError:
        requirements = None
    if requirements is not None:
        parts = dict(requirements(file, n_ctx, kv_type, n_batch, threads=threads))
    else:
        parts = native_formula(shape, n_ctx, kv_type, n_batch, threads)
    # The logits of the last token come back as a numpy row.
    parts["scratch"] += 4 * shape.n_vocab
    parts["tokenizer"] = gguf_metadata_bytes(shape) + tokenizer_table_bytes(shape)
    parts["runtime"] = PYTHON_NUMPY_RSS + NATIVE_RUNTIME_RSS
    # Virtual memory: the whole file is mapped; everything else is allocated as planned.
    parts["address_space"] = (shape.file_bytes + parts["weights_owned"] + parts["kv_cache"] + parts["scratch"]
                              + parts["tokenizer"] + threads * LLAMACPP_THREAD_ADDRESS_SPACE)
    return parts


def _llamacpp_parts(shape: ModelShape, n_ctx: int, kv_type: str, n_batch: int, threads: int) -> Dict[str, int]:
    """llama.cpp as edgesdk's llamacpp backend runs it: weights mmapped and not repacked
    (use_extra_bufts off), flash attention, full-size sliding-window cache, n_ubatch = n_batch,
    logits of the last token only."""
    n_ubatch = min(n_batch, n_ctx)
    swa = bool(shape.sliding_window)
    # The f16 attention mask is (n_ctx, n_ubatch); sliding-window models keep a second one.
    mask = (2 if swa else 1) * 2 * n_ctx * n_ubatch
    activations = int(LLAMACPP_ACTIVATION_FACTOR * 4 * n_ubatch * _ggml_floats_per_token(shape))
    logits_row = 4 * shape.n_vocab
    scratch = activations + mask + logits_row
    # llama.cpp's own vocabulary, and edgesdk.tokenizer's (it tokenizes for every backend) with the
    # parsed header it is built from (freed afterwards, but its pages stay with the process).
    vocab = (shape.n_vocab * LLAMACPP_VOCAB_BYTES_PER_TOKEN + gguf_metadata_bytes(shape)
             + tokenizer_table_bytes(shape))
    runtime = PYTHON_NUMPY_RSS + LLAMACPP_LIBRARY_RSS + LLAMACPP_LOADER_RSS
    kv = kv_cache_bytes(shape, n_ctx, kv_type)
    # llama.cpp reserves its compute buffer for the worst case, logits of every token of a ubatch.
    compute_reserve = activations + mask + 4 * shape.n_vocab * n_ubatch
    address_space = (shape.file_bytes + kv + compute_reserve + vocab + LLAMACPP_LIBRARY_ADDRESS_SPACE
                     + threads * LLAMACPP_THREAD_ADDRESS_SPACE)
    return {"weights_mapped": shape.tensor_bytes, "weights_owned": 0, "kv_cache": kv, "scratch": scratch,
            "tokenizer": vocab, "runtime": runtime, "address_space": address_space}


# -- plan --------------------------------------------------------------------------------

ModelArg = Union[str, os.PathLike, gguf.GGUFFile]


def _open_model(model: ModelArg, budget: Optional["Budget"] = None) -> Tuple[gguf.GGUFFile, bool]:
    """The opened file, and whether we opened it (and so close it). Reading the header maps the whole
    file: under an address-space limit smaller than the file that mapping itself is refused."""
    if isinstance(model, gguf.GGUFFile):
        return model, False
    from . import registry
    path = registry.resolve(model)
    file_bytes = os.path.getsize(path)
    room = budget.address_space if budget is not None else None
    if room is not None and file_bytes > room:
        raise _mapping_error(path, file_bytes, room, budget.address_space_source)
    try:
        return gguf.open(path), True
    except OSError as exc:   # mmap's ENOMEM: the address space ran out before our estimate did
        if exc.errno != errno.ENOMEM:
            raise
        raise _mapping_error(path, file_bytes, room, budget.address_space_source if budget else "the kernel") \
            from None


def _check_args(backend: str, kv_type: str, n_batch: int, n_ctx: Optional[int], threads: Optional[int]) -> None:
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if kv_type not in KV_TYPES:
        raise InvalidArgumentError(f"kv_type {kv_type!r} is not one of {', '.join(KV_TYPES)}")
    for name, value in (("n_batch", n_batch), ("n_ctx", n_ctx), ("threads", threads)):
        if value is None and name != "n_batch":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")


def _plan_open(file: gguf.GGUFFile, shape: ModelShape, n_ctx: int, kv_type: str, backend: str, n_batch: int,
               threads: int, budget: Optional[int], budget_source: str) -> MemoryPlan:
    if backend == "native":
        parts = _native_parts(file, shape, n_ctx, kv_type, n_batch, threads)
    else:
        parts = _llamacpp_parts(shape, n_ctx, kv_type, n_batch, threads)
    return MemoryPlan(model=file.path, backend=backend, n_ctx=n_ctx, kv_type=kv_type, n_batch=n_batch,
                      threads=threads, weights_mapped=parts["weights_mapped"], weights_owned=parts["weights_owned"],
                      kv_cache=parts["kv_cache"], scratch=parts["scratch"], tokenizer=parts["tokenizer"],
                      runtime=parts["runtime"], address_space=parts["address_space"],
                      context_length=shape.context_length, budget=budget, budget_source=budget_source)


def plan(model: ModelArg, n_ctx: Optional[int] = None, kv_type: Optional[str] = None, budget: Optional[int] = None,
         backend: str = "native", n_batch: int = 512, threads: Optional[int] = None) -> MemoryPlan:
    """Bytes this model needs on this device, part by part, before anything is loaded.

    `model` is a registry name, a .gguf path or an opened GGUFFile; only its
    header is read. n_ctx defaults to the model's context_length, kv_type to
    f16, threads to the device's default. `budget` (bytes) is recorded in the
    plan for its summary; fit() is what compares against it.
    """
    kv_type = kv_type or "f16"
    _check_args(backend, kv_type, n_batch, n_ctx, threads)
    threads = threads or hardware.default_threads()
    file, owned = _open_model(model)
    try:
        shape = read_shape(file)
        n_ctx = n_ctx or shape.context_length or 2048
        return _plan_open(file, shape, n_ctx, kv_type, backend, n_batch, threads, budget,
                          "given" if budget is not None else "unknown")
    finally:
        if owned:
            file.close()


# -- budget ----------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "ki": 1 << 10,
         "m": 1000**2, "mb": 1000**2, "mib": 1 << 20, "mi": 1 << 20,
         "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "gi": 1 << 30,
         "t": 1000**4, "tb": 1000**4, "tib": 1 << 40, "ti": 1 << 40}


def parse_size(value: Union[int, str]) -> int:
    """'1.5GB' (10^9), '800MiB' (2^20), '512' or an int -> bytes; anything else raises InvalidArgumentError."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"max_memory must be bytes (int) or a size like '1.5GB', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise InvalidArgumentError(f"max_memory must be positive, got {value}")
        return value
    if not isinstance(value, str):
        raise InvalidArgumentError(f"max_memory must be bytes (int) or a size like '1.5GB', got {value!r}")
    match = _SIZE_RE.match(value)
    if not match:
        raise InvalidArgumentError(f"max_memory {value!r} is not a size like '1.5GB', '800MiB' or '2000000000'")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    size = number * _UNIT[unit]
    if not math.isfinite(size) or size < 1:
        raise InvalidArgumentError(f"max_memory {value!r} is less than one byte")
    return int(size)


def _process_status() -> Tuple[int, int]:
    """(VmRSS, VmSize) of this process in bytes; zeros where /proc is not there."""
    rss = size = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmSize:"):
                    size = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss, size


@dataclass(frozen=True)
class Budget:
    """What a plan is checked against: resident bytes and address space, each with its source."""
    resident: Optional[int]
    resident_source: str
    address_space: Optional[int]          # None when no RLIMIT_AS applies
    address_space_source: str = "RLIMIT_AS"
    already_resident: int = 0             # this process's RSS now: part of the plan's runtime is already paid
    explicit: bool = False                # given by the user: no safety margin


def device_budget(max_memory: Union[int, str, None] = None, root: str = "/") -> Budget:
    """The memory this process may still use: max_memory if given, else MemAvailable or the cgroup's room."""
    info = hardware.probe(root, onnx=False).memory
    rss, vm_size = _process_status() if os.path.abspath(root) == "/" else (0, info.address_space_used_bytes or 0)
    as_budget = None
    if info.address_space_limit_bytes is not None:
        as_budget = max(0, info.address_space_limit_bytes - (vm_size or info.address_space_used_bytes or 0))
    if max_memory is not None:
        return Budget(parse_size(max_memory), "max_memory", as_budget, already_resident=rss, explicit=True)
    return Budget(info.budget_bytes, info.limit_source, as_budget, already_resident=rss)


def _verdict(p: MemoryPlan, budget: Budget) -> Tuple[bool, str, int, int]:
    """(fits, which limit binds, needed bytes, available bytes) for a plan under a budget."""
    if budget.address_space is not None and p.address_space > budget.address_space:
        return False, budget.address_space_source, p.address_space, budget.address_space
    if budget.resident is None:
        return True, budget.resident_source, p.total, 0   # nothing known to check against: let it load
    # The runtime part is this process, already running and already outside MemAvailable.
    need = p.total - min(budget.already_resident, p.runtime)
    if budget.explicit:
        return p.total <= budget.resident, budget.resident_source, p.total, budget.resident
    margin = max(SAFETY_MARGIN_MIN, int(SAFETY_MARGIN_FRACTION * need))
    return need + margin <= budget.resident, budget.resident_source, need + margin, budget.resident


def fit(model: ModelArg, n_ctx: Optional[int] = None, kv_type: str = "f16",
        max_memory: Union[int, str, None] = None, backend: str = "native", n_batch: int = 512,
        threads: Optional[int] = None, root: str = "/") -> MemoryPlan:
    """The plan to load `model` with, checked against this device's memory (or max_memory).

    With n_ctx None, the largest multiple of 256 up to the model's context_length
    that fits. Raises MemoryBudgetError, with every part and the ways out, when
    the asked context (or the smallest, 256) does not fit. Reads only the header.
    """
    kv_type = kv_type or "f16"
    _check_args(backend, kv_type, n_batch, n_ctx, threads)
    threads = threads or hardware.default_threads(root)
    budget = device_budget(max_memory, root)
    file, owned = _open_model(model, budget)
    try:
        shape = read_shape(file)

        def make(ctx: int, kv: str = kv_type) -> MemoryPlan:
            return _plan_open(file, shape, ctx, kv, backend, n_batch, threads, budget.resident,
                              budget.resident_source)

        if n_ctx is not None:
            candidate = make(n_ctx)
            if _verdict(candidate, budget)[0]:
                return candidate
            raise _budget_error(candidate, budget, make, shape)

        max_ctx = shape.context_length or 2048
        smallest = min(MIN_CONTEXT, max_ctx)
        if not _verdict(make(smallest), budget)[0]:
            raise _budget_error(make(smallest), budget, make, shape)
        best = _largest_fitting(make, budget, smallest, max_ctx)
        return make(best)
    finally:
        if owned:
            file.close()


def _largest_fitting(make, budget: Budget, smallest: int, max_ctx: int) -> int:
    """Largest context in {smallest, multiples of 256 <= max_ctx, max_ctx} that fits; needs grow with n_ctx."""
    if _verdict(make(max_ctx), budget)[0]:
        return max_ctx
    lo, hi = 1, max_ctx // CONTEXT_STEP     # in steps; lo may not fit when smallest < CONTEXT_STEP
    best = smallest
    while lo <= hi:
        mid = (lo + hi) // 2
        if _verdict(make(mid * CONTEXT_STEP), budget)[0]:
            best, lo = mid * CONTEXT_STEP, mid + 1
        else:
            hi = mid - 1
    return best


def _budget_error(p: MemoryPlan, budget: Budget, make, shape: ModelShape) -> MemoryBudgetError:
    fits, source, needed, available = _verdict(p, budget)
    kind = "address space" if source == budget.address_space_source and budget.address_space is not None \
        and p.address_space > budget.address_space else "memory"
    margin_note = "" if budget.explicit or kind == "address space" else " incl. a safety margin"
    lines = [f"{os.path.basename(p.model)} does not fit: on the {p.backend} backend at n_ctx={p.n_ctx} it needs "
             f"{_mib(needed)} of {kind}{margin_note}, {_mib(available)} available (limit from {source}).",
             f"Plan: {p.breakdown()}; total {_mib(p.total)} resident, {_mib(p.address_space)} address space."]
    ways = []
    max_ctx = shape.context_length or 2048
    smallest = min(MIN_CONTEXT, max_ctx)
    if _verdict(make(smallest, p.kv_type), budget)[0] and p.n_ctx > smallest:
        ctx = _largest_fitting(lambda c, kv=p.kv_type: make(c, kv), budget, smallest, min(max_ctx, p.n_ctx))
        ways.append(f"a smaller context: n_ctx={ctx} fits")
    if p.kv_type not in ("q8_0", "q4_0"):
        q8 = make(p.n_ctx, "q8_0")
        if _verdict(q8, budget)[0]:
            ways.append(f'an 8-bit KV cache: kv_type="q8_0" fits at n_ctx={p.n_ctx} (KV cache {_mib(q8.kv_cache)})')
        elif _verdict(make(smallest, "q8_0"), budget)[0]:
            ctx = _largest_fitting(lambda c: make(c, "q8_0"), budget, smallest, min(max_ctx, p.n_ctx))
            ways.append(f'an 8-bit KV cache: kv_type="q8_0" fits up to n_ctx={ctx}')
    smaller = _smaller_registry_models(shape.tensor_bytes)
    if smaller:
        ways.append("a smaller model: " + ", ".join(f"{name} ({_mib(size)})" for name, size in smaller))
    if kind == "address space":
        ways.append("a higher address-space limit (ulimit -v / RLIMIT_AS)")
    elif budget.explicit:
        ways.append("a larger max_memory")
    else:
        ways.append("closing other programs to free memory")
    lines.append("Ways out: " + "; ".join(ways) + ".")
    return MemoryBudgetError("\n".join(lines))


def _mapping_error(path, file_bytes: int, room: Optional[int], source: str) -> MemoryBudgetError:
    ways = [f"a smaller model: {', '.join(f'{n} ({_mib(b)})' for n, b in _smaller_registry_models(file_bytes))}"]
    if not _smaller_registry_models(file_bytes):
        ways = []
    ways.append("a higher address-space limit (ulimit -v / RLIMIT_AS)")
    return MemoryBudgetError(
        f"{os.path.basename(os.fspath(path))} does not fit: mapping the file needs {_mib(file_bytes)} of address "
        f"space before anything else, {_mib(room)} available (limit from {source}).\nWays out: "
        + "; ".join(ways) + ".")


def _smaller_registry_models(tensor_bytes: int):
    try:
        from . import registry
        entries = registry.load_registry().values()
    except Exception:  # the registry is advice here, never a reason to fail differently
        return []
    return sorted(((e.name, e.size) for e in entries if e.size < tensor_bytes * 0.9), key=lambda x: x[1])


# -- reporting -------------------------------------------------------------------------

def plan_rows(p: MemoryPlan) -> List[Tuple[str, str]]:
    """The plan as (label, value) rows, for `edgesdk info MODEL`."""
    context = f"n_ctx {p.n_ctx}" + (f" (model maximum {p.context_length})" if p.context_length else "")
    rows = [("backend", f"{p.backend}, {p.threads} threads, n_batch {p.n_batch}"),
            ("context", f"{context}, KV cache {p.kv_type}")]
    rows += [(name.replace("_", " "), f"{value / MIB:10,.1f} MiB") for name, value in p.parts().items()]
    rows.append(("total", f"{p.total / MIB:10,.1f} MiB resident, {p.address_space / MIB:,.1f} MiB address space"))
    if p.budget is not None:
        rows.append(("budget", f"{_mib(p.budget)} ({p.budget_source})"))
    return rows


def format_plan(p: MemoryPlan) -> str:
    """The plan as text."""
    return "\n".join([f"model:    {p.model}"] + [f"{label + ':':16}{value}" for label, value in plan_rows(p)])


__all__ = ["Budget", "KV_TYPES", "MemoryPlan", "ModelShape", "device_budget", "fit", "format_plan",
           "kv_cache_bytes", "parse_size", "plan", "plan_rows", "read_shape"]
