"""Quantizing a GGUF model: float (or, when allowed, quantized) tensors in, a smaller GGUF out.

A named mix ("q4_k_m", "q4_0", ...) picks a type per tensor the way llama.cpp's
quantizer does for its file types: 1-D tensors (norms, biases) stay as they are,
the output head (or the token embedding that doubles as it) gets Q6_K (Q8_0 in
a q8_0 file), and the K-quant mixes spend more bits on attn_v and ffn_down in
the first, last and every third layer. Where llama.cpp would use a type our
engine has no kernel for (Q5_K, Q5_1) we use the kernel type of the same size
(Q5_0). Patterns (`tensor_types`) override the mix per tensor.

Tensors are processed in chunks of rows, so memory stays near one chunk of
floats whatever the model's size; the rows of a chunk are quantized by the
native pool (edgesdk.kernels.quantize_rows) and streamed to the output through
edgesdk.gguf_writer, which writes atomically.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import gguf, kernels
from .errors import InvalidArgumentError, NonFiniteRowError, QuantizeError
from .gguf_writer import GGUFWriter, MetadataEntry, TensorEntry, metadata_of

log = logging.getLogger("edgesdk")

# Values quantized per native call: a quantized source's rows are dequantized to this many
# floats (64 MiB) first; F32, F16 and BF16 rows are read where they lie in the file.
CHUNK_VALUES = 16 << 20
# general.quantization_version as llama.cpp writes it (the layout of its quantized blocks).
QUANTIZATION_VERSION = 2
# Source types that are floats (quantized without loss of a previous rounding).
FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class Mix:
    """A named file type: `base` is the type of most matrices; `file_type` is llama.cpp's
    llama_ftype number written as general.file_type."""
    name: str
    base: str
    file_type: int
    summary: str


MIXES: Dict[str, Mix] = {m.name: m for m in (
    Mix("q4_0", "Q4_0", 2, "4.5 bits per weight, symmetric 4-bit blocks of 32"),
    Mix("q4_1", "Q4_1", 3, "5.0 bits per weight, 4-bit blocks of 32 with an offset"),
    Mix("q5_0", "Q5_0", 8, "5.5 bits per weight, symmetric 5-bit blocks of 32"),
    Mix("q8_0", "Q8_0", 7, "8.5 bits per weight, near lossless"),
    Mix("q4_k_s", "Q4_K", 14, "Q4_K with Q5_0 in the first attn_v and ffn_down layers"),
    Mix("q4_k_m", "Q4_K", 15, "Q4_K with Q6_K in attn_v and ffn_down of a third of the layers"),
    Mix("q6_k", "Q6_K", 18, "6.6 bits per weight"),
)}
DEFAULT_MIX = "q4_k_m"
TARGET_TYPES = kernels.QUANTIZABLE

_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.([A-Za-z0-9_]+)\.weight$")


@dataclass
class QuantizeOptions:
    """What `quantize_file` does. tensor_types: (regex, TYPE) pairs, the first whose regex
    matches a tensor's name (re.search) sets its type. importance: tensor name -> mean squared
    input activation per column (see edgesdk.imatrix)."""
    mix: str = DEFAULT_MIX
    tensor_types: Sequence[Tuple[str, str]] = ()
    token_embedding_type: Optional[str] = None
    output_tensor_type: Optional[str] = None
    allow_requantize: bool = False
    importance: Optional[Dict[str, np.ndarray]] = None
    importance_source: Optional[str] = None   # written as quantize.imatrix.dataset
    threads: int = 0


@dataclass(frozen=True)
class TensorPlan:
    """The type a tensor is written in, and why."""
    name: str
    shape: Tuple[int, ...]     # GGUF order
    source_type: str
    target_type: str
    reason: str

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class QuantizeProgress:
    """Bytes of the output written so far, of `total_bytes`, and the tensor being written."""
    done_bytes: int
    total_bytes: int
    tensor: str


@dataclass
class QuantizeReport:
    out_path: str
    mix: str
    tensors: List[TensorPlan]
    in_bytes: int
    out_bytes: int
    seconds: float
    requantized: int = 0
    type_counts: Dict[str, int] = field(default_factory=dict)


def _type_name(value: str, what: str) -> str:
    name = value.upper()
    if name not in TARGET_TYPES:
        raise InvalidArgumentError(f"{what}: {value!r} is not a type we write; choose from {', '.join(TARGET_TYPES)}")
    return name


def parse_tensor_type(spec: str) -> Tuple[str, str]:
    """'REGEX=TYPE' (as --tensor-type takes it) -> (regex, TYPE), both checked."""
    pattern, sep, type_ = spec.rpartition("=")
    if not sep or not pattern:
        raise InvalidArgumentError(f"--tensor-type {spec!r}: expected REGEX=TYPE, e.g. 'attn_v=q8_0'")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidArgumentError(f"--tensor-type {spec!r}: bad regular expression ({exc})") from None
    return pattern, _type_name(type_, f"--tensor-type {spec!r}")


def _more_bits(i_layer: int, n_layer: int) -> bool:
    """The layers llama.cpp's K mixes give more bits: the first and last eighth, and every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _fits(type_name: str, n_cols: int) -> bool:
    return n_cols % gguf.GGML_TYPES_BY_NAME[type_name].block_elems == 0


def _mix_type(mix: Mix, name: str, n_cols: int, layer_counts: Dict[str, int], tied: bool,
              has_importance: bool) -> Tuple[str, str]:
    """The mix's type for a matrix and why (before any shape fallback)."""
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if mix.base == "Q8_0" or not _fits("Q6_K", n_cols):
            return "Q8_0", "output head"
        return "Q6_K", "output head"
    match = _LAYER_TENSOR.match(name)
    if match is None:
        return mix.base, "mix base type"
    i_layer, role = int(match.group(1)), match.group(2)
    n_layer = layer_counts.get(role, 0)
    if mix.name == "q4_k_m" and role in ("attn_v", "ffn_down") and _more_bits(i_layer, n_layer):
        return "Q6_K", f"{role} of a layer given more bits"
    if mix.name == "q4_k_s":
        if role == "attn_v" and i_layer < 4:
            return "Q5_0", "attn_v of the first 4 layers (llama.cpp: Q5_K)"
        if role == "ffn_down" and i_layer < n_layer // 8:
            return "Q5_0", "ffn_down of the first eighth of layers (llama.cpp: Q5_K)"
    if mix.name == "q4_0" and has_importance and role == "ffn_down" and i_layer < n_layer // 8:
        return "Q4_1", "ffn_down of the first eighth of layers, with an importance matrix"
    return mix.base, "mix base type"


def _shape_fallback(type_name: str, n_cols: int) -> str:
    """As llama.cpp: a 256-block type on rows that do not divide takes a 32-block type, else F16."""
    if _fits(type_name, n_cols):
        return type_name
    smaller = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}.get(type_name)
    if smaller is not None and _fits(smaller, n_cols):
        return smaller
    return "F16"


def plan(source: gguf.GGUFFile, options: QuantizeOptions) -> List[TensorPlan]:
    """The type each tensor of `source` is written in."""
    if options.mix not in MIXES:
        raise InvalidArgumentError(f"unknown quantization {options.mix!r}; choose from {', '.join(MIXES)}")
    mix = MIXES[options.mix]
    overrides = [(re.compile(p), _type_name(t, f"tensor type for {p!r}")) for p, t in options.tensor_types]
    embd_type = options.token_embedding_type and _type_name(options.token_embedding_type, "token embedding type")
    output_type = options.output_tensor_type and _type_name(options.output_tensor_type, "output tensor type")
    tied = "output.weight" not in source.tensors
    layer_counts = Counter(m.group(2) for m in map(_LAYER_TENSOR.match, source.tensors) if m)
    plans = []
    for name, info in source.tensors.items():
        shape, n_cols = tuple(info.shape), int(info.shape[0])
        if len(shape) < 2 or not name.endswith(".weight"):
            plans.append(TensorPlan(name, shape, info.type_name, info.type_name, "kept: not a matrix"))
            continue
        explicit = None
        if embd_type and name == "token_embd.weight":
            explicit = (embd_type, "token embedding type")
        elif output_type and (name == "output.weight" or (tied and name == "token_embd.weight")):
            explicit = (output_type, "output tensor type")
        else:
            for pattern, type_ in overrides:
                if pattern.search(name):
                    explicit = (type_, f"--tensor-type {pattern.pattern}")
                    break
        if explicit is not None:
            target, reason = explicit
            if not _fits(target, n_cols):
                raise QuantizeError(
                    f"tensor {name!r} has rows of {n_cols} values, which do not divide into {target} blocks of "
                    f"{gguf.GGML_TYPES_BY_NAME[target].block_elems} ({reason})")
        else:
            target, reason = _mix_type(mix, name, n_cols, layer_counts, tied, options.importance is not None)
            fallback = _shape_fallback(target, n_cols)
            if fallback != target:
                reason = f"{target} does not divide rows of {n_cols}"
                target = fallback
        plans.append(TensorPlan(name, shape, info.type_name, target, reason))
    _check_sources(source.path, plans, options.allow_requantize)
    return plans


def _check_sources(path: str, plans: List[TensorPlan], allow_requantize: bool) -> None:
    changed = [p for p in plans if p.target_type != p.source_type]
    unreadable = sorted({p.source_type for p in changed if p.source_type not in kernels.KERNEL_TYPES})
    if unreadable:
        first = next(p for p in changed if p.source_type in unreadable)
        raise QuantizeError(f"{path}: tensor {first.name!r} is {first.source_type}, a type edgesdk cannot decode "
                            f"(readable: {', '.join(kernels.KERNEL_TYPES)})")
    quantized = Counter(p.source_type for p in changed if p.source_type not in FLOAT_TYPES)
    if quantized and not allow_requantize:
        listed = ", ".join(f"{t}: {n}" for t, n in sorted(quantized.items()))
        raise QuantizeError(
            f"{path} already holds quantized tensors ({listed}). Quantizing them again adds a second rounding "
            f"error to the first, so the result is worse than the same type made from the F16/F32 original; "
            f"pass --allow-requantize (allow_requantize=True) to do it anyway")


def _rows(info: gguf.TensorInfo) -> Tuple[int, int]:
    n_cols = int(info.shape[0])
    return info.n_elements // n_cols, n_cols


def _source_rows(source: gguf.GGUFFile, info: gguf.TensorInfo, r0: int, r1: int) -> Tuple[np.ndarray, str]:
    """Rows [r0, r1) of a tensor as (n, n_cols) values for kernels.quantize_rows and their type:
    F32, F16 and BF16 as stored (a view of the file, widened by the native tasks), other types
    dequantized to float32."""
    _, n_cols = _rows(info)
    lay = kernels.layout(info.type_id)
    row_bytes = lay.row_bytes(n_cols)
    raw = source.tensor_data(info.name)[r0 * row_bytes:r1 * row_bytes]
    if lay.name in kernels.ROW_SOURCE_DTYPES:
        return raw.view(kernels.ROW_SOURCE_DTYPES[lay.name]).reshape(r1 - r0, n_cols), lay.name
    return kernels.dequantize(lay.name, raw).reshape(r1 - r0, n_cols), "F32"


def _output_metadata(source: gguf.GGUFFile, mix: Mix, options: QuantizeOptions) -> List[MetadataEntry]:
    own = ("general.file_type", "general.quantization_version", "general.alignment")
    entries = [e for e in metadata_of(source) if e.key not in own and not e.key.startswith("quantize.imatrix.")]
    entries.append(MetadataEntry("general.quantization_version", gguf.T_UINT32, QUANTIZATION_VERSION))
    entries.append(MetadataEntry("general.file_type", gguf.T_UINT32, mix.file_type))
    if options.importance is not None:
        entries.append(MetadataEntry("quantize.imatrix.entries_count", gguf.T_INT32, len(options.importance)))
        if options.importance_source:
            entries.append(MetadataEntry("quantize.imatrix.dataset", gguf.T_STRING, options.importance_source))
    return entries


def quantize_file(in_path: Union[str, os.PathLike], out_path: Union[str, os.PathLike],
                  options: Optional[QuantizeOptions] = None,
                  progress: Optional[Callable[[QuantizeProgress], None]] = None) -> QuantizeReport:
    """Write `in_path`'s model to `out_path` with the types `plan` picks; nothing is left at
    out_path if anything fails."""
    options = options or QuantizeOptions()
    started = time.monotonic()
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    if os.path.abspath(in_path) == os.path.abspath(out_path):
        raise InvalidArgumentError(f"the output {out_path} would overwrite the input; choose another path")
    with gguf.open(in_path) as source, kernels.Pool(options.threads) as pool:
        plans = plan(source, options)
        mix = MIXES[options.mix]
        index = [TensorEntry(p.name, p.shape, gguf.GGML_TYPES_BY_NAME[p.target_type].type_id) for p in plans]
        requantized = sum(1 for p in plans if p.target_type != p.source_type and p.source_type not in FLOAT_TYPES)
        if requantized:
            log.warning("%s: requantizing %d already quantized tensors", in_path, requantized)
        with GGUFWriter(out_path, _output_metadata(source, mix, options), index) as writer:
            for p in plans:
                info = source.tensors[p.name]
                if p.target_type == p.source_type:
                    writer.write(p.name, source.tensor_data(p.name))
                else:
                    _quantize_tensor(source, info, p, options, writer, pool)
                if progress is not None:
                    progress(QuantizeProgress(writer.bytes_written, writer.total_bytes, p.name))
            out_bytes = writer.total_bytes
    return QuantizeReport(out_path, options.mix, plans, os.path.getsize(in_path), out_bytes,
                          time.monotonic() - started, requantized,
                          dict(Counter(p.target_type for p in plans)))


def _quantize_tensor(source: gguf.GGUFFile, info: gguf.TensorInfo, p: TensorPlan, options: QuantizeOptions,
                     writer: GGUFWriter, pool: kernels.Pool) -> None:
    n_rows, n_cols = _rows(info)
    importance = None
    if options.importance is not None and p.name in options.importance:
        importance = np.ascontiguousarray(options.importance[p.name], dtype=np.float32)
        if importance.shape != (n_cols,):
            raise QuantizeError(f"importance matrix entry for {p.name!r} has {importance.size} values; the tensor "
                                f"has {n_cols} columns")
    step = max(1, CHUNK_VALUES // n_cols)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        rows, rows_type = _source_rows(source, info, r0, r1)
        try:
            quantized = kernels.quantize_rows(p.target_type, rows, importance, pool, source_type=rows_type)
        except NonFiniteRowError as exc:
            raise NonFiniteRowError(f"tensor {p.name!r} row {r0 + exc.row} holds NaN or infinite values",
                                    tensor=p.name, row=r0 + exc.row) from None
        writer.write(p.name, quantized)
