"""Two builds of edgesdk's native engine on the same file, timed in one run, in pairs.

For a change inside the engine (which matrices are repacked, a kernel) that cannot be
switched at run time: each build is a source tree with its extension built in place
(python setup.py build_ext --inplace). Rounds alternate the order (A B, B A, ...), each
measurement in its own subprocess; the ratio reported is the median of the per-round
ratios new / base, so that load on a shared machine moves both sides of a pair alike.

  prompt processing  tok/s over a PROMPT_TOKENS-token prompt (one batched eval)
  generation         tok/s over GEN_TOKENS tokens evaluated one at a time

  python benchmarks/paired_builds.py --base /path/to/base/tree --new . [--model gemma3-270m]
      [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT_TOKENS = 512
GEN_TOKENS = 64
N_CTX = PROMPT_TOKENS + GEN_TOKENS


def worker(model: str, threads: int) -> dict:
    """Runs inside the child, with the build under test first on sys.path."""
    import numpy as np

    from edgesdk import registry
    from edgesdk.backends.native import NativeBackend

    path = registry.pull(model)  # cached: no network
    ids = list(np.random.default_rng(0).integers(100, 20000, PROMPT_TOKENS))
    with NativeBackend(path, n_ctx=N_CTX, threads=threads) as be:
        owned = be.memory_used()["weights_owned"]
        be.eval(ids[:16], 0)  # warm: pages and caches
        t = time.perf_counter()
        be.eval(ids, 0)
        prompt_s = time.perf_counter() - t
        token = 1000
        t = time.perf_counter()
        for i in range(GEN_TOKENS):
            token = int(np.argmax(be.eval([token], PROMPT_TOKENS + i)))
        gen_s = time.perf_counter() - t
    return {"prompt_tps": PROMPT_TOKENS / prompt_s, "gen_tps": GEN_TOKENS / gen_s, "weights_owned": owned}


def measure(tree: Path, model: str, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import paired_builds as p; print(json.dumps(p.worker({model!r}, {threads})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--new", type=Path, required=True)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    runs = {"base": [], "new": []}
    for r in range(args.rounds):
        order = ("base", "new") if r % 2 == 0 else ("new", "base")
        for name in order:
            runs[name].append(measure(trees[name], args.model, args.threads))
        print(f"round {r + 1}: " + ", ".join(f"{n} prompt {runs[n][-1]['prompt_tps']:.1f} gen {runs[n][-1]['gen_tps']:.1f}"
                                             for n in ("base", "new")), flush=True)
    print(f"\n{args.model}, {args.threads} threads, {args.rounds} paired rounds (medians)")
    print(f"{'':8s} {'prompt tok/s':>13s} {'gen tok/s':>10s} {'owned MiB':>10s}")
    for name in ("base", "new"):
        print(f"{name:8s} {statistics.median(m['prompt_tps'] for m in runs[name]):13.1f} "
              f"{statistics.median(m['gen_tps'] for m in runs[name]):10.1f} "
              f"{runs[name][0]['weights_owned'] / 2**20:10.1f}")
    for key, label in (("prompt_tps", "prompt"), ("gen_tps", "generation")):
        ratios = [n[key] / b[key] for b, n in zip(runs["base"], runs["new"])]
        print(f"new / base {label}: median {statistics.median(ratios):.2f}x "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
