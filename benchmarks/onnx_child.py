"""One engine's timing in a Python of its own (bench_onnx.py starts it): an edgesdk ONNX export on an
onnxruntime build that cannot share edgesdk's venv (onnxruntime-openvino), or onnxruntime-genai
running the same export. Imports only numpy and onnxruntime / onnxruntime_genai.

    python onnx_child.py ort GRAPH PROVIDER OPTIONS_JSON THREADS PROMPT_TOKENS GEN_TOKENS
    python onnx_child.py genai DIR THREADS PROMPT_TOKENS GEN_TOKENS

Prints one JSON line: load_s, prompt_tps, gen_tps, peak_rss (bytes). The ort loop is the one
edgesdk's backend runs on the dynamic graph: the cache of every layer fed back as it came out.
"""
import json
import sys
import time

import numpy as np

PROMPT_FIRST_ID = 300       # ordinary vocabulary ids, the same as bench_onnx.py's in-process engines


def peak_rss() -> int:
    """This process's peak RSS (VmHWM: getrusage's ru_maxrss survives exec and would report the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _ids(n):
    return [PROMPT_FIRST_ID + (i * 7919) % 20000 for i in range(n)]


def run_ort(graph, provider, options_json, threads, n_prompt, n_gen):
    import onnxruntime as ort
    started = time.perf_counter()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.log_severity_level = 3
    sess = ort.InferenceSession(graph, so, providers=[provider], provider_options=[json.loads(options_json)])
    load_s = time.perf_counter() - started
    pasts = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    dtype = np.float16 if "float16" in pasts[0].type else np.float32
    cache = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype) for i in pasts}
    names = [o.name for o in sess.get_outputs()]

    def step(ids):
        nonlocal cache
        feeds = dict(cache, input_ids=np.array([ids], np.int64), logits_from=np.array([len(ids) - 1], np.int64))
        out = dict(zip(names, sess.run(None, feeds)))
        cache = {name: out[name.replace("past_key_values.", "present.")] for name in cache}
        return out["logits"][0, -1]

    t = time.perf_counter()
    logits = step(_ids(n_prompt))
    prompt_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n_gen):
        logits = step([int(np.argmax(logits))])
    gen_s = time.perf_counter() - t
    return load_s, prompt_s, gen_s


def run_genai(directory, threads, n_prompt, n_gen):
    import onnxruntime_genai as og
    started = time.perf_counter()
    model = og.Model(og.Config(directory))
    load_s = time.perf_counter() - started
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=n_prompt + n_gen + 2, do_sample=False)
    gen = og.Generator(model, params)
    t = time.perf_counter()
    gen.append_tokens(_ids(n_prompt))
    prompt_s = time.perf_counter() - t
    # append_tokens leaves the prompt's logits computed, so the first generate_next_token only picks a
    # token and runs nothing. Timed from the second on, each call is one run of the graph on one token,
    # as each step of the other engines' loops is: n_gen runs for every engine.
    gen.generate_next_token()
    t = time.perf_counter()
    for _ in range(n_gen):
        gen.generate_next_token()
    gen_s = time.perf_counter() - t
    return load_s, prompt_s, gen_s


def main(argv):
    if argv[0] == "ort":
        n_prompt, n_gen = int(argv[5]), int(argv[6])
        load_s, prompt_s, gen_s = run_ort(argv[1], argv[2], argv[3], argv[4], n_prompt, n_gen)
    else:
        n_prompt, n_gen = int(argv[3]), int(argv[4])
        load_s, prompt_s, gen_s = run_genai(argv[1], argv[2], n_prompt, n_gen)
    print(json.dumps({"load_s": load_s, "prompt_tps": n_prompt / prompt_s, "gen_tps": n_gen / gen_s,
                      "peak_rss": peak_rss()}))


if __name__ == "__main__":
    main(sys.argv[1:])
