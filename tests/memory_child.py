"""Child process for tests/test_memory.py: plan, (optionally) limit, load, fill the context, report.

    python tests/memory_child.py BACKEND MODEL N_CTX [--as-factor F]

It does what edgesdk.load does — loading.fit() first, then edgesdk's tokenizer and the backend — and
evaluates the whole context (a prompt of n_ctx - GENERATED tokens in batches,
then GENERATED greedy tokens one by one), then prints one JSON line: the plan,
the peak RSS (VmHWM), and whether fit() refused. With --as-factor it first sets
RLIMIT_AS to the address space in use now plus F times the plan's address space.

Backends: "llamacpp-direct" is llama-cpp-python's low-level API with the
settings of edgesdk's llamacpp backend (no extra buffer types, flash attention
auto, full sliding-window cache, n_ubatch = n_batch = min(n_ctx, 512));
"native" is edgesdk.backends.native.NativeBackend.
"""
from __future__ import annotations

import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from edgesdk import loading  # noqa: E402
from edgesdk.errors import MemoryBudgetError  # noqa: E402

GENERATED = 8
THREADS = 2
N_BATCH = 512
PLAN_BACKEND = {"llamacpp-direct": "llamacpp", "native": "native"}


def status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} missing from /proc/self/status")


class LlamaCppDirect:
    """llama.cpp through the low-level binding, configured as edgesdk.backends.llamacpp does."""

    def __init__(self, path: str, n_ctx: int):
        import llama_cpp as L
        import llama_cpp._logger as llama_logger
        llama_logger.set_verbose(False)
        L.llama_backend_init()
        self.L = L
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        from edgesdk.backends.llamacpp import extra_buffer_types_work
        mp.use_extra_bufts = extra_buffer_types_work(L.llama_print_system_info())
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError("llama_model_load_from_file failed")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_batch = min(n_ctx, N_BATCH)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, self.n_batch, self.n_batch, 1
        cp.n_threads = cp.n_threads_batch = THREADS
        cp.type_k = cp.type_v = 1  # f16
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_AUTO
        cp.swa_full = True
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama_init_from_model failed")
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.pos = 0

    def eval(self, ids) -> np.ndarray:
        L, b = self.L, self.batch
        logits = None
        for lo in range(0, len(ids), self.n_batch):
            chunk = ids[lo:lo + self.n_batch]
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(tok), self.pos + i, 1, 0
                b.seq_id[i][0] = 0
            b.logits[len(chunk) - 1] = 1
            if L.llama_decode(self.ctx, b) != 0:
                raise RuntimeError(f"llama_decode failed at position {self.pos}")
            self.pos += len(chunk)
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, len(chunk) - 1), shape=(self.n_vocab,))
        return np.array(logits)


class Native:
    def __init__(self, source, n_ctx: int):
        from edgesdk.backends.native import NativeBackend
        self.backend = NativeBackend(source, n_ctx=n_ctx, threads=THREADS, kv_type="f16", n_batch=N_BATCH)
        self.pos = 0

    def eval(self, ids) -> np.ndarray:
        logits = self.backend.eval(list(ids), self.pos)
        self.pos += len(ids)
        return logits


def main() -> None:
    backend, path, n_ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
    as_factor = float(sys.argv[sys.argv.index("--as-factor") + 1]) if "--as-factor" in sys.argv else None
    if backend == "llamacpp-direct":
        import llama_cpp  # noqa: F401  (the backend module imports it before load() plans)
    elif backend == "native":
        import edgesdk.backends.native  # noqa: F401
    plan_backend = PLAN_BACKEND[backend]
    result = {"backend": backend, "n_ctx": n_ctx}
    if as_factor is not None:
        planned = loading.plan(path, n_ctx=n_ctx, backend=plan_backend, threads=THREADS)
        limit = status_kib("VmSize") * 1024 + int(as_factor * planned.address_space)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        result["rlimit_as"] = limit
    try:
        plan = loading.fit(path, n_ctx=n_ctx, backend=plan_backend, threads=THREADS)
    except MemoryBudgetError as exc:
        result.update(refused=True, message=str(exc))
        print(json.dumps(result))
        return
    result.update(refused=False, planned=plan.total, parts=plan.parts(), address_space=plan.address_space)
    from edgesdk import gguf
    from edgesdk.tokenizer import Tokenizer
    # edgesdk tokenizes for every backend; the native backend shares the tokenizer's opened file.
    source = gguf.open(path) if backend == "native" else path
    tokenizer = Tokenizer.from_gguf(source)
    assert tokenizer.encode("Hello")
    model = LlamaCppDirect(path, n_ctx) if backend == "llamacpp-direct" else Native(source, n_ctx)
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 1000, size=n_ctx - GENERATED).tolist()
    logits = model.eval(prompt)
    for _ in range(GENERATED):
        logits = model.eval([int(np.argmax(logits))])
    result.update(peak_rss=status_kib("VmHWM") * 1024, vm_peak=status_kib("VmPeak") * 1024, positions=model.pos,
                  ru_maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
