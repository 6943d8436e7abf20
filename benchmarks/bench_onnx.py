"""The ONNX backend next to the native engine and llama.cpp, on both providers this machine has, and
onnxruntime-genai running the same export (the reference a user would otherwise pick).

Engines, each measurement in its own process (peak RSS per engine), medians of --runs:
  native          edgesdk's engine
  llamacpp        llama-cpp-python
  onnx-cpu        edgesdk's ONNX backend on ORT's CPU provider (this venv's onnxruntime)
  onnx-openvino   the same export and the backend's feed loop on onnxruntime-openvino's CPU device
                  (its own venv: benchmarks/onnx_child.py)
  genai-cpu       onnxruntime-genai on the same export, CPU provider (its own venv; genai_config.json
                  written by edgesdk.onnx_export.genai)
The venvs are tools/onnx_envs.sh's. Prompt: PROMPT_TOKENS ids; generation: GEN_TOKENS greedy tokens.
Ratios are against the native engine measured in the same run, and onnx-cpu against genai-cpu.

  python benchmarks/bench_onnx.py [--runs 3] [--threads 1] [--models smollm2,gemma3]
Writes benchmarks/RESULTS_onnx.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from onnx_child import peak_rss  # noqa: E402  (the children's measure, for the in-venv engines too)

PROMPT_TOKENS = 128
GEN_TOKENS = 64
N_CTX = 512
MODELS = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}
ENGINES = ("native", "llamacpp", "onnx-cpu", "onnx-openvino", "genai-cpu")
RESULTS = HERE / "RESULTS_onnx.md"
NOTES_HEADING = "## Choices measured"


def _ids(n):
    # the same ids as benchmarks/onnx_child.py's
    return [300 + (i * 7919) % 20000 for i in range(n)]


def worker(engine: str, path: str, threads: int) -> dict:
    """In this process: load, prompt, greedy generation on an in-venv backend."""
    from edgesdk import loading
    from edgesdk.config import LoadConfig
    started = time.perf_counter()
    b = loading.prepare(path, LoadConfig(backend=engine, n_ctx=N_CTX, threads=threads)).open()
    load_s = time.perf_counter() - started
    t = time.perf_counter()
    logits = b.eval(_ids(PROMPT_TOKENS), 0)
    prompt_s = time.perf_counter() - t
    t = time.perf_counter()
    for k in range(GEN_TOKENS):
        logits = b.eval([int(np.argmax(logits))], PROMPT_TOKENS + k)
    gen_s = time.perf_counter() - t
    return {"load_s": load_s, "prompt_tps": PROMPT_TOKENS / prompt_s, "gen_tps": GEN_TOKENS / gen_s,
            "peak_rss": peak_rss()}


def _venv_python(name: str) -> Path:
    from edgesdk.registry import home
    python = home() / "venvs" / name / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: run tools/onnx_envs.sh")
    return python


def _run(cmd) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(engine: str, path: str, threads: int, export_dir: Path, genai_dir: Path) -> dict:
    child = str(HERE / "onnx_child.py")
    if engine in ("native", "llamacpp"):
        return _run([sys.executable, __file__, "--worker", engine, path, str(threads)])
    if engine == "onnx-cpu":
        return _run([sys.executable, __file__, "--worker", "onnx", path, str(threads)])
    if engine == "onnx-openvino":
        return _run([str(_venv_python("ort-openvino")), child, "ort", str(export_dir / "model.onnx"),
                     "OpenVINOExecutionProvider", json.dumps({"device_type": "CPU"}), str(threads),
                     str(PROMPT_TOKENS), str(GEN_TOKENS)])
    return _run([str(_venv_python("ort-genai")), child, "genai", str(genai_dir), str(threads), str(PROMPT_TOKENS),
                 str(GEN_TOKENS)])


def _prepare_exports(path: str, threads: int, scratch: Path):
    """The export the backend uses at N_CTX, and a directory with it and a genai_config.json."""
    from edgesdk import loading
    from edgesdk.config import LoadConfig
    from edgesdk.onnx_export.genai import write_genai_config
    with loading.prepare(path, LoadConfig(backend="onnx", n_ctx=N_CTX, threads=threads)).open() as b:
        export = b.export
    genai_dir = scratch / Path(path).stem
    genai_dir.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        (genai_dir / name).symlink_to(export.directory / name)
    write_genai_config(path, export, directory=genai_dir, threads=threads)
    return export.directory, genai_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "PATH", "THREADS"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]))))
        return
    from edgesdk import registry
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for key in args.models.split(","):
            path = str(registry.pull(MODELS[key]))
            export_dir, genai_dir = _prepare_exports(path, args.threads, Path(scratch))
            results = {e: [] for e in ENGINES}
            for _ in range(args.runs):           # interleaved, so that load changes hit every engine
                for engine in ENGINES:
                    results[engine].append(measure(engine, path, args.threads, export_dir, genai_dir))
            rows[key] = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in results.items()}
            print(key, json.dumps(rows[key], indent=1), flush=True)
    _write(rows, args, load_start, time.monotonic() - started)


def _write(rows, args, load_start, seconds) -> None:
    import onnxruntime
    lines = ["# The ONNX backend against the native engine, llama.cpp and onnxruntime-genai", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
             f"Linux {platform.release()}; onnxruntime {onnxruntime.__version__} (CPU provider), "
             f"onnxruntime-openvino and onnxruntime-genai from tools/onnx_envs.sh.", "",
             f"Threads: {args.threads}; medians of {args.runs} runs, each measurement in its own process, engines "
             f"interleaved. Prompt: {PROMPT_TOKENS} tokens; generation: {GEN_TOKENS} greedy tokens; n_ctx {N_CTX}. "
             f"Load average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}; "
             f"{seconds / 60:.0f} min.", "",
             "| model | engine | prompt tok/s | vs native | gen tok/s | vs native | load s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for model, engines in rows.items():
        base = engines["native"]
        for engine, r in engines.items():
            lines.append(f"| {model} | {engine} | {r['prompt_tps']:.1f} | {r['prompt_tps'] / base['prompt_tps']:.2f}x | "
                         f"{r['gen_tps']:.1f} | {r['gen_tps'] / base['gen_tps']:.2f}x | {r['load_s']:.2f} | "
                         f"{r['peak_rss'] / (1 << 20):.0f} |")
    lines += ["", "Our ONNX backend against onnxruntime-genai on the same export and provider (CPU):", ""]
    for model, engines in rows.items():
        ours, ref = engines["onnx-cpu"], engines["genai-cpu"]
        lines.append(f"- {model}: prompt {ours['prompt_tps'] / ref['prompt_tps']:.2f}x, generation "
                     f"{ours['gen_tps'] / ref['gen_tps']:.2f}x")
    # Measurements made by hand (commands given there) are kept from the previous file.
    notes = RESULTS.read_text().partition(NOTES_HEADING)[2] if RESULTS.exists() else ""
    RESULTS.write_text("\n".join(lines) + "\n" + (f"\n{NOTES_HEADING}{notes}" if notes else ""))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
