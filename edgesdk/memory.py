"""What fits: a model's memory, part by part, before anything is loaded.

A backend tells what it will allocate for a model shape and settings
(`Backend.memory_parts`); this module adds it up and checks it against the
device. The parts of a `MemoryPlan`:
  weights_mapped  tensor bytes of the file, resident once read (mmap pages)
  weights_owned   copies the backend makes of them (repacked or converted)
  kv_cache        K and V for n_ctx positions of every layer, in the KV type
  scratch         activations, attention and logits for one batch of n_batch tokens
  tokenizer       the vocabulary's tables in memory
  runtime         the interpreter, numpy, the backend's libraries and their fixed costs
Its `total` is the peak resident set of a process that loads the model and
fills the whole context; `address_space` is the virtual memory the load adds
(what an RLIMIT_AS limit counts: whole mappings and reservations, touched or not).

`fit()` checks plans against what this device (or the user) allows and picks
the largest context that fits when none is given; otherwise it raises
MemoryBudgetError with the numbers and the ways out. This module is a leaf: it
knows the model only by its `ModelShape` and the backend only by the parts it
reports (edgesdk.loading brings the two together).
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import gguf, hardware
from .config import parse_size
from .errors import MemoryBudgetError
from .shape import ModelShape

MIB = 1 << 20

# KV cache element types: (values per block, bytes per block), from the GGUF type table.
KV_BLOCKS: Dict[str, Tuple[int, int]] = {
    name: (gguf.GGML_TYPES_BY_NAME[name.upper()].block_elems, gguf.GGML_TYPES_BY_NAME[name.upper()].block_bytes)
    for name in ("f32", "f16", "q8_0", "q4_0")}

CONTEXT_STEP = 256          # fit() picks contexts in multiples of this
MIN_CONTEXT = 256           # below this a chat model is of little use: fit() gives up instead
DEFAULT_CONTEXT = 2048      # a model that does not say how long it was trained for
# fit() keeps this share of the plan free when the budget is the device's own memory: the plan
# is measured to be within 10% of the peak RSS, and the kernel needs some room to reclaim cache.
SAFETY_MARGIN_FRACTION = 0.10
SAFETY_MARGIN_MIN = 32 * MIB

# -- constants every backend's plan uses, measured on this project's build machine (x86-64,
#    Python 3.11) with tools in tests/test_memory.py; each says what it stands for.
PYTHON_NUMPY_RSS = 28 * MIB          # `python -c "import numpy"`: 13 MiB interpreter + 14 MiB numpy
THREAD_ADDRESS_SPACE = 72 * MIB      # per compute thread: an 8 MiB stack + a 64 MiB malloc arena
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

PART_NAMES = ("weights_mapped", "weights_owned", "kv_cache", "scratch", "tokenizer", "runtime")


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
    n_seq: int = 1                            # sequences the KV cache holds, n_ctx positions each

    @property
    def total(self) -> int:
        return sum(getattr(self, name) for name in PART_NAMES)

    def parts(self) -> Dict[str, int]:
        return {name: getattr(self, name) for name in PART_NAMES}

    def breakdown(self) -> str:
        weights = f"weights {_mib(self.weights_mapped)} mapped"
        if self.weights_owned:
            weights += f" + {_mib(self.weights_owned)} owned"
        return (f"{weights}, KV cache {_mib(self.kv_cache)} ({self.kv_type}), scratch {_mib(self.scratch)}, "
                f"tokenizer {_mib(self.tokenizer)}, runtime {_mib(self.runtime)}")

    @property
    def context_text(self) -> str:
        """n_ctx, and the sequences when there are several: "n_ctx=2048 x 8 sequences"."""
        return f"n_ctx={self.n_ctx}" + (f" x {self.n_seq} sequences" if self.n_seq > 1 else "")

    def summary(self) -> str:
        line = (f"{os.path.basename(self.model)} on {self.backend}, {self.context_text}: needs {_mib(self.total)} "
                f"({self.breakdown()})")
        if self.budget is not None:
            line += f"; {_mib(self.budget)} available ({self.budget_source})"
        return line


def _mib(n: Optional[int]) -> str:
    return "unknown" if n is None else f"{n / MIB:,.0f} MiB"


# -- shared formulas, for the backends' memory_parts -----------------------------------

def kv_row_bytes(kv_type: str, n_values: int) -> int:
    """Bytes of n_values K (or V) values of one position in the KV type (quantized rows are whole blocks)."""
    block_values, block_bytes = KV_BLOCKS[kv_type]
    return -(-n_values // block_values) * block_bytes


def kv_cache_bytes(shape: ModelShape, n_ctx: int, kv_type: str) -> int:
    """K and V of every layer for n_ctx positions (every layer keeps all positions, sliding-window ones too)."""
    k = kv_row_bytes(kv_type, shape.n_head_kv * shape.head_dim_k)
    v = kv_row_bytes(kv_type, shape.n_head_kv * shape.head_dim_v)
    return shape.n_layer * n_ctx * (k + v)


def gguf_metadata_bytes(shape: ModelShape) -> int:
    """Resident bytes of an open GGUFFile's vocabulary: its strings as Python objects, its numeric
    arrays, and the header's pages of the mapping."""
    return ((shape.n_vocab + shape.n_merges) * GGUF_BYTES_PER_STRING
            + shape.n_token_arrays * shape.n_vocab * GGUF_BYTES_PER_ARRAY_ITEM + shape.header_bytes)


def tokenizer_table_bytes(shape: ModelShape) -> int:
    """edgesdk.tokenizer's own tables (both directions of the vocabulary, merge ranks), any backend."""
    return shape.n_vocab * TOKENIZER_BYTES_PER_TOKEN + shape.n_merges * TOKENIZER_BYTES_PER_MERGE


# -- plans -------------------------------------------------------------------------------

PartsFor = Callable[[int, str, int], Dict[str, int]]   # (n_ctx, kv_type, n_seq) -> PART_NAMES + "address_space"


# -- GPU backends ------------------------------------------------------------------------

# Estimates, not yet measured on this project's devices (tools/cuda_check.py reports the plan
# against the measured RSS on a GPU machine): the CUDA runtime's resident cost in the process
# (driver, context, cudart's host side), and device memory held back beyond a plan's parts
# (module images, launch buffers; llama.cpp's cuBLAS workspace).
CUDA_RUNTIME_RSS = 160 * MIB
CUDA_CONTEXT_DEVICE_BYTES = 300 * MIB


def gpu_plan_parts(device: Dict[str, int], host: Dict[str, int], unified: bool) -> Dict[str, int]:
    """The plan parts of a GPU backend, from what it puts on the device (weights in the GPU layout,
    kv_cache, scratch) and on the host (staging: the largest matrix converted before its upload;
    pinned: page-locked pass buffers; logits; tokenizer; runtime).

    The weights count once, as the GPU copy (weights_owned): the file's pages are released as each
    matrix is uploaded (weights_mapped 0). Integrated memory (Jetson): the GPU allocates from the
    same RAM, so the host's buffers join the plan, checked against this machine's budget. Discrete
    GPU: the plan is the device's (gpu_budget), with the CUDA context's own reservation; the host's
    share (tokenizer, runtime) is small and stays in it, so it errs by that much on the safe side."""
    host_scratch = host["staging"] + host["pinned"] + host["logits"]
    scratch = device["scratch"] + (host_scratch if unified else CUDA_CONTEXT_DEVICE_BYTES)
    return {"weights_mapped": 0, "weights_owned": device["weights"], "kv_cache": device["kv_cache"],
            "scratch": scratch, "tokenizer": host["tokenizer"], "runtime": host["runtime"]}


def gpu_budget(host: "Budget", device_name: str, free_bytes: int, unified: bool) -> "Budget":
    """What a GPU backend's plan is checked against: this machine's budget on integrated memory (or
    when max_memory was given), the device's free memory on a discrete GPU."""
    if unified or host.explicit:
        return host
    return Budget(free_bytes, f"{device_name} free memory", host.address_space, host.address_space_source)


def gpu_layers(layer_bytes: Sequence[int], output_bytes: int, compute_bytes: int, free: int) -> int:
    """How many layers a layer-offloading engine (llama.cpp's n_gpu_layers) puts on a GPU with `free`
    bytes: it offloads the last ones first, and the output head once every layer is there (a count of
    len(layer_bytes) + 1). layer_bytes: weights and KV cache of each layer; compute_bytes: the
    device's compute buffer, reserved with the CUDA context before any layer. Never "all" blindly:
    0 when not even one layer fits."""
    room = free - compute_bytes - CUDA_CONTEXT_DEVICE_BYTES
    count = 0
    for size in reversed(layer_bytes):
        if size > room:
            return count
        room -= size
        count += 1
    return count + 1 if output_bytes <= room else count


@dataclass(frozen=True)
class PlanRequest:
    """What a plan is made for: one model on one backend with fixed threads and batch; the
    backend's `parts_for` answers each (n_ctx, kv_type, n_seq) the planner tries."""
    model: str                            # path, for messages
    backend: str
    shape: ModelShape
    n_batch: int
    threads: int
    parts_for: PartsFor
    kv_types: Tuple[str, ...]             # what the backend's cache can hold (ways out name only these)
    smaller_models: Tuple[Tuple[str, int], ...] = ()   # (name, bytes) to suggest when nothing fits
    n_seq: int = 1                        # sequences asked for (the planner only suggests fewer)

    @property
    def max_context(self) -> int:
        return self.shape.context_length or DEFAULT_CONTEXT

    def plan(self, n_ctx: int, kv_type: str, budget: Optional["Budget"] = None,
             n_seq: Optional[int] = None) -> MemoryPlan:
        n_seq = self.n_seq if n_seq is None else n_seq
        parts = self.parts_for(n_ctx, kv_type, n_seq)
        return MemoryPlan(model=self.model, backend=self.backend, n_ctx=n_ctx, kv_type=kv_type, n_seq=n_seq,
                          n_batch=self.n_batch, threads=self.threads,
                          **{name: int(parts[name]) for name in PART_NAMES},
                          address_space=int(parts["address_space"]), context_length=self.shape.context_length,
                          budget=budget.resident if budget else None,
                          budget_source=budget.resident_source if budget else "unknown")


# -- budget ----------------------------------------------------------------------------

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


def fit(request: PlanRequest, budget: Budget, n_ctx: Optional[int] = None, kv_type: str = "f16") -> MemoryPlan:
    """The plan to load with, checked against the budget.

    With n_ctx None, the largest multiple of 256 up to the model's context_length
    that fits. Raises MemoryBudgetError, with every part and the ways out, when
    the asked context (or the smallest, 256) does not fit.
    """
    def make(ctx: int, kv: str = kv_type) -> MemoryPlan:
        return request.plan(ctx, kv, budget)

    if n_ctx is not None:
        candidate = make(n_ctx)
        if _verdict(candidate, budget)[0]:
            return candidate
        raise _budget_error(candidate, budget, make, request)
    max_ctx = request.max_context
    smallest = min(MIN_CONTEXT, max_ctx)
    if not _verdict(make(smallest), budget)[0]:
        raise _budget_error(make(smallest), budget, make, request)
    return make(_largest_fitting(make, budget, smallest, max_ctx))


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


def _budget_error(p: MemoryPlan, budget: Budget, make, request: PlanRequest) -> MemoryBudgetError:
    fits, source, needed, available = _verdict(p, budget)
    kind = "address space" if source == budget.address_space_source and budget.address_space is not None \
        and p.address_space > budget.address_space else "memory"
    margin_note = "" if budget.explicit or kind == "address space" else " incl. a safety margin"
    lines = [f"{os.path.basename(p.model)} does not fit: on the {p.backend} backend at {p.context_text} it needs "
             f"{_mib(needed)} of {kind}{margin_note}, {_mib(available)} available (limit from {source}).",
             f"Plan: {p.breakdown()}; total {_mib(p.total)} resident, {_mib(p.address_space)} address space."]
    ways = []
    max_ctx = request.max_context
    smallest = min(MIN_CONTEXT, max_ctx)
    if _verdict(make(smallest, p.kv_type), budget)[0] and p.n_ctx > smallest:
        ctx = _largest_fitting(lambda c, kv=p.kv_type: make(c, kv), budget, smallest, min(max_ctx, p.n_ctx))
        each = f" for each of {p.n_seq} sequences" if p.n_seq > 1 else ""
        ways.append(f"a smaller context: n_ctx={ctx} fits{each}")
    if p.n_seq > 1:
        fewer = [n for n in range(p.n_seq - 1, 0, -1)
                 if _verdict(request.plan(p.n_ctx, p.kv_type, budget, n), budget)[0]]
        if fewer:
            ways.append(f"fewer sequences: n_seq={fewer[0]} fits at n_ctx={p.n_ctx}")
    if p.kv_type not in ("q8_0", "q4_0") and "q8_0" in request.kv_types:
        q8 = make(p.n_ctx, "q8_0")
        if _verdict(q8, budget)[0]:
            ways.append(f'an 8-bit KV cache: kv_type="q8_0" fits at n_ctx={p.n_ctx} (KV cache {_mib(q8.kv_cache)})')
        elif _verdict(make(smallest, "q8_0"), budget)[0]:
            ctx = _largest_fitting(lambda c: make(c, "q8_0"), budget, smallest, min(max_ctx, p.n_ctx))
            ways.append(f'an 8-bit KV cache: kv_type="q8_0" fits up to n_ctx={ctx}')
    smaller = [(n, b) for n, b in request.smaller_models if b < request.shape.tensor_bytes * 0.9]
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


def open_within(path: Union[str, os.PathLike], budget: Budget,
                smaller_models: Sequence[Tuple[str, int]] = ()) -> gguf.GGUFFile:
    """gguf.open(path), refused first when mapping the whole file would not fit the address space."""
    file_bytes = os.path.getsize(path)
    room = budget.address_space
    if room is not None and file_bytes > room:
        raise _mapping_error(path, file_bytes, room, budget.address_space_source, smaller_models)
    try:
        return gguf.open(path)
    except OSError as exc:   # mmap's ENOMEM: the address space ran out before our estimate did
        if exc.errno != errno.ENOMEM:
            raise
        raise _mapping_error(path, file_bytes, room, budget.address_space_source, smaller_models) from None


def _mapping_error(path, file_bytes: int, room: Optional[int], source: str,
                   smaller_models: Sequence[Tuple[str, int]]) -> MemoryBudgetError:
    smaller = [(n, b) for n, b in smaller_models if b < file_bytes * 0.9]
    ways = [f"a smaller model: {', '.join(f'{n} ({_mib(b)})' for n, b in smaller)}"] if smaller else []
    ways.append("a higher address-space limit (ulimit -v / RLIMIT_AS)")
    return MemoryBudgetError(
        f"{os.path.basename(os.fspath(path))} does not fit: mapping the file needs {_mib(file_bytes)} of address "
        f"space before anything else, {_mib(room)} available (limit from {source}).\nWays out: "
        + "; ".join(ways) + ".")


# -- a model split over workers -----------------------------------------------------------

# What a worker is asked to keep free beyond its share: llama.cpp sizes its compute buffers when
# it first builds the graph, and our estimate of them is approximate.
WORKER_MARGIN_FRACTION = 0.05
WORKER_MARGIN_MIN = 8 * MIB


@dataclass(frozen=True)
class WorkerShare:
    """One worker's part of a split model: the layers [first, end) and the bytes they take there."""
    endpoint: str
    free: int                    # what the worker offered when asked
    first: int
    end: int
    holds_output: bool           # the output head (last worker)
    bytes: int

    @property
    def n_layers(self) -> int:
        return self.end - self.first


@dataclass(frozen=True)
class SplitPlan:
    """Where each layer of a model goes, worker by worker, at one context size."""
    model: str
    n_ctx: int
    n_layer: int
    shares: Tuple[WorkerShare, ...]

    def used_shares(self) -> Tuple[WorkerShare, ...]:
        """The shares holding something; a worker given no layers (nor the output head) is left out."""
        return tuple(s for s in self.shares if s.n_layers or s.holds_output)

    def tensor_split(self) -> List[float]:
        """llama.cpp's tensor_split: per used share's device, its layers, plus one slot for the output head
        on the last. (llama.cpp gives layer il, of n_layer + 1 slots, to the first device whose running sum
        exceeds il.)"""
        return [float(s.n_layers + (1 if s.holds_output else 0)) for s in self.used_shares()]


def _worker_room(free: int) -> int:
    return free - max(WORKER_MARGIN_MIN, int(WORKER_MARGIN_FRACTION * free))


def split_layers(model: str, n_ctx: int, offered: Sequence[Tuple[str, int]], layer_bytes: Sequence[int],
                 fixed_bytes: int, output_bytes: int) -> SplitPlan:
    """Contiguous layers for each worker (in the order given), in proportion to what each offers, so that
    every share fits: layer_bytes[i] (weights + KV of layer i), fixed_bytes on every worker (compute
    buffers), output_bytes on the last. MemoryBudgetError with every worker's numbers when they cannot."""
    rooms = [_worker_room(free) - fixed_bytes - (output_bytes if j == len(offered) - 1 else 0)
             for j, (_, free) in enumerate(offered)]
    n = len(layer_bytes)
    counts = _proportional_counts(layer_bytes, rooms) or _greedy_counts(layer_bytes, rooms)
    if counts is None:
        need = sum(layer_bytes) + fixed_bytes * len(offered) + output_bytes
        have = sum(max(0, _worker_room(free)) for _, free in offered)
        rows = "; ".join(f"{endpoint} offers {_mib(free)}" for endpoint, free in offered)
        raise MemoryBudgetError(
            f"{os.path.basename(model)} does not fit its workers at n_ctx={n_ctx}: {n} layers of "
            f"{_mib(sum(layer_bytes))} (weights and KV cache), {_mib(fixed_bytes)} of compute buffers on each "
            f"worker and a {_mib(output_bytes)} output head need {_mib(need)}, the workers have {_mib(have)} "
            f"after a {WORKER_MARGIN_FRACTION:.0%} margin ({rows}).\nWays out: a smaller context (n_ctx), "
            f"an 8-bit KV cache (kv_type=\"q8_0\"), more workers, or a larger --mem on a worker.")
    shares, first = [], 0
    for j, ((endpoint, free), count) in enumerate(zip(offered, counts)):
        last = j == len(offered) - 1
        held = sum(layer_bytes[first:first + count]) + fixed_bytes + (output_bytes if last else 0)
        shares.append(WorkerShare(endpoint, free, first, first + count, last, held))
        first += count
    return SplitPlan(model=model, n_ctx=n_ctx, n_layer=n, shares=tuple(shares))


def _proportional_counts(layer_bytes: Sequence[int], rooms: Sequence[int]) -> Optional[List[int]]:
    """Each worker's layers in proportion to its room (what is left shared by who is left); None when
    a worker would overflow."""
    counts, first, n = [], 0, len(layer_bytes)
    for j, room in enumerate(rooms):
        left_room = sum(max(0, r) for r in rooms[j:])
        if j == len(rooms) - 1:
            count = n - first
        else:
            target = (n - first) * max(0, room) / left_room if left_room > 0 else 0
            count = min(n - first, int(target + 0.5))
        if room < 0 or sum(layer_bytes[first:first + count]) > room:
            return None
        counts.append(count)
        first += count
    return counts


def _greedy_counts(layer_bytes: Sequence[int], rooms: Sequence[int]) -> Optional[List[int]]:
    """Each worker as many layers as fit, in order (for contiguous shares, the most that can fit at all)."""
    counts, first = [], 0
    for room in rooms:
        if room < 0:
            return None
        count, held = 0, 0
        while first + count < len(layer_bytes) and held + layer_bytes[first + count] <= room:
            held += layer_bytes[first + count]
            count += 1
        counts.append(count)
        first += count
    return counts if first == len(layer_bytes) else None


def split_rows(p: SplitPlan) -> List[Tuple[str, str]]:
    """The split as (label, value) rows, for `edgesdk info MODEL --workers ...`."""
    def layers(s: WorkerShare) -> str:
        return f"layers {s.first:3}-{s.end - 1:<3}" if s.n_layers else "no layers  "

    return [("workers" if i == 0 else "",
             f"{s.endpoint:21} {layers(s)} ({s.n_layers:3} of {p.n_layer})"
             f"{' + output' if s.holds_output else '         '} {s.bytes / MIB:9,.1f} MiB of {s.free / MIB:,.1f} MiB offered")
            for i, s in enumerate(p.shares)]


# -- reporting -------------------------------------------------------------------------

def plan_rows(p: MemoryPlan) -> List[Tuple[str, str]]:
    """The plan as (label, value) rows, for `edgesdk info MODEL`."""
    context = f"n_ctx {p.n_ctx}" + (f" (model maximum {p.context_length})" if p.context_length else "")
    rows = [("backend", f"{p.backend}, {p.threads} threads, n_batch {p.n_batch}"),
            ("context", f"{context}, KV cache {p.kv_type}" + (f", {p.n_seq} sequences" if p.n_seq > 1 else ""))]
    rows += [(name.replace("_", " "), f"{value / MIB:10,.1f} MiB") for name, value in p.parts().items()]
    rows.append(("total", f"{p.total / MIB:10,.1f} MiB resident, {p.address_space / MIB:,.1f} MiB address space"))
    if p.budget is not None:
        rows.append(("budget", f"{_mib(p.budget)} ({p.budget_source})"))
    return rows


def format_plan(p: MemoryPlan) -> str:
    """The plan as text."""
    return "\n".join([f"model:    {p.model}"] + [f"{label + ':':16}{value}" for label, value in plan_rows(p)])


__all__ = ["Budget", "KV_BLOCKS", "MemoryPlan", "PlanRequest", "SplitPlan", "WorkerShare", "split_layers", "split_rows", "device_budget", "fit", "format_plan",
           "gguf_metadata_bytes", "kv_cache_bytes", "open_within", "parse_size", "plan_rows", "tokenizer_table_bytes"]
