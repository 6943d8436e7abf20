"""Every check of the CUDA backend that needs a GPU, in one run written to benchmarks/RESULTS_cuda.md;
sized for under 10 minutes on an H200 with 16 cores, the build included (the build takes 15 s on 2
cores here; the stages have time limits: BUILD_TIMEOUT_S, TEST_TIMEOUT_S). Not yet run on a GPU.

  1. builds the native and CUDA libraries in place (setup.py, EDGESDK_CUDA=1; the GPU's own
     architecture is added to sm_87/sm_90 when it is another),
  2. runs tests/test_cuda.py (every product path against the CPU engine for each type and
     m = 1, 8, 512; the real models' fidelity against the float64 truth no worse than the CPU
     engine; greedy text equal to the CPU engine's up to a near-tie; sessions) and the backend
     contract suite on the cuda backend,
  3. measures prompt (512 tokens) and generation (128 greedy tokens) tok/s of the cuda backend,
     and of llama.cpp's CUDA backend on the same files when llama-cpp-python is built with CUDA
     (llama_supports_gpu_offload()).

Models: SmolLM2-135M-Instruct (Q4_1) and Gemma-3-270M (Q4_K_M: Q4_K/Q5_0/Q6_K/Q8_0) from
$EDGESDK_HOME (`edgesdk pull smollm2-135m-instruct gemma3-270m` once, with a network).

    python tools/cuda_check.py [--skip-build] [--runs 3] [--out benchmarks/RESULTS_cuda.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}
PROMPT_TOKENS = 512
GEN_TOKENS = 128
N_CTX = 1024
TEST_TIMEOUT_S = 420
BUILD_TIMEOUT_S = 240


def run(cmd, timeout, env=None) -> "tuple[int, str, float]":
    start = time.monotonic()
    try:
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **(env or {})})
        out, rc = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as exc:
        out, rc = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout} s", 124
    return rc, out, time.monotonic() - start


def gpu_arch() -> "str | None":
    """The first GPU's compute capability as nvcc spells it ("90"), from nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    rc, out, _ = run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], 30)
    first = out.strip().splitlines()[0] if rc == 0 and out.strip() else ""
    return first.replace(".", "") if first.replace(".", "").isdigit() else None


def archs() -> list:
    """sm_87 and sm_90, and the GPU's own architecture when it is another."""
    sys.path.insert(0, str(ROOT / "tools"))
    import build_cuda
    found = list(build_cuda.DEFAULT_ARCHS)
    arch = gpu_arch()
    return found + [arch] if arch and arch not in found else found


def build() -> "tuple[bool, str]":
    rc, out, seconds = run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], BUILD_TIMEOUT_S,
                           env={"EDGESDK_CUDA": "1", "EDGESDK_CUDA_ARCHS": ",".join(archs())})
    return rc == 0, f"build for sm_{', sm_'.join(archs())}: {'ok' if rc == 0 else 'FAILED'} in {seconds:.0f} s" + (
        "" if rc == 0 else "\n\n```\n" + out[-4000:] + "\n```")


def pytest_section() -> "tuple[bool, str]":
    # the whole contract suite: some of its tests loop over every installed backend (cuda among them)
    cmd = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "tests/test_backend_contract.py", "-q", "-rs", "-s",
           "-p", "no:cacheprovider"]
    rc, out, seconds = run(cmd, TEST_TIMEOUT_S, env={"PYTHONPATH": str(ROOT), "EDGESDK_CUDA_ARCHS": ",".join(archs())})
    keep = [line for line in out.splitlines() if "truth vs" in line or "passed" in line or "failed" in line
            or line.startswith(("FAILED", "ERROR", "SKIPPED"))]
    # skipped GPU tests mean the run checked nothing that needs the GPU
    text = f"`{' '.join(cmd[1:])}`: exit {rc} in {seconds:.0f} s\n\n```\n" + "\n".join(keep[-60:]) + "\n```"
    return rc == 0 and "no CUDA device" not in out, text


def _median_rate(fn, runs: int, tokens: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return tokens / statistics.median(times)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def bench_edgesdk(path: str, runs: int) -> dict:
    import numpy as np
    from edgesdk import loading
    from edgesdk.config import LoadConfig
    rss_before = rss_bytes()
    prepared = loading.prepare(path, LoadConfig(backend="cuda", n_ctx=N_CTX, threads=1))
    backend = prepared.open()
    try:
        rng = np.random.default_rng(0)
        ids = [int(i) for i in rng.integers(10, backend.n_vocab - 10, PROMPT_TOKENS)]
        backend.eval(ids[:8], 0)   # warm-up: the context, the kernels' first launch
        prompt = _median_rate(lambda: backend.eval(ids, 0), runs, PROMPT_TOKENS)

        def generate():
            logits = backend.eval(ids[:16], 0)
            for step in range(GEN_TOKENS):
                logits = backend.eval([int(np.argmax(logits))], 16 + step)
        gen = _median_rate(generate, runs, GEN_TOKENS)
        return {"device": backend.info().device, "prompt": prompt, "gen": gen, "plan": prepared.plan,
                "rss_added": rss_bytes() - rss_before}
    finally:
        backend.close()


def bench_llamacpp(path: str, runs: int) -> "dict | str":
    try:
        import llama_cpp
    except ImportError as exc:
        return f"llama-cpp-python not installed ({exc})"
    from edgesdk import ggml_rpc
    gpus = ggml_rpc.gpu_devices()   # llama_supports_gpu_offload() is also true for an RPC-only build
    if not gpus:
        return "llama-cpp-python here has no GPU device (built without CUDA): llama.cpp not measured"
    import numpy as np
    llm = llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_batch=PROMPT_TOKENS, n_gpu_layers=-1, verbose=False)
    try:
        rng = np.random.default_rng(0)
        ids = [int(i) for i in rng.integers(10, llm.n_vocab() - 10, PROMPT_TOKENS)]

        def prompt():
            llm.reset()
            llm.eval(ids)
        prompt_rate = _median_rate(prompt, runs, PROMPT_TOKENS)

        def generate():
            llm.reset()
            llm.eval(ids[:16])
            for _ in range(GEN_TOKENS):
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return {"prompt": prompt_rate, "gen": _median_rate(generate, runs, GEN_TOKENS)}
    finally:
        llm.close()


def bench_section(runs: int) -> str:
    sys.path.insert(0, str(ROOT))
    from edgesdk import registry
    rows = ["| model | engine | prompt tok/s (512) | generation tok/s (128) |", "|---|---|---:|---:|"]
    notes, plans = [], []
    for short, name in MODELS.items():
        path = str(registry.resolve(name))
        ours = bench_edgesdk(path, runs)
        rows.append(f"| {short} | edgesdk cuda, {ours['device']} | {ours['prompt']:,.0f} | {ours['gen']:,.1f} |")
        mib = 1 << 20
        plans.append(f"- {short}: {ours['plan'].summary()}; this process's RSS grew by "
                     f"{ours['rss_added'] / mib:,.0f} MiB over the load and the runs (the plan's runtime part "
                     f"includes the interpreter, already resident)")
        theirs = bench_llamacpp(path, runs)
        if isinstance(theirs, str):
            notes.append(theirs)
        else:
            rows.append(f"| {short} | llama.cpp CUDA (all layers) | {theirs['prompt']:,.0f} | {theirs['gen']:,.1f} |")
    return ("\n".join(rows) + ("\n\n" + "\n".join(sorted(set(notes))) if notes else "") + f"\n\nMedians of {runs} runs."
            + "\n\nMemory plan against the measured resident set:\n\n" + "\n".join(plans))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-build", action="store_true", help="use the libraries already built in place")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_cuda.md"))
    args = parser.parse_args(argv)
    rc, smi, _ = run(["nvidia-smi", "-L"], 30) if shutil.which("nvidia-smi") else (1, "nvidia-smi not found", 0)
    sections = [f"# CUDA backend: checks on a GPU\n\nMachine: {platform.machine()}, {os.cpu_count()} CPUs; "
                f"{smi.strip() or 'no GPU listed'}\n"]
    ok = True
    if not args.skip_build:
        built, text = build()
        sections.append("## Build\n\n" + text + "\n")
        ok &= built
    if ok:
        passed, text = pytest_section()
        sections.append("## Tests\n\n" + text + "\n")
        ok &= passed
        try:
            sections.append("## Speed\n\n" + bench_section(args.runs) + "\n")
        except Exception as exc:   # the report is still written, with what failed
            sections.append(f"## Speed\n\nbenchmark failed: {type(exc).__name__}: {exc}\n")
            ok = False
    Path(args.out).write_text("\n".join(sections))
    print("\n".join(sections))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
