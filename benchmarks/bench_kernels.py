"""Kernel benchmarks: GEMV bandwidth against the machine's measured read
bandwidth, GEMM GOP/s against llama.cpp's prompt processing on the same
matrices, and what the load-time repack gains.

    python benchmarks/bench_kernels.py [--threads 2] [--quick] [--no-llama]

GEMV reads weights from memory, not cache: each shape is replicated into a
working set of --cold-mib MiB (default 1024, above the 480 MiB L3 this VM
reports) and the GEMVs walk through the copies, so every call streams its
weights from DRAM. Bandwidth is measured in the same run with the same pool
(ek_measure_read_bandwidth over 1 GiB, median of 5), and again alternately with
each GEMV row, which the row's percentage uses.

GEMM runs on one cache-resident matrix (prompt processing is compute bound).
llama.cpp: a one-layer llama model with the same matrices (n_embd 2048, ff
5632, 16 heads, 16 KV heads, vocab 64) is written with gguf.GGUFWriter in the
weight type, and llama-cpp-python's eval() of a batch of m tokens is timed
with the same thread count (loaded without llama.cpp's extra buffer types:
their AMX path crashes on this CPU; see tests/llamacpp_ref.py). Its per-token matmuls are q, k, v, o (2048x2048),
gate and up (5632x2048), down (2048x5632); our time is the sum of ek_matmul on
those seven. llama.cpp's time also covers norms, RoPE, attention and the tiny
output layer (a few % at these sizes), which flatters our ratio slightly.
Timings on a shared machine are noisy: medians, ratios from the same run; the
load average is printed. llama.cpp's OpenMP spin is capped near our pool's
(GOMP_SPINCOUNT=20000 unless set), so oversubscription costs both alike; with
--threads 1 neither has barriers to lose time at.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time

import numpy as np

# llama.cpp's OpenMP threads spin ~300000 iterations at each barrier before sleeping; on a
# shared, oversubscribed machine that turns every barrier into a lost time slice. Give them
# about the same ~50 us spin as our pool (set before llama_cpp loads libgomp).
os.environ.setdefault("GOMP_SPINCOUNT", "20000")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from edgesdk import _native, kernels  # noqa: E402
from kernel_reference import random_blocks  # noqa: E402  (valid random blocks of any type)

GEMV_SHAPES = [(2048, 2048), (5632, 2048), (2048, 5632)]  # (n_rows, n_cols)
GEMV_TYPES = ["Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q6_K", "Q5_0"]
GEMM_TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_0", "Q6_K"]
REPACKED_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q5_0", "Q4_K", "Q6_K")  # x86 repacks these at load
GEMM_M = [64, 128, 256, 512]
N_EMBD, N_FF, N_HEAD, N_VOCAB = 2048, 5632, 16, 64
LAYER_MATRICES = [(N_EMBD, N_EMBD)] * 4 + [(N_FF, N_EMBD)] * 2 + [(N_EMBD, N_FF)]
LAYER_NAMES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def raw_matmul(weight: kernels.Weight, x: np.ndarray, y: np.ndarray, pool: kernels.Pool):
    """ek_matmul without Python-side validation (done once by the caller): times the kernel.
    The closure holds weight, x and y, so the raw pointers stay valid as long as it lives."""
    args = (weight.handle, x.ctypes.data, 1 if x.ndim == 1 else x.shape[0], y.ctypes.data, pool.handle)
    fn = _native.lib.ek_matmul

    def call(_keep_alive=(weight, x, y)):
        return fn(*args)
    return call


def bench_gemv(pool: kernels.Pool, cold_bytes: int, rng, types, shapes) -> None:
    """GB/s of weight bytes per GEMV, against read bandwidth measured alternately with it:
    on a shared machine the available bandwidth drifts, so each row pairs its own measurements."""
    print(f"\nGEMV (m=1), weights streamed from DRAM ({cold_bytes >> 20} MiB working set), "
          f"{pool.threads} threads, ISA {_native.isa_current()}; BW = read bandwidth measured alternately")
    print(f"{'type':6s} {'shape':>11s} {'layout':8s} {'us':>8s} {'GB/s':>7s} {'BW GB/s':>8s} {'% of BW':>8s}")
    for type_name in types:
        for n_rows, n_cols in shapes:
            raw = random_blocks(type_name, n_rows * n_cols, rng)
            n_copies = max(2, cold_bytes // raw.nbytes)
            working_set = np.tile(raw, n_copies)  # one contiguous buffer, copy c at c * nbytes
            x = rng.normal(size=n_cols).astype(np.float32)
            y = np.empty(n_rows, dtype=np.float32)
            layouts = [False, True] if type_name in REPACKED_TYPES else [False]
            for repack in layouts:
                weights = [kernels.Weight(type_name, n_rows, n_cols, working_set[c * raw.nbytes:(c + 1) * raw.nbytes],
                                          repack=repack) for c in range(n_copies)]
                calls = [raw_matmul(w, x, y, pool) for w in weights]

                def one_pass():
                    for call in calls:
                        call()
                one_pass()  # warm-up: page faults, pool wake-up
                pass_seconds, bandwidths = [], []
                for _ in range(3):
                    bandwidths.append(kernels.measure_read_bandwidth(cold_bytes, 1, pool))
                    pass_seconds.append(median_time(one_pass, 1))
                seconds = float(np.median(pass_seconds)) / n_copies
                bandwidth = float(np.median(bandwidths))
                gbps = raw.nbytes / seconds / 1e9
                print(f"{type_name:6s} {n_rows:>5d}x{n_cols:<5d} {'repacked' if repack else 'plain':8s} "
                      f"{seconds * 1e6:8.1f} {gbps:7.2f} {bandwidth / 1e9:8.2f} {100 * gbps * 1e9 / bandwidth:7.1f}%")
                del weights, calls
            del working_set


def bench_gemm(pool: kernels.Pool, rng, types, m_values) -> None:
    """GOP/s per (type, m, layout) per shape, and our seconds for one llama layer's seven matmuls."""
    print(f"\nGEMM (prompt processing), cache-resident weights, {pool.threads} threads, ISA {_native.isa_current()}")
    print(f"{'type':6s} {'m':>4s} {'layout':8s} " + " ".join(f"{r}x{c:<5d}".rjust(11) for r, c in GEMV_SHAPES)
          + "  (GOP/s)   layer ms")
    for type_name in types:
        mats = {shape: random_blocks(type_name, shape[0] * shape[1], rng) for shape in GEMV_SHAPES}
        for m in m_values:
            for repack in ([False, True] if type_name in REPACKED_TYPES else [False]):
                seconds = {}
                for (n_rows, n_cols), raw in mats.items():
                    weight = kernels.Weight(type_name, n_rows, n_cols, raw, repack=repack)
                    x = rng.normal(size=(m, n_cols)).astype(np.float32)
                    y = np.empty((m, n_rows), dtype=np.float32)
                    call = raw_matmul(weight, x, y, pool)
                    call()
                    seconds[(n_rows, n_cols)] = median_time(call, 3)
                gops = [2 * m * r * c / seconds[(r, c)] / 1e9 for r, c in GEMV_SHAPES]
                layer = sum(seconds[shape] for shape in LAYER_MATRICES)
                print(f"{type_name:6s} {m:4d} {'repacked' if repack else 'plain':8s} "
                      + " ".join(f"{g:11.1f}" for g in gops) + f"  {layer * 1e3:9.2f}")


def write_llama_layer_gguf(path: str, type_name: str, matrices: list, rng) -> None:
    """A one-layer llama model whose matmuls are `matrices` (raw bytes, LAYER_MATRICES shapes)."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(1024)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(1)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"<t{i}>" for i in range(N_VOCAB)])
    writer.add_token_scores([0.0] * N_VOCAB)
    writer.add_token_types([1] * N_VOCAB)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    qtype = getattr(gguf.GGMLQuantizationType, type_name)
    writer.add_tensor("token_embd.weight", rng.normal(size=(N_VOCAB, N_EMBD)).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    for name, (n_rows, _), raw in zip(LAYER_NAMES, LAYER_MATRICES, matrices):
        writer.add_tensor(f"blk.0.{name}.weight", raw.reshape(n_rows, -1), raw_dtype=qtype)  # (rows, row bytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def compare_with_llama_cpp(pool: kernels.Pool, type_name: str, m_values, rng) -> None:
    """llama.cpp's eval of m tokens through the one-layer model against our seven matmuls on the
    same weight bytes, timed alternately (3 rounds, medians) so load changes hit both alike."""
    from llamacpp_ref import load_llama  # extra buffer types off: their AMX path crashes on this CPU

    matrices = [random_blocks(type_name, r * c, rng) for r, c in LAYER_MATRICES]
    layer_ops = sum(2 * r * c for r, c in LAYER_MATRICES)
    layouts = [False, True] if type_name in REPACKED_TYPES else [False]
    weights = {repack: [kernels.Weight(type_name, r, c, raw, repack=repack)
                        for (r, c), raw in zip(LAYER_MATRICES, matrices)] for repack in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"layer-{type_name}.gguf")
        write_llama_layer_gguf(path, type_name, matrices, rng)
        llm = load_llama(path, n_ctx=1024, logits_all=False, n_threads=pool.threads, n_batch=512, n_ubatch=512)
        tokens = [int(t) for t in rng.integers(3, N_VOCAB, size=max(m_values))]
        for m in m_values:
            def llama_eval():
                llm.reset()
                llm.eval(tokens[:m])
            calls = {}
            for repack, layer in weights.items():
                xs = [rng.normal(size=(m, w.n_cols)).astype(np.float32) for w in layer]
                ys = [np.empty((m, w.n_rows), dtype=np.float32) for w in layer]
                matmuls = [raw_matmul(w, x, y, pool) for w, x, y in zip(layer, xs, ys)]
                calls[repack] = lambda matmuls=matmuls: [call() for call in matmuls]
            llama_eval()
            for call in calls.values():
                call()
            theirs, ours = [], {repack: [] for repack in calls}
            for _ in range(3):
                theirs.append(median_time(llama_eval, 1))
                for repack, call in calls.items():
                    ours[repack].append(median_time(call, 1))
            t_llama = float(np.median(theirs))
            for repack in calls:
                t_ours = float(np.median(ours[repack]))
                print(f"{type_name:6s} {m:4d} {t_llama * 1e3:12.2f} {m * layer_ops / t_llama / 1e9:7.1f} "
                      f"{t_ours * 1e3:8.2f} {m * layer_ops / t_ours / 1e9:7.1f} {t_llama / t_ours:6.2f}  "
                      f"{'repacked' if repack else 'plain'}")
        del llm


ATTN_CASES = [(64, 512), (64, 4096), (256, 4096)]  # (head_dim, keys): SmolLM2/1B-like and Gemma-3-like heads
ATTN_QUERIES = 32                                   # the engine's tile: model.c's ATTN_TILE_QUERIES


def bench_attention(rng, repeats: int = 15) -> None:
    """One tile of ATTN_QUERIES causal queries (the last positions of a prompt) over an F16 cache,
    one thread: GFLOP/s (4 x head_dim flops per query-key pair) of each ISA's ek_attention."""
    lib, f16 = _native.lib, kernels.type_id("F16")
    fp = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    before = _native.isa_current()
    isas = sorted(_native.isa_available(), key=lambda i: i != "scalar")  # scalar first: the ratios
    print(f"\nattention tile, {ATTN_QUERIES} queries, F16 KV, one thread: GFLOP/s (ratio to scalar)")
    print(f"{'head_dim':>8s} {'keys':>6s} " + " ".join(f"{i:>14s}" for i in isas))
    for head_dim, n_keys in ATTN_CASES:
        row_bytes = lib.ek_kv_row_bytes(f16, head_dim)
        # an F16 KV row is plain IEEE halves (ops.c): numpy writes the cache
        caches = [rng.standard_normal((n_keys, head_dim)).astype(np.float16).view(np.uint8) for _ in range(2)]
        q = rng.standard_normal((ATTN_QUERIES, head_dim)).astype(np.float32)
        out = np.empty_like(q)
        q_ptrs = (ctypes.c_void_p * ATTN_QUERIES)(*[q[i].ctypes.data for i in range(ATTN_QUERIES)])
        out_ptrs = (ctypes.c_void_p * ATTN_QUERIES)(*[out[i].ctypes.data for i in range(ATTN_QUERIES)])
        lo = np.zeros(ATTN_QUERIES, dtype=np.int64)
        hi = np.arange(n_keys - ATTN_QUERIES + 1, n_keys + 1, dtype=np.int64)
        scratch = np.empty(lib.ek_attention_scratch_floats(ATTN_QUERIES, head_dim), dtype=np.float32)
        flops = 4.0 * head_dim * float(np.sum(hi - lo))
        cells, scalar_rate = [], None
        for isa in isas:
            _native.isa_set(isa)
            seconds = median_time(lambda: lib.ek_attention(
                q_ptrs, out_ptrs, lo.ctypes.data, hi.ctypes.data, ATTN_QUERIES, caches[0].ctypes.data,
                caches[1].ctypes.data, f16, row_bytes, head_dim, 1.0 / np.sqrt(head_dim), fp(scratch)), repeats)
            rate = flops / seconds / 1e9
            scalar_rate = rate if isa == "scalar" else scalar_rate
            cells.append(f"{rate:6.1f} ({rate / scalar_rate:4.1f}x)" if scalar_rate else f"{rate:6.1f}")
        _native.isa_set(before)
        print(f"{head_dim:8d} {n_keys:6d} " + " ".join(f"{c:>14s}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cold-mib", type=int, default=1024)
    parser.add_argument("--isa", default=None, help="kernel family (default: best available)")
    parser.add_argument("--quick", action="store_true", help="fewer types and sizes")
    parser.add_argument("--no-llama", action="store_true", help="skip the llama.cpp comparison")
    parser.add_argument("--no-gemm", action="store_true", help="GEMV only (and no llama.cpp comparison)")
    parser.add_argument("--types", default=None, help="comma-separated weight types (default: all)")
    parser.add_argument("--attention", action="store_true", help="the attention tile only")
    args = parser.parse_args()
    if args.isa:
        _native.isa_set(args.isa)
    rng = np.random.default_rng(7)
    if args.attention:
        bench_attention(rng)
        return
    gemv_types = GEMV_TYPES[:4]
    gemm_types = GEMM_TYPES[:2] if args.quick else GEMM_TYPES
    m_values = [64, 512] if args.quick else GEMM_M
    if args.types:
        chosen = args.types.split(",")
        gemv_types = [t for t in GEMV_TYPES if t in chosen]
        gemm_types = [t for t in GEMM_TYPES if t in chosen]
    with kernels.Pool(args.threads) as pool:
        bandwidth = kernels.measure_read_bandwidth(1 << 30, 5, pool)
        print(f"read bandwidth, {pool.threads} threads, 1 GiB buffer: {bandwidth / 1e9:.2f} GB/s "
              f"(ISA {_native.isa_current()}); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        bench_gemv(pool, args.cold_mib << 20, rng, gemv_types if args.quick or args.types else GEMV_TYPES,
                   GEMV_SHAPES)
        if args.no_gemm:
            return
        bench_gemm(pool, rng, gemm_types, m_values)
        print(f"load average now {os.getloadavg()[0]:.1f}")
        if args.no_llama:
            return
        print(f"\nGEMM vs llama.cpp prompt processing (one llama layer: 4x 2048x2048, 2x 5632x2048, "
              f"1x 2048x5632), {pool.threads} threads, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}")
        print(f"{'type':6s} {'m':>4s} {'llama.cpp ms':>12s} {'GOP/s':>7s} {'ours ms':>8s} {'GOP/s':>7s} "
              f"{'ratio':>6s}  layout")
        for type_name in gemm_types:
            compare_with_llama_cpp(pool, type_name, m_values, rng)
        print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
