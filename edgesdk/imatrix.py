"""Importance matrices: how strongly each input column of each weight matrix is driven.

The model runs on calibration text in our native engine, which adds the square of
every matrix input to per-column sums (ek_model_set_activation_sums); divided by the
token count, that is the mean squared activation each weight column multiplies,
and so the weight its rounding error costs on average. edgesdk.quantize passes it
to the quantizers, which then fit each block to minimize that weighted error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Union

import numpy as np

from .errors import InvalidArgumentError

DEFAULT_MAX_TOKENS = 4096
DEFAULT_CHUNK = 512              # tokens evaluated from position 0 at a time
MAX_TEXT_BYTES = 64 << 20        # calibration text read at most


@dataclass
class ImportanceMatrix:
    """tensor name -> mean squared input activation per column (float32), over n_tokens."""
    importance: Dict[str, np.ndarray]
    n_tokens: int


def _names_by_slot(n_layer: int, tied: bool) -> List[List[str]]:
    """The tensors each block of the engine's sums feeds, in the engine's order."""
    slots = []
    for il in range(n_layer):
        p = f"blk.{il}."
        slots += [[p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"], [p + "attn_output.weight"],
                  [p + "ffn_gate.weight", p + "ffn_up.weight"], [p + "ffn_down.weight"]]
    slots.append(["token_embd.weight" if tied else "output.weight"])
    return slots


def compute(model_path: Union[str, os.PathLike], ids: Sequence[int], chunk: int = DEFAULT_CHUNK,
            threads: int = 0) -> ImportanceMatrix:
    """Evaluate `ids` in chunks of `chunk` tokens (each from position 0) and average."""
    from . import gguf
    from .backends.native import NativeBackend
    from .kernels import default_threads

    if len(ids) < 2:
        raise InvalidArgumentError(f"an importance matrix needs at least 2 calibration tokens, got {len(ids)}")
    with gguf.open(model_path) as f:
        tied = "output.weight" not in f.tensors
        n_cols = {name: int(info.shape[0]) for name, info in f.tensors.items()}
    n_ctx = min(chunk, len(ids))
    with NativeBackend(model_path, n_ctx=n_ctx, threads=threads or default_threads()) as be:
        sums = np.zeros(be.activation_sums_len(), dtype=np.float64)
        be.record_activation_squares(sums)
        for start in range(0, len(ids), n_ctx):
            be.eval(list(ids[start:start + n_ctx]), 0, all_logits=True)
        be.record_activation_squares(None)
        n_layer = be.shape.n_layer
    importance, offset = {}, 0
    for names in _names_by_slot(n_layer, tied):
        width = n_cols[names[0]]
        mean = (sums[offset:offset + width] / len(ids)).astype(np.float32)
        for name in names:
            importance[name] = mean
        offset += width
    if offset != sums.size:
        raise InvalidArgumentError(f"{model_path}: the engine recorded {sums.size} activation columns, the "
                                   f"tensors have {offset}")
    return ImportanceMatrix(importance, len(ids))


def compute_from_text_file(model_path: Union[str, os.PathLike], text_path: Union[str, os.PathLike],
                           max_tokens: int = DEFAULT_MAX_TOKENS, chunk: int = DEFAULT_CHUNK,
                           threads: int = 0) -> ImportanceMatrix:
    """Tokenize a calibration text with the model's own tokenizer (first max_tokens tokens) and compute."""
    from .tokenizer import Tokenizer

    if max_tokens < 2:
        raise InvalidArgumentError(f"max_tokens must be at least 2, got {max_tokens}")
    try:
        with open(text_path, "rb") as f:
            raw = f.read(MAX_TEXT_BYTES)
    except OSError as exc:
        raise InvalidArgumentError(f"calibration text {text_path}: {exc.strerror}") from None
    text = raw.decode("utf-8", errors="replace")
    ids = Tokenizer.from_gguf(model_path).encode(text)[:max_tokens]
    return compute(model_path, ids, chunk=chunk, threads=threads)
