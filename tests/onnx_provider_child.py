"""Run an edgesdk ONNX export on one execution provider in a separate Python (an onnxruntime build
that cannot share the test venv, such as onnxruntime-openvino) and save its logits.

    python onnx_provider_child.py GRAPH PROVIDER OPTIONS_JSON IDS_JSON OUT.npy

The dynamic graph is fed the ids in two runs (a prompt, then the rest one token at a time),
growing the cache it returns; OUT.npy holds the logits of every id, and stdout one JSON line
with the providers the session has. Only numpy and onnxruntime are imported.
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main(graph, provider, options_json, ids_json, out_path):
    ids = json.loads(ids_json)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(graph, so, providers=[provider], provider_options=[json.loads(options_json)])
    pasts = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
    dtype = np.float16 if "float16" in pasts[0].type else np.float32
    cache = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype) for i in pasts}
    names = [o.name for o in sess.get_outputs()]
    rows = []
    split = len(ids) // 2
    for piece in [ids[:split]] + [[t] for t in ids[split:]]:
        feeds = dict(cache, input_ids=np.array([piece], np.int64))
        out = dict(zip(names, sess.run(None, feeds)))
        rows.append(out["logits"][0])
        cache = {name: out[name.replace("past_key_values.", "present.")] for name in cache}
    np.save(out_path, np.concatenate(rows).astype(np.float32))
    print(json.dumps({"providers": sess.get_providers()}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
