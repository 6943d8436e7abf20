"""llama.cpp (llama-cpp-python) as the reference engine in tests and benchmarks.

Loaded as edgesdk's llamacpp backend loads it: llama.cpp's extra buffer types (runtime weight
repacking) on, unless the installed build has AMX, whose path segfaults on Q4_1 weights on CPUs
with AMX (this machine: Sapphire Rapids-class Xeon); then its plain CPU path
(model_params.use_extra_bufts = False), which is what it runs on every CPU without them.
"""
from __future__ import annotations

import contextlib

import llama_cpp
import numpy as np
import llama_cpp.llama as _llama_module



def backend_extra_buffer_types() -> bool:
    """The backend's choice for the installed build (imported here only when needed: the benchmark's
    AVX2-only llama.cpp runs this module from a venv without edgesdk's dependencies)."""
    from edgesdk.backends.llamacpp import extra_buffer_types_work

    return extra_buffer_types_work(llama_cpp.llama_print_system_info())


@contextlib.contextmanager
def _extra_buffer_types(on: bool):
    original = _llama_module.llama_cpp.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = on
        return p

    _llama_module.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        _llama_module.llama_cpp.llama_model_default_params = original


def load_llama(path, n_ctx: int, logits_all: bool = True, n_threads: int = 2, extra_buffer_types=None,
               **kwargs) -> llama_cpp.Llama:
    """A Llama on path; extra_buffer_types None: as the backend decides."""
    on = backend_extra_buffer_types() if extra_buffer_types is None else extra_buffer_types
    with _extra_buffer_types(on):
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
