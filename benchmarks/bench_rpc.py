"""A model split over 1, 2 and 3 `edgesdk worker`s on loopback, against the same model in one llama.cpp process.

Every configuration in one run, alternated within each run so machine-load drift hits all of
them; medians of --runs. Prompt: tok/s over a --prompt-tokens prompt; generation: tok/s over
--gen-tokens single-token steps after it (the llama.cpp backend's eval, no sampling). Each worker
gets --threads threads and the host llama.cpp the same, so the one-process anchor and every
split compute with the same thread count per layer. Ratios are split / one process.

  python benchmarks/bench_rpc.py [--runs 3] [--threads 1] [--models smollm2,llama1b]
Writes benchmarks/RESULTS_rpc.md.

Besides wall-clock tok/s it reports the CPU time per generated token summed over every process
that computes, which on a shared machine is the measure of cost. On one machine the workers share
its cores and memory bandwidth with the host, so this measures what the RPC hops cost, not what
separate boards would add: layers run one device after another, so a split model is never faster
than one device that holds it (it pools memory, not speed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

N_CTX = 512


def cpu_seconds(pids) -> float:
    """User + system CPU time the processes have used so far (/proc/PID/stat utime and stime)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(model, n_prompt: int, n_gen: int, seed: int, pids) -> tuple:
    """(prompt tok/s, generation tok/s, CPU ms per generated token over pids) of one run on a loaded model."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, model.n_vocab, size=n_prompt).tolist()
    backend = model.backend
    t0 = time.perf_counter()
    logits = backend.eval(ids, 0)
    t1 = time.perf_counter()
    cpu1 = cpu_seconds(pids)
    token = int(np.argmax(logits))
    for pos in range(n_prompt, n_prompt + n_gen):
        token = int(np.argmax(backend.eval([token], pos)))
    t2 = time.perf_counter()
    return n_prompt / (t1 - t0), n_gen / (t2 - t1), 1000 * (cpu_seconds(pids) - cpu1) / n_gen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="smollm2,llama1b")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--out", default=str(HERE / "RESULTS_rpc.md"))
    args = ap.parse_args()

    import edgesdk
    from vs_llamacpp import machine_description, model_paths
    from workers_fixture import start_workers

    load_before = os.getloadavg()[0]
    configs = [0, 1, 2, 3]      # workers; 0 is the one-process anchor
    rows = []
    # A worker serves one host connection at a time: each configuration has its own workers.
    workers = {n: start_workers(n, threads=args.threads) for n in configs if n}
    try:
        for name, path in model_paths(args.models.split(",")).items():
            models = {}
            for n in configs:
                models[n] = edgesdk.load(str(path), backend="llamacpp", n_ctx=N_CTX, threads=args.threads,
                                         workers=[w.endpoint for w in workers.get(n, [])])
            results = {n: [] for n in configs}
            for run in range(args.runs):
                # Each run starts at another configuration, so no one of them always follows the same one.
                for n in configs[run % len(configs):] + configs[:run % len(configs)]:
                    # CPU time of every process that computes: this one, the split model's child, its workers.
                    pids = [os.getpid()] + ([models[n].backend._child.process.pid] + [w.process.pid for w in workers[n]]
                                            if n else [])
                    results[n].append(measure(models[n], args.prompt_tokens, args.gen_tokens, run, pids))
                print(f"{name}: run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
            split = {n: [layers for _, layers in models[n].backend.layers] for n in configs if n}
            for model in models.values():
                model.close()
            med = {n: tuple(statistics.median(r[i] for r in results[n]) for i in range(3)) for n in configs}
            rows.append((name, med, split))
    finally:
        for group in workers.values():
            for w in group:
                w.stop()

    lines = [
        "# A model split over workers (llama.cpp RPC) on loopback",
        "",
        f"`python benchmarks/bench_rpc.py --runs {args.runs} --threads {args.threads}`. Machine: "
        f"{machine_description()}.",
        "",
        f"Load average (1 min) at start {load_before:.1f}, at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.",
        "",
        f"{args.threads} thread(s) per worker and for the host; n_ctx {N_CTX}; prompt {args.prompt_tokens} tokens, "
        f"then {args.gen_tokens} single-token steps; medians of {args.runs} runs. `1 process` is the llama.cpp "
        "backend without workers, measured in the same run: the ratios are split / 1 process. Configurations alternate within each run, each run "
        "starting at the next one.",
        "",
        "| model | workers | layers per worker | prompt tok/s | ratio | generation tok/s | ratio "
        "| CPU ms per generated token | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, med, split in rows:
        anchor_pp, anchor_gen, anchor_cpu = med[0]
        for n in configs:
            pp, gen, cpu = med[n]
            lines.append(f"| {name} | {n or '1 process'} | {'/'.join(map(str, split[n])) if n else '-'} "
                         f"| {pp:.1f} | {pp / anchor_pp:.2f} | {gen:.1f} | {gen / anchor_gen:.2f} "
                         f"| {cpu:.1f} | {cpu / anchor_cpu:.2f} |")
    lines += ["", "CPU ms per generated token adds the user and system time of every process that computes (this "
              "one, the split model's child, its workers): the honest cost of a step, whatever share of the CPUs "
              "the scheduler gives. Splitting does not reduce it: the same layers run one device after another, "
              "plus the RPC round trips (one per device per step, the activations and logits crossing "
              "loopback); at these sizes that overhead is within the run-to-run noise of this column. Wall-clock tok/s on a shared, loaded machine can still rise with workers: there, a set of "
              "processes that sleep between short bursts gets a larger share of the contended CPUs than one busy "
              "thread (the CPU ms column shows the work did not shrink). Across real boards expect tok/s no better "
              "than one board holding the whole model, minus the network's round trips: workers pool memory, "
              "not speed."]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
