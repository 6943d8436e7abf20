"""llama-cpp-python's own server (`python -m llama_cpp.server ...`), with llama.cpp's plain CPU path.

Its AMX weight repacking (use_extra_bufts) crashes on Q4_1 on the benchmark
machine's CPU, and llama_cpp.Llama has no argument to turn it off, so the
default model parameters it starts from get use_extra_bufts = False, as
edgesdk's llamacpp backend and benchmarks/vs_llamacpp.py run llama.cpp.
Everything else is llama_cpp.server's main() with its command-line arguments."""
from __future__ import annotations

import llama_cpp.llama_cpp as llama_cpp_c

_default_params = llama_cpp_c.llama_model_default_params


def _plain_cpu_params():
    params = _default_params()
    params.use_extra_bufts = False
    return params


llama_cpp_c.llama_model_default_params = _plain_cpu_params

if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    main()
