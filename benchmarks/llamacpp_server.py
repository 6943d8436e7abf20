"""llama-cpp-python's own server (`python -m llama_cpp.server ...`), in llama.cpp's fastest working CPU
configuration.

llama.cpp's extra buffer types (runtime weight repacking) are its fast path, but builds with AMX
crash in them on the benchmark machine's CPU, and llama_cpp.Llama has no argument to choose: the
default model parameters it starts from get use_extra_bufts as edgesdk's llamacpp backend and
benchmarks/vs_llamacpp.py decide it (edgesdk.backends.llamacpp.extra_buffer_types_work).
Everything else is llama_cpp.server's main() with its command-line arguments."""
from __future__ import annotations

import llama_cpp.llama_cpp as llama_cpp_c

from edgesdk.backends.llamacpp import extra_buffer_types_work

_default_params = llama_cpp_c.llama_model_default_params
USE_EXTRA_BUFFER_TYPES = extra_buffer_types_work(llama_cpp_c.llama_print_system_info())


def _best_working_params():
    params = _default_params()
    params.use_extra_bufts = USE_EXTRA_BUFFER_TYPES
    return params


llama_cpp_c.llama_model_default_params = _best_working_params

if __name__ == "__main__":
    from llama_cpp.server.__main__ import main

    main()
