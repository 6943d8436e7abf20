"""edgesdk's native engine against llama.cpp (llama-cpp-python) on the same GGUF files.

Both engines in one run, same file, same thread count; each measurement runs in
its own subprocess (so peak RSS is per engine), several times; medians reported.

  prompt processing  tok/s over a 512-token prompt, and over long prompts (4,096 and 8,192
                     tokens by default, each in a context of its own length)
  generation         tok/s over 128 greedy tokens after a short prompt
  time to first token  from loading the file to the first token's logits (32-token prompt)
  peak RSS           of the worker process
plus generation as a fraction of the memory-bandwidth limit: weight bytes read per
token x tok/s / read bandwidth measured in the same run (ek_measure_read_bandwidth).

llama.cpp runs in its fastest configuration that works here and, beside it, its plain path:
  llamacpp        extra buffer types (runtime weight repacking) on, unless the installed build has
                  AMX, whose path crashes on this CPU (edgesdk.backends.llamacpp decides; the report
                  says which it was)
  llamacpp_plain  use_extra_bufts=False
The "x86 mini-PC" rows (--avx2) force our kernels to AVX2 (EDGESDK_ISA=avx2) against llama.cpp built
for AVX2 only, from its own venv ($EDGESDK_HOME/bench/llamacpp-avx2, built once by
tools/build_llamacpp.py --config avx2): the Intel N100/N150 class has no AVX-512.

Models: SmolLM2-135M-Instruct (Q4_1), Gemma-3-270M (Q4_K_M), and a 1B-class llama
with random Q4_0 weights (TinyLlama's shape), written by this script once under
$EDGESDK_HOME/bench.

  python benchmarks/vs_llamacpp.py [--runs 3] [--threads 2] [--models smollm2,gemma3,llama1b]
                                   [--long 4096,8192] [--long-runs 1] [--avx2 | --avx2-only]
Writes benchmarks/RESULTS.md.

On a device without llama.cpp (a Raspberry Pi with edgesdk's wheel: llama-cpp-python has no aarch64
wheel), `--engines native --out RESULTS_device.md` measures edgesdk alone; the anchor is then the read
bandwidth measured in the same run (generation as a fraction of the bandwidth limit).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The checkout's edgesdk when its native library is built here; otherwise the installed one (a wheel).
if (ROOT / "edgesdk" / "libedgekern.so").exists():
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPT_TOKENS = 512
GEN_TOKENS = 128
TTFT_PROMPT_TOKENS = 32
N_CTX = 1024


# ------------------------------------------------------------ the 1B model

LLAMA_1B = dict(n_embd=2048, n_layer=22, n_ff=5632, n_head=32, n_head_kv=4, n_vocab=32000)


def llama_1b_path() -> Path:
    """A TinyLlama-shaped model with random Q4_0 weights and a synthetic SentencePiece vocabulary."""
    from edgesdk import registry

    path = registry.home() / "bench" / "random-llama-1b-q4_0.gguf"
    if path.exists():
        return path
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    c = LLAMA_1B
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_uint32("llama.context_length", 2048)
    w.add_uint32("llama.embedding_length", c["n_embd"])
    w.add_uint32("llama.block_count", c["n_layer"])
    w.add_uint32("llama.feed_forward_length", c["n_ff"])
    w.add_uint32("llama.attention.head_count", c["n_head"])
    w.add_uint32("llama.attention.head_count_kv", c["n_head_kv"])
    w.add_uint32("llama.rope.dimension_count", c["n_embd"] // c["n_head"])
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32("llama.rope.freq_base", 10000.0)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581tok{i}" for i in range(c["n_vocab"] - len(tokens))]
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.scores", [-float(i) for i in range(len(tokens))])
    w.add_array("tokenizer.ggml.token_type", [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259))
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_uint32("tokenizer.ggml.unknown_token_id", 0)

    def q4_0(rows, cols):
        # Random Q4_0 blocks: small f16 scales (weights ~ +-0.02), random nibbles.
        blocks = rng.integers(0, 256, size=(rows, cols // 32, 18), dtype=np.uint8)
        scales = (rng.uniform(0.5, 1.5, size=(rows, cols // 32)) * 0.003).astype(np.float16)
        blocks[:, :, 0:2] = scales.view(np.uint8).reshape(rows, cols // 32, 2)
        return blocks.reshape(rows, cols // 32 * 18)

    E, F, kd = c["n_embd"], c["n_ff"], c["n_embd"] // c["n_head"] * c["n_head_kv"]
    Q4_0 = gguf.GGMLQuantizationType.Q4_0

    def add_q(name, rows, cols):
        w.add_tensor(name, q4_0(rows, cols), raw_shape=(rows, cols // 32 * 18), raw_dtype=Q4_0)

    add_q("token_embd.weight", c["n_vocab"], E)
    w.add_tensor("output_norm.weight", np.ones(E, np.float32))
    add_q("output.weight", c["n_vocab"], E)
    for il in range(c["n_layer"]):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", np.ones(E, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(E, np.float32))
        add_q(p + "attn_q.weight", E, E)
        add_q(p + "attn_k.weight", kd, E)
        add_q(p + "attn_v.weight", kd, E)
        add_q(p + "attn_output.weight", E, E)
        add_q(p + "ffn_gate.weight", F, E)
        add_q(p + "ffn_up.weight", F, E)
        add_q(p + "ffn_down.weight", E, F)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def model_paths(names):
    from edgesdk import registry

    paths = {}
    for name in names:
        if name == "smollm2":
            paths[name] = Path(registry.pull("smollm2-135m-instruct"))
        elif name == "gemma3":
            paths[name] = Path(registry.pull("gemma3-270m"))
        elif name == "llama1b":
            paths[name] = llama_1b_path()
        else:
            raise SystemExit(f"unknown model {name!r}")
    return paths


# ------------------------------------------------------------ workers

def prompt_ids(n_vocab: int, n: int, seed: int) -> list:
    # Ids from the low, ordinary part of the vocabulary; the same for both engines.
    return [int(t) for t in np.random.default_rng(seed).integers(300, min(n_vocab, 30000), n)]


class NativeRunner:
    def __init__(self, path, threads, n_ctx=N_CTX):
        from edgesdk.backends.native import NativeBackend

        self.be = NativeBackend(path, n_ctx=n_ctx, threads=threads)
        self.n_vocab = self.be.n_vocab

    def prompt(self, ids):
        return self.be.eval(ids, 0)

    def step(self, token, pos):
        return self.be.eval([token], pos)


class LlamaRunner:
    def __init__(self, path, threads, n_ctx=N_CTX, extra_buffer_types=None):
        from llamacpp_ref import load_llama

        self.llm = load_llama(path, n_ctx=n_ctx, logits_all=False, n_threads=threads, n_batch=PROMPT_TOKENS,
                              extra_buffer_types=extra_buffer_types)
        self.n_vocab = self.llm.n_vocab()

    def _last(self):
        # The context's last output row: Llama.scores holds n_batch rows without logits_all, too few
        # to index by position once a prompt is longer than a batch.
        import llama_cpp

        row = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).astype(np.float32)

    def prompt(self, ids):
        self.llm.reset()
        self.llm.eval(ids)
        return self._last()

    def step(self, token, pos):
        assert self.llm.n_tokens == pos
        self.llm.eval([token])
        return self._last()


def peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over exec
    from the parent, so every worker would report at least the parent's peak."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Engines: how each worker process is started and what it runs. "python" None: this interpreter.
def engines(avx2_python=None) -> dict:
    table = {
        "native": {"python": None, "env": {}, "runner": "native"},
        "llamacpp": {"python": None, "env": {}, "runner": "llamacpp"},
        "llamacpp_plain": {"python": None, "env": {}, "runner": "llamacpp", "extra_buffer_types": False},
    }
    if avx2_python:
        table["native_avx2"] = {"python": None, "env": {"EDGESDK_ISA": "avx2"}, "runner": "native"}
        # That build has no AMX: its extra buffer types (repacking) are on.
        table["llamacpp_avx2"] = {"python": avx2_python, "env": {}, "runner": "llamacpp", "extra_buffer_types": True}
    return table


def make_runner(spec: dict, path: str, threads: int, n_ctx: int):
    if spec["runner"] == "native":
        return NativeRunner(path, threads, n_ctx)
    return LlamaRunner(path, threads, n_ctx, spec.get("extra_buffer_types"))


def worker(spec: dict, path: str, threads: int, what: str) -> dict:
    n_long = int(what[3:]) if what.startswith("pp_") else 0
    t0 = time.perf_counter()
    runner = make_runner(spec, path, threads, n_long or N_CTX)
    if what == "ttft":
        logits = runner.prompt(prompt_ids(runner.n_vocab, TTFT_PROMPT_TOKENS, 1))
        int(np.argmax(logits))
        return {"ttft_s": time.perf_counter() - t0,
                "peak_rss": peak_rss()}
    if what == "pp" or n_long:
        n = n_long or PROMPT_TOKENS
        ids = prompt_ids(runner.n_vocab, n, 2)
        runner.prompt(ids[:16])  # warm-up: page in the weights
        t = time.perf_counter()
        runner.prompt(ids)
        return {f"pp{n}_tok_s" if n_long else "pp_tok_s": n / (time.perf_counter() - t)}
    if what == "gen":
        ids = prompt_ids(runner.n_vocab, 8, 3)
        logits = runner.prompt(ids)
        pos = len(ids)
        t = time.perf_counter()
        for _ in range(GEN_TOKENS):
            logits = runner.step(int(np.argmax(logits)), pos)
            pos += 1
        return {"gen_tok_s": GEN_TOKENS / (time.perf_counter() - t),
                "peak_rss": peak_rss()}
    raise SystemExit(f"unknown measurement {what}")


def run_worker(spec, path, threads, what) -> dict:
    env = dict(os.environ, **spec["env"])
    out = subprocess.run([spec["python"] or sys.executable, __file__, "--worker", json.dumps(spec), str(path),
                          str(threads), what], capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{spec} {what} on {path} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def avx2_llamacpp_python() -> str:
    """The AVX2-only llama.cpp's venv interpreter, building the venv once (tools/build_llamacpp.py)."""
    from edgesdk import registry

    where = registry.home() / "bench" / "llamacpp-avx2"
    python = where / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "build_llamacpp.py"), "--config", "avx2",
                        "--venv", str(where)], check=True)
    return str(python)


def llamacpp_info(python=None) -> dict:
    """Version, system info and whether extra buffer types are on, of the llama.cpp a python imports."""
    from edgesdk.backends.llamacpp import extra_buffer_types_work

    probe = ("import json, llama_cpp; print(json.dumps({'version': llama_cpp.__version__, "
             "'system': llama_cpp.llama_print_system_info().decode().strip()}))")
    out = subprocess.run([python or sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    info["extra"] = extra_buffer_types_work(info["system"].encode())
    return info


def last_level_cache_bytes() -> int:
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        value = int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        best = max(best, value)
    return best


# ------------------------------------------------------------ report

def weight_bytes_per_token(path) -> int:
    """Bytes of every matrix a generated token reads: all layers plus the output head."""
    from edgesdk import gguf

    f = gguf.open(path)
    try:
        total = sum(t.nbytes for name, t in f.tensors.items() if name.startswith("blk."))
        head = f.tensors.get("output.weight") or f.tensors["token_embd.weight"]
        return total + head.nbytes
    finally:
        f.close()


def machine_description() -> str:
    from edgesdk import _native

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {mem:.1f} GiB RAM, last-level cache "
            f"{last_level_cache_bytes() / 2 ** 20:.0f} MiB, {platform.system()} {platform.release()}; "
            f"native ISA {_native.isa_current()}")


def llamacpp_description(info: dict) -> str:
    config = ("extra buffer types ON (runtime weight repacking)" if info["extra"] else
              "extra buffer types OFF: this build has AMX, whose path crashes on this CPU, so its best working "
              "configuration is the plain path")
    return f"llama-cpp-python {info['version']}, {config}; ggml: `{info['system']}`"


def measure(table, names, paths, args, long_lengths) -> list:
    """Rows (model, medians per engine, weight bytes per token, bandwidth) for the engines named."""
    from edgesdk import kernels

    rows = []
    for name, path in paths.items():
        res = {e: {} for e in names}
        whats = ["pp", "gen", "ttft"]
        for run in range(args.runs):
            # Alternate the engines within each run so drift in machine load hits all of them.
            for what in whats + ([f"pp_{n}" for n in long_lengths] if run < args.long_runs else []):
                for engine in names:
                    for key, value in run_worker(table[engine], path, args.threads, what).items():
                        res[engine].setdefault(key, []).append(value)
            print(f"{name}: run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
        with kernels.Pool(args.threads) as pool:
            bandwidth = kernels.measure_read_bandwidth(1 << 29, 5, pool)
        med = {e: {k: statistics.median(v) for k, v in r.items()} for e, r in res.items()}
        rows.append((name, med, weight_bytes_per_token(path), bandwidth))
        print(name, json.dumps(med), file=sys.stderr, flush=True)
    return rows


def table_lines(rows, ours, best, plain, long_lengths) -> list:
    """Markdown tables: short measurements, then long prompts; ratios are ours / theirs."""
    def ratio(a, b):
        return f"{a / b:.2f}x"

    plain_cols = plain is not None
    head = ("| model | prompt tok/s native | llama.cpp | ratio |" + (" plain | ratio |" if plain_cols else "")
            + " gen tok/s native | llama.cpp | ratio |" + (" plain | ratio |" if plain_cols else "")
            + " TTFT s native | llama.cpp | peak RSS MiB native | llama.cpp | ratio |"
            + " gen % of BW limit native | llama.cpp | weights vs LLC |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    llc = last_level_cache_bytes()
    for name, med, per_token, bandwidth in rows:
        n, l = med[ours], med[best]
        p = med[plain] if plain_cols else None
        limit = bandwidth / per_token
        rss_n, rss_l = n["peak_rss"] / 2 ** 20, l["peak_rss"] / 2 ** 20
        cells = [name, f"{n['pp_tok_s']:.1f}", f"{l['pp_tok_s']:.1f}", ratio(n['pp_tok_s'], l['pp_tok_s'])]
        if p:
            cells += [f"{p['pp_tok_s']:.1f}", ratio(n['pp_tok_s'], p['pp_tok_s'])]
        cells += [f"{n['gen_tok_s']:.1f}", f"{l['gen_tok_s']:.1f}", ratio(n['gen_tok_s'], l['gen_tok_s'])]
        if p:
            cells += [f"{p['gen_tok_s']:.1f}", ratio(n['gen_tok_s'], p['gen_tok_s'])]
        cells += [f"{n['ttft_s']:.2f}", f"{l['ttft_s']:.2f}", f"{rss_n:.0f}", f"{rss_l:.0f}", f"{rss_n / rss_l:.2f}",
                  f"{100 * n['gen_tok_s'] / limit:.0f}%", f"{100 * l['gen_tok_s'] / limit:.0f}%",
                  "fits" if per_token <= llc else "does not fit"]
        lines.append("| " + " | ".join(cells) + " |")
    if long_lengths:
        lines += ["", "| model | prompt tokens | native tok/s | llama.cpp | ratio |" + (" plain | ratio |" if plain_cols else ""),
                  "|---|---|---|---|---|" + ("---|---|" if plain_cols else "")]
        for name, med, _, _ in rows:
            for n_tok in long_lengths:
                key = f"pp{n_tok}_tok_s"
                if key not in med[ours]:
                    continue
                a, b = med[ours][key], med[best][key]
                cells = [name, str(n_tok), f"{a:.1f}", f"{b:.1f}", ratio(a, b)]
                if plain_cols:
                    c = med[plain][key]
                    cells += [f"{c:.1f}", ratio(a, c)]
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Read bandwidth and weight bytes per token:", ""]
    for name, _, per_token, bandwidth in rows:
        lines.append(f"- {name}: {per_token / 2 ** 20:.1f} MiB per token, {bandwidth / 1e9:.2f} GB/s "
                     f"-> limit {bandwidth / per_token:.1f} tok/s")
    return lines


def native_report(rows, args, load_before) -> str:
    """edgesdk alone (no llama.cpp on this device): its figures, and generation against the bandwidth limit."""
    lines = [
        "# Native engine on this device",
        "",
        f"Machine: {machine_description()}.",
        "",
        f"Load average (1 min) at start {load_before:.1f}, at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.",
        "",
        f"Threads: {args.threads}; medians of {args.runs} runs, each measurement in its own process. Prompt: "
        f"{PROMPT_TOKENS} tokens; generation: {GEN_TOKENS} greedy tokens; time to first token: load + "
        f"{TTFT_PROMPT_TOKENS}-token prompt. Bandwidth fraction: weight bytes per token x generation tok/s / "
        "read bandwidth measured in the same run.",
        "",
        "| model | prompt tok/s | gen tok/s | TTFT s | peak RSS MiB | gen % of BW limit |",
        "|---|---|---|---|---|---|",
    ]
    for name, med, per_token, bandwidth in rows:
        n = med["native"]
        lines.append(f"| {name} | {n['pp_tok_s']:.1f} | {n['gen_tok_s']:.1f} | {n['ttft_s']:.2f} "
                     f"| {n['peak_rss'] / 2 ** 20:.0f} | {100 * n['gen_tok_s'] * per_token / bandwidth:.0f}% |")
    for name, _, per_token, bandwidth in rows:
        lines.append(f"- {name}: {per_token / 2 ** 20:.1f} MiB per token, {bandwidth / 1e9:.2f} GB/s "
                     f"-> limit {bandwidth / per_token:.1f} tok/s")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=4, metavar=("SPEC", "PATH", "THREADS", "WHAT"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--long-runs", type=int, default=1, help="runs (of --runs) that also time the long prompts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="smollm2,gemma3,llama1b")
    ap.add_argument("--long", default="4096,8192", help="long prompt lengths ('' for none)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--avx2", action="store_true", help="also the x86 mini-PC rows")
    group.add_argument("--avx2-only", action="store_true", help="only the x86 mini-PC rows")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--engines", default="native,llamacpp", choices=["native,llamacpp", "native"],
                    help="native alone where llama.cpp is not installed (a Raspberry Pi with edgesdk's wheel)")
    args = ap.parse_args()
    if args.worker:
        spec, path, threads, what = args.worker
        print(json.dumps(worker(json.loads(spec), path, int(threads), what)))
        return

    long_lengths = [int(x) for x in args.long.split(",") if x]
    if args.engines == "native":
        paths = model_paths(args.models.split(","))
        load_before = os.getloadavg()[0]
        text = native_report(measure(engines(None), ["native"], paths, args, long_lengths), args, load_before)
        Path(args.out).write_text(text)
        print(text)
        return
    avx2_python = avx2_llamacpp_python() if args.avx2 or args.avx2_only else None
    table = engines(avx2_python)
    paths = model_paths(args.models.split(","))
    info = llamacpp_info()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    sections = []
    if not args.avx2_only:
        # When the best configuration is the plain path, the plain column would repeat it.
        names = ["native", "llamacpp"] + (["llamacpp_plain"] if info["extra"] else [])
        rows = measure(table, names, paths, args, long_lengths)
        sections += [f"## This machine: native ({table_isa()}) vs llama.cpp", "",
                     f"llama.cpp: {llamacpp_description(info)}. \"plain\": the same build with use_extra_bufts=False.", ""]
        sections += table_lines(rows, "native", "llamacpp", "llamacpp_plain" if info["extra"] else None, long_lengths)
        sections.append("")
    if avx2_python:
        rows = measure(table, ["native_avx2", "llamacpp_avx2"], paths, args, long_lengths)
        sections += ["## x86 mini-PC: native forced to AVX2 vs llama.cpp built for AVX2 only", "",
                     f"llama.cpp: {llamacpp_description(llamacpp_info(avx2_python))}.", ""]
        sections += table_lines(rows, "native_avx2", "llamacpp_avx2", None, long_lengths)
        sections.append("")

    lines = [
        "# Native engine vs llama.cpp",
        "",
        f"Machine: {machine_description()}.",
        "",
        f"Load average (1 min) at start {load_before:.1f}, at end {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs; the run took {(time.perf_counter() - started) / 60:.0f} min: other processes "
        "running during the benchmark slow every engine, llama.cpp's spinning workers more.",
        "",
        f"Threads: {args.threads} for every engine; medians of {args.runs} runs (long prompts: {args.long_runs}), "
        f"each measurement in its own process. Prompt: {PROMPT_TOKENS} tokens (long prompts in a context of "
        f"their own length); generation: {GEN_TOKENS} greedy tokens; time to first token: load + "
        f"{TTFT_PROMPT_TOKENS}-token prompt. Ratios are native / llama.cpp (higher is better for speed, "
        "lower for RSS). Bandwidth fraction: weight bytes per token x generation tok/s / read "
        "bandwidth measured in the same run. \"weights vs LLC\": whether the bytes a token reads fit the "
        "last-level cache (then generation is not bound by DRAM bandwidth).",
        "",
    ] + sections
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


def table_isa() -> str:
    from edgesdk import _native

    return _native.isa_current()


if __name__ == "__main__":
    main()
