"""llama.cpp (llama-cpp-python) as the reference engine in tests and benchmarks.

llama.cpp 0.3.36's AMX "extra buffer" path segfaults on Q4_1 weights on CPUs with
AMX (this machine: Sapphire Rapids-class Xeon), even standalone. We load models with
model_params.use_extra_bufts = False, its plain CPU path, which is what it runs on
every CPU without AMX.
"""
from __future__ import annotations

import contextlib

import llama_cpp
import numpy as np
import llama_cpp.llama as _llama_module


@contextlib.contextmanager
def _no_extra_buffer_types():
    original = _llama_module.llama_cpp.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = False
        return p

    _llama_module.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        _llama_module.llama_cpp.llama_model_default_params = original


def load_llama(path, n_ctx: int, logits_all: bool = True, n_threads: int = 2, **kwargs) -> llama_cpp.Llama:
    with _no_extra_buffer_types():
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, n_threads=n_threads,
                               n_threads_batch=n_threads, verbose=False, **kwargs)


def llama_logits(llm: llama_cpp.Llama, ids) -> np.ndarray:
    """(len(ids), n_vocab) float64 teacher-forced logits of ids from position 0, batched as
    llama.cpp evaluates a prompt (llm opened with logits_all=True)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float64)


def llama_logits_from(llm: llama_cpp.Llama):
    """logits_from(window, first) for fidelity.perplexity."""
    def logits_from(window, first):
        llm.reset()
        llm.eval(list(window))
        return llm.scores[first:len(window)]  # a view: rows are converted chunk by chunk
    return logits_from
