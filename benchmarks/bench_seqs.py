"""Aggregate decode tokens per second of N sequences stepped together (one eval_batch per token).

    python benchmarks/bench_seqs.py [--model smollm2-135m-instruct] [--backends native,llamacpp]
                                    [--threads 2] [--seqs 1,2,4,8] [--steps 16] [--rounds 7]

Each backend is loaded once with n_seq = max(--seqs). Every sequence holds its
own 64-token prompt; a round rewinds the N sequences to their prompts and runs
--steps decode steps, each one eval_batch of one token per sequence (the weights
are read once per step for all N). As a contrast, "one at a time" runs the same
N x steps tokens as N separate single-sequence steps per token, which is what a
server without batching does. Rounds of every N and mode are interleaved, and
the medians are compared with N = 1 measured in the same run: decoding is
bandwidth-bound, so N streams together should cost little more than one
(aggregate ratio close to N).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import edgesdk  # noqa: E402
from edgesdk.backends.base import SeqInput  # noqa: E402

PROMPT_TOKENS = 64


def decode_round(backend, n: int, steps: int, prompts, together: bool) -> float:
    """Seconds for `steps` tokens of each of sequences 0..n-1, from their prompts."""
    tokens = [int(np.argmax(row)) for row in
              backend.eval_batch([SeqInput(s, prompts[s][-1:], PROMPT_TOKENS - 1) for s in range(n)])]
    t0 = time.perf_counter()
    for k in range(steps):
        entries = [SeqInput(s, [tokens[s]], PROMPT_TOKENS + k) for s in range(n)]
        if together:
            rows = backend.eval_batch(entries)
        else:
            rows = [backend.eval_batch([e])[0] for e in entries]
        tokens = [int(np.argmax(row)) for row in rows]
    return time.perf_counter() - t0


def measure(name: str, args, seqs) -> dict:
    model = edgesdk.load(args.model, backend=name, n_ctx=PROMPT_TOKENS + args.steps + 8, threads=args.threads,
                         n_seq=max(seqs))
    backend = model.backend
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(300, model.n_vocab, PROMPT_TOKENS)] for _ in range(max(seqs))]
    backend.eval_batch([SeqInput(s, p, 0) for s, p in enumerate(prompts)])
    modes = [(n, True) for n in seqs] + [(max(seqs), False)]
    times = {mode: [] for mode in modes}
    decode_round(backend, max(seqs), 2, prompts, True)          # warm-up
    for _ in range(args.rounds):
        for mode in modes:
            times[mode].append(decode_round(backend, mode[0], args.steps, prompts, mode[1]))
    model.close()
    return {mode: mode[0] * args.steps / statistics.median(t) for mode, t in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--backends", default="native,llamacpp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    seqs = sorted({int(s) for s in args.seqs.split(",")})
    print(f"# {args.model}, {args.threads} threads, {PROMPT_TOKENS}-token prompts, {args.steps} steps x "
          f"{args.rounds} rounds (medians); {platform.machine()}, {os.cpu_count()} CPUs")
    print("| backend | sequences | mode | aggregate tok/s | per stream tok/s | aggregate / one sequence |")
    print("|---|---|---|---|---|---|")
    for name in args.backends.split(","):
        rates = measure(name, args, seqs)
        anchor = rates[(seqs[0], True)]
        for (n, together), rate in rates.items():
            mode = "together" if together else "one at a time"
            print(f"| {name} | {n} | {mode} | {rate:.1f} | {rate / n:.1f} | {rate / anchor:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
