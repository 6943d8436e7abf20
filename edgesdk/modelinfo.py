"""What a model file is (architecture, size, quantization, tokenizer) and what
the native layer sees of this CPU: the facts behind `edgesdk info`.

Each section is a dataclass built by one function, so the CLI prints them
and other sections (device, memory plan) sit beside them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from . import gguf, registry
from .shape import read_summary

# llama.cpp's `general.file_type` numbers: the quantization a file was made as.
FILE_TYPE_NAMES: Dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}

# tokenizer.ggml.model -> what kind of tokenizer that is.
TOKENIZER_KINDS: Dict[str, str] = {
    "gpt2": "BPE (GPT-2 byte-level)",
    "llama": "SentencePiece (llama)",
    "bert": "WordPiece (BERT)",
    "t5": "Unigram (T5)",
    "rwkv": "RWKV trie",
    "none": "none",
}


@dataclass(frozen=True)
class TensorTypeUsage:
    """All tensors of one ggml type: how many, how many weights, how many bytes."""
    type_name: str
    n_tensors: int
    n_elements: int
    nbytes: int


@dataclass(frozen=True)
class ModelInfo:
    path: str
    file_size: int
    gguf_version: int
    name: Optional[str]
    architecture: Optional[str]
    parameters: int
    file_type: Optional[str]
    bits_per_weight: float
    n_layers: Optional[int]
    n_heads: Optional[int]
    n_kv_heads: Optional[int]
    head_dim: Optional[int]
    embedding_length: Optional[int]
    feed_forward_length: Optional[int]
    context_length: Optional[int]
    sliding_window: Optional[int]
    quantization: List[TensorTypeUsage]  # largest share of bytes first
    tokenizer_model: Optional[str]
    tokenizer_kind: str
    vocab_size: Optional[int]
    has_chat_template: bool
    n_tensors: int


@dataclass(frozen=True)
class BackendStatus:
    name: str
    description: str
    available: bool
    reason: str          # why not, when not available


@dataclass(frozen=True)
class BackendsInfo:
    """Every registered backend and whether it can run here."""
    backends: List[BackendStatus]


@dataclass(frozen=True)
class NativeInfo:
    """The CPU as edgesdk's native layer sees it, and the kernel family it chose."""
    cpu_features: List[str]
    isa_available: List[str]
    isa_current: str


def describe_model(model: Union[str, os.PathLike]) -> ModelInfo:
    """Read a model's header (registry name or .gguf path; no network, no weights loaded)."""
    path = registry.resolve(model)
    with gguf.open(path) as f:
        meta = f.metadata
        shape = read_summary(f)
        usage: Dict[str, List[int]] = {}
        for t in f.tensors.values():
            counts = usage.setdefault(t.type_name, [0, 0, 0])
            counts[0] += 1
            counts[1] += t.n_elements
            counts[2] += t.nbytes
        quantization = sorted((TensorTypeUsage(name, *c) for name, c in usage.items()),
                              key=lambda u: (-u.nbytes, u.type_name))
        parameters = sum(u.n_elements for u in quantization)
        tensor_bytes = sum(u.nbytes for u in quantization)

        tokens = meta.get("tokenizer.ggml.tokens")
        tokenizer_model = meta.get("tokenizer.ggml.model")
        file_type = meta.get("general.file_type")
        return ModelInfo(
            path=str(path),
            file_size=f.file_size,
            gguf_version=f.version,
            name=meta.get("general.name"),
            architecture=shape.architecture,
            parameters=parameters,
            file_type=FILE_TYPE_NAMES.get(file_type, str(file_type)) if file_type is not None else None,
            bits_per_weight=8.0 * tensor_bytes / parameters if parameters else 0.0,
            n_layers=shape.n_layer,
            n_heads=shape.n_head,
            n_kv_heads=shape.n_head_kv,
            head_dim=shape.head_dim,
            embedding_length=shape.n_embd,
            feed_forward_length=shape.n_ff,
            context_length=shape.context_length,
            sliding_window=shape.sliding_window,
            quantization=quantization,
            tokenizer_model=tokenizer_model,
            tokenizer_kind=TOKENIZER_KINDS.get(tokenizer_model, tokenizer_model or "none"),
            vocab_size=len(tokens) if isinstance(tokens, list) else shape.vocab_size,
            has_chat_template=isinstance(meta.get("tokenizer.chat_template"), str)
            and bool(meta["tokenizer.chat_template"].strip()),
            n_tensors=len(f.tensors),
        )


def describe_backends() -> BackendsInfo:
    """The registry's backends, in the order "auto" prefers them, with their availability here."""
    from . import backends

    statuses = []
    for name, status in backends.availability().items():
        cls = backends.get(name)
        statuses.append(BackendStatus(name=name, description=cls.description, available=status.ok,
                                      reason=status.reason))
    return BackendsInfo(backends=statuses)


def describe_native() -> NativeInfo:
    """CPU features and kernel ISA from the native library (raises NativeBuildError if it is not built)."""
    from . import _native

    return NativeInfo(
        cpu_features=_native.cpu_features(),
        isa_available=_native.isa_available(),
        isa_current=_native.isa_current(),
    )
