"""Seconds per billion weights to quantize a float GGUF, edgesdk.quantize against llama.cpp's
quantizer (llama_model_quantize through llama-cpp-python), same threads, same file, same run.

    python benchmarks/bench_quantize.py [--threads 2] [--repeat 3] [--types q4_0,q4_k_m,...]

The source is a random-weight F16 llama model of about 110 M weights written with the gguf
package (cached under $EDGESDK_HOME/bench). Each type uses llama.cpp's "pure" mode and ours
with the same per-tensor type, so both quantize exactly the same tensors to the same type
(every matrix; the output head too). The two are timed alternately; medians are printed with
the ratio ours / llama.cpp (below 1: we are faster).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from edgesdk import gguf, quantize  # noqa: E402
from edgesdk.registry import home  # noqa: E402

TYPES = ("q4_0", "q4_1", "q5_0", "q8_0", "q4_k_m", "q6_k")
SHAPE = dict(n_vocab=8192, n_embd=1024, n_layer=6, n_head=16, n_head_kv=4, head_dim=64, n_ff=4096)


def source_model() -> str:
    import gguf as gguf_pkg

    path = os.path.join(home(), "bench", "quantize-src-f16.gguf")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s, rng = SHAPE, np.random.default_rng(0)
    tmp = path + ".partial"
    w = gguf_pkg.GGUFWriter(tmp, "llama")
    for key, value in (("embedding_length", s["n_embd"]), ("block_count", s["n_layer"]),
                       ("feed_forward_length", s["n_ff"]), ("attention.head_count", s["n_head"]),
                       ("attention.head_count_kv", s["n_head_kv"]), ("context_length", 2048)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "<0x0A>"] + [f"t{i}" for i in range(4, s["n_vocab"])])
    w.add_token_scores([0.0] * s["n_vocab"])
    w.add_token_types([2, 3, 3, 6] + [1] * (s["n_vocab"] - 4))

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(np.float16)
    E, q, kv = s["n_embd"], s["n_head"] * s["head_dim"], s["n_head_kv"] * s["head_dim"]
    w.add_tensor("token_embd.weight", mat(s["n_vocab"], E))
    w.add_tensor("output_norm.weight", np.ones(E, dtype=np.float32))
    w.add_tensor("output.weight", mat(s["n_vocab"], E))
    for il in range(s["n_layer"]):
        p = f"blk.{il}."
        for name, shape in (("attn_q", (q, E)), ("attn_k", (kv, E)), ("attn_v", (kv, E)), ("attn_output", (E, q)),
                            ("ffn_gate", (s["n_ff"], E)), ("ffn_up", (s["n_ff"], E)), ("ffn_down", (E, s["n_ff"]))):
            w.add_tensor(p + name + ".weight", mat(*shape))
        w.add_tensor(p + "attn_norm.weight", np.ones(E, dtype=np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(E, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def llama_cpp_quantize(src: str, dst: str, mix: str, threads: int) -> None:
    import llama_cpp.llama_cpp as low

    params = low.llama_model_quantize_default_params()
    params.ftype = quantize.MIXES[mix].file_type
    params.nthread = threads
    params.pure = True
    if low.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize({mix}) failed")


def ours_quantize(src: str, dst: str, mix: str, threads: int) -> None:
    base = quantize.MIXES[mix].base
    options = quantize.QuantizeOptions(mix=mix, tensor_types=[(r".", base)], threads=threads)
    quantize.quantize_file(src, dst, options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--types", default=",".join(TYPES))
    args = parser.parse_args()
    src = source_model()
    with gguf.open(src) as f:
        n_weights = sum(t.n_elements for t in f.tensors.values() if len(t.shape) == 2)
    print(f"source: {src} ({n_weights / 1e6:.0f} M weights in matrices, F16), {args.threads} threads, "
          f"median of {args.repeat}")
    print(f"{'type':8} {'llama.cpp s/1e9':>16} {'edgesdk s/1e9':>14} {'ours/llama.cpp':>15}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.gguf")
        for mix in args.types.split(","):
            theirs, ours = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                llama_cpp_quantize(src, out, mix, args.threads)
                theirs.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ours_quantize(src, out, mix, args.threads)
                ours.append(time.perf_counter() - t0)
            a, b = statistics.median(theirs) / n_weights * 1e9, statistics.median(ours) / n_weights * 1e9
            print(f"{mix:8} {a:16.1f} {b:14.1f} {b / a:15.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
