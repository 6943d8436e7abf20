"""edgesdk serve against llama-cpp-python's own server: 1, 2, 4 and 8 concurrent streaming clients.

Both servers run as subprocesses on loopback with the same GGUF file and the
same thread count, and answer the same streamed /v1/completions requests
(greedy, a fixed max_tokens, a different short prompt per client). Each
client sends `--requests` requests one after another. Measured by the
clients:
  aggregate tok/s   completion tokens of all clients / wall time from the first send to the last finish
  TTFT p50 / p99    from sending a request to its first text chunk, over all requests
and the ratio of N clients' aggregate tok/s to one client's, per server.

The clients share the machine with the server under test, so they must cost it as
little as possible: they read the stream with the standard library's http.client,
one thread each. httpx (its pure-Python HTTP parsing) cost 0.75-0.93 ms of CPU per
streamed token here, a third of a core at 8 clients on a 2-core box, and slowed both
servers; http.client costs 0.10-0.21 ms. The table reports what the clients used.

llama_cpp.server needs llama-cpp-python's [server] extra (fastapi, sse-starlette,
...): install it for this benchmark only (pip install 'llama-cpp-python[server]').
It answers one request at a time; it runs with --interrupt_requests False, or a
new request would cancel the running stream (its default), and in llama.cpp's
fastest working CPU configuration (benchmarks/llamacpp_server.py).

Models: SmolLM2-135M-Instruct (Q4_1) and the 1B-class llama with random Q4_0
weights that benchmarks/vs_llamacpp.py writes.

  python benchmarks/bench_server.py [--threads 2] [--clients 1,2,4,8] [--models smollm2,llama1b]
Writes benchmarks/RESULTS_server.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402

from vs_llamacpp import machine_description, model_paths  # noqa: E402

N_CTX = 512              # per sequence (edgesdk) / for the one llama.cpp context
START_TIMEOUT_S = 300
TOPICS = ["the sea", "a red bicycle", "mountains", "a small town", "coffee", "the moon", "winter", "a library",
          "trains", "gardens", "robots", "rain", "music", "bridges", "a market", "clouds"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llamacpp_configuration() -> str:
    """The configuration benchmarks/llamacpp_server.py runs llama.cpp in, in words."""
    import llama_cpp.llama_cpp as llama_cpp_c

    from edgesdk.backends.llamacpp import extra_buffer_types_work

    if extra_buffer_types_work(llama_cpp_c.llama_print_system_info()):
        return "extra buffer types on (runtime weight repacking)"
    return "extra buffer types off: this build has AMX, whose path crashes on this CPU"


def start_server(kind: str, path: Path, threads: int, parallel: int, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if kind == "edgesdk":
        cmd = [sys.executable, "-m", "edgesdk.cli", "serve", str(path), "--port", str(port), "--parallel",
               str(parallel), "--n-ctx", str(N_CTX), "--threads", str(threads), "--quiet",
               "--max-queue", "64", "--max-tokens", "4096"]
    else:
        cmd = [sys.executable, str(HERE / "llamacpp_server.py"), "--model", str(path), "--host", "127.0.0.1",
               "--port", str(port),
               "--n_ctx", str(N_CTX), "--n_threads", str(threads), "--n_threads_batch", str(threads),
               "--interrupt_requests", "False",
               "--verbose", "False"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(base: str, process: subprocess.Popen) -> str:
    """The served model's id, once the server answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            health = httpx.get(base + "/health", timeout=5)       # llama_cpp.server has none: 404
            models = httpx.get(base + "/v1/models", timeout=5)
            if health.status_code in (200, 404) and models.status_code == 200:
                return models.json()["data"][0]["id"]
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not start")


def one_request(base: str, model: str, prompt: str, max_tokens: int) -> Dict[str, float]:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True})
    host, port = base.rsplit("/", 1)[1].rsplit(":", 1)
    sent = time.perf_counter()
    first = None
    chunks = 0
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise SystemExit(f"{base}: HTTP {response.status}: {response.read()[:300]!r}")
        for line in iter(response.readline, b""):
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("text"):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
    finally:
        connection.close()
    done = time.perf_counter()
    return {"ttft_s": (first or done) - sent, "tokens": chunks, "sent": sent, "done": done}


def run_clients(base: str, model: str, n_clients: int, requests: int, max_tokens: int) -> Dict[str, float]:
    results: List[Dict[str, float]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for r in range(requests):
            topic = TOPICS[(k * requests + r) % len(TOPICS)]
            # A story already begun: asked to write one, SmolLM2 (an instruct model) often ends at once.
            prompt = f"Here is a short story about {topic}.\n\nOnce upon a time,"
            out = one_request(base, model, prompt, max_tokens)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    cpu_before = sum(os.times()[:2])
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client_cpu_s = sum(os.times()[:2]) - cpu_before
    wall = max(r["done"] for r in results) - min(r["sent"] for r in results)
    ttfts = sorted(r["ttft_s"] for r in results)
    return {"tok_s": sum(r["tokens"] for r in results) / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p99": ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))],
            "tokens": sum(r["tokens"] for r in results), "requests": len(results),
            "client_cpu_ms_per_token": 1000 * client_cpu_s / max(1, sum(r["tokens"] for r in results))}


def measure(kind: str, path: Path, threads: int, clients: List[int], requests: int, max_tokens: int) -> Dict:
    port = free_port()
    process = start_server(kind, path, threads, max(clients), port)
    base = f"http://127.0.0.1:{port}"
    try:
        model = wait_ready(base, process)
        one_request(base, model, "Warm up.", 4)
        out = {}
        for n in clients:
            out[n] = run_clients(base, model, n, requests, max_tokens)
            print(f"{kind} {path.name} {n} clients: {json.dumps(out[n])}", file=sys.stderr, flush=True)
        return out
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--models", default="smollm2,llama1b")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--max-tokens", default="smollm2=64,llama1b=16")
    ap.add_argument("--out", default=str(HERE / "RESULTS_server.md"))
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    budgets = dict(item.split("=") for item in args.max_tokens.split(","))
    load_before = os.getloadavg()[0]
    rows = []
    for name, path in model_paths(args.models.split(",")).items():
        max_tokens = int(budgets.get(name, 32))
        results = {kind: measure(kind, path, args.threads, clients, args.requests, max_tokens)
                   for kind in ("edgesdk", "llamacpp")}
        rows.append((name, max_tokens, results))

    lines = [
        "# edgesdk serve vs llama-cpp-python's server: concurrent streaming clients",
        "",
        f"Machine: {machine_description()}.",
        "",
        f"Load average (1 min) at start {load_before:.1f}, at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
        "CPUs (other processes share them; both servers are slowed, llama.cpp's spinning threads more).",
        "",
        f"Both servers: {args.threads} threads (llama.cpp: for prompts too), n_ctx {N_CTX} (edgesdk: per sequence, --parallel "
        f"{max(clients)}; llama.cpp: its one context, --interrupt_requests False, {llamacpp_configuration()}). "
        f"Each client streams "
        f"{args.requests} greedy /v1/completions requests one after another, a different prompt each. "
        "Aggregate tok/s: text chunks (one per token) of all clients / wall time; TTFT: send to first text "
        "chunk, over all requests. 'xN/x1': aggregate tok/s against one client's on the same server. "
        "Client CPU: what the benchmark's own client threads used per streamed token (it shares the CPUs with "
        "the server under test).",
        "",
        "| model | max_tokens | clients | edgesdk tok/s | xN/x1 | TTFT p50 s | TTFT p99 s | llama.cpp tok/s | "
        "xN/x1 | TTFT p50 s | TTFT p99 s | edgesdk / llama.cpp tok/s | client CPU ms/token edgesdk | llama.cpp |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, max_tokens, results in rows:
        e, l = results["edgesdk"], results["llamacpp"]
        for n in clients:
            lines.append(
                f"| {name} | {max_tokens} | {n} | {e[n]['tok_s']:.1f} | {e[n]['tok_s'] / e[clients[0]]['tok_s']:.2f} "
                f"| {e[n]['ttft_p50']:.2f} | {e[n]['ttft_p99']:.2f} | {l[n]['tok_s']:.1f} "
                f"| {l[n]['tok_s'] / l[clients[0]]['tok_s']:.2f} | {l[n]['ttft_p50']:.2f} | {l[n]['ttft_p99']:.2f} "
                f"| {e[n]['tok_s'] / l[n]['tok_s']:.2f}x | {e[n]['client_cpu_ms_per_token']:.2f} "
                f"| {l[n]['client_cpu_ms_per_token']:.2f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
