"""The ONNX backend on the real models: fidelity to the float64 truth no worse than llama.cpp's, greedy text equal to
the native engine's up to a near-tie, chat sessions, info(), the memory plan against measured RSS,
and the export on a second provider, onnxruntime-openvino's CPU device, in its own environment
(tools/onnx_envs.sh makes it; its onnxruntime module cannot share this venv).

The backend contract (tests/test_backend_contract.py) runs on this backend through the registry.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgesdk
from edgesdk import loading
from edgesdk.config import LoadConfig
from fidelity import CODE, PROSE, assert_as_faithful_as, fidelity, first_tokens
from test_fidelity import TEACHER_FORCED_TOKENS

# The chat and session tests of tests/test_chat.py, run here on an ONNX-backed model (the `model`
# fixture below replaces that module's).
from test_chat import (  # noqa: F401  (collected by pytest)
    test_chat_returns_an_openai_shaped_completion, test_saved_session_resumes_with_history_and_cache,
    test_session_second_turn_prefills_only_the_new_message, test_streamed_turn_is_recorded_when_the_stream_ends)

N_CTX = 512
THREADS = 1
FIDELITY_TOKENS = 160
GREEDY_TOKENS = 24
FIDELITY_TEXTS = {"prose": PROSE, "code": CODE}
# A greedy flip must be where the native engine's own top two are closer than this (the same
# bound tests/test_engine_parity.py puts on the native engine against llama.cpp).
GREEDY_TIE_MARGIN = 1.0
# OpenVINO's CPU plugin runs the same graph with its own kernels (its MatMulNBits computes
# differently from MLAS): measured mean KL against ORT's CPU provider 0.017 (SmolLM2, top-1 0.94) and
# 0.004 (Gemma-3, top-1 1.0) over 48 tokens.
OPENVINO_KL_MAX = 0.05
OPENVINO_TOP1_MIN = 0.9
TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk. He polished the great "
        "lens, trimmed the wick, and watched the ships pass far out on the grey water. In the winter of "
        "that year a storm came that nobody in the village had seen before, and the light had to burn "
        "all night. def area(radius):\n    return 3.14159 * radius ** 2\n")


def _venv_python(name: str) -> Path:
    home = Path(os.environ.get("EDGESDK_HOME") or Path.home() / ".cache" / "edgesdk")
    return home / "venvs" / name / "bin" / "python"


def _make(path, backend, n_ctx=N_CTX, **options):
    return loading.prepare(path, LoadConfig(backend=backend, n_ctx=n_ctx, threads=THREADS, options=options)).open()


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _kl(p_logits, q_logits):
    lp, lq = _log_softmax(p_logits), _log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = edgesdk.load(str(smollm2_path), backend="onnx", n_ctx=N_CTX, threads=THREADS)
    yield m
    m.close()


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def real(request, smollm2_path, gemma3_path):
    path = smollm2_path if request.param == "smollm2" else gemma3_path
    with edgesdk.load(str(path), backend="native", n_ctx=N_CTX, threads=THREADS) as m:
        ids = m.tokenize(TEXT)[:FIDELITY_TOKENS]
    return request.param, path, ids


@pytest.mark.slow
@pytest.mark.parametrize("text", sorted(FIDELITY_TEXTS))
def test_teacher_forced_fidelity_is_no_worse_than_llama_cpp(real, text):
    # Against the float64 truth of the same file, on the texts and with the bounds the native
    # engine is held to (tests/test_fidelity.py): ONNX on ORT's CPU provider strays no further.
    from llamacpp_ref import llama_logits_from, load_llama
    from truth_forward import TruthRows
    name, path, _ = real
    llm = load_llama(path, n_ctx=TEACHER_FORCED_TOKENS)
    try:
        ids = first_tokens(llm.tokenize, FIDELITY_TEXTS[text], TEACHER_FORCED_TOKENS)
        llama = fidelity(TruthRows(path, ids), llama_logits_from(llm)(ids, 0))
    finally:
        llm.close()
    with _make(path, "onnx", n_ctx=TEACHER_FORCED_TOKENS) as b:
        ours = fidelity(TruthRows(path, ids), b.eval(ids, 0, all_logits=True))
    print(f"{name} {text}: onnx {ours}; llama.cpp {llama}")
    assert_as_faithful_as(ours, llama)


def _greedy(backend, prompt_ids, n):
    out, seen = [], []
    logits = backend.eval(prompt_ids, 0)
    for k in range(n):
        seen.append(logits)
        out.append(int(np.argmax(logits)))
        logits = backend.eval([out[-1]], len(prompt_ids) + k)
    return out, seen


@pytest.mark.slow
def test_greedy_text_equals_the_native_engine_until_a_near_tie(real):
    name, path, ids = real
    prompt = ids[:40]
    with _make(path, "native") as b:
        expected, native_logits = _greedy(b, prompt, GREEDY_TOKENS)
    with _make(path, "onnx") as b:
        got, _ = _greedy(b, prompt, GREEDY_TOKENS)
    same = next((i for i, (a, c) in enumerate(zip(expected, got)) if a != c), GREEDY_TOKENS)
    print(f"{name}: {same} of {GREEDY_TOKENS} greedy tokens equal")
    if same < GREEDY_TOKENS:
        a, c = expected[same], got[same]
        margin = native_logits[same][a] - native_logits[same][c]
        assert margin < GREEDY_TIE_MARGIN, f"token {same} differs ({a} vs {c}) with a native margin of {margin:.3f}"


def test_info_names_the_provider_and_graph(model):
    info = model.backend.info()
    assert info.name == "onnx" and info.device.startswith("CPUExecutionProvider (1 thread, dynamic graph")
    assert model.backend.providers[0] == "CPUExecutionProvider"


MEMORY_CHILD = """
import sys, json
from edgesdk import loading
from edgesdk.config import LoadConfig
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
prepared = loading.prepare(sys.argv[1], LoadConfig(backend="onnx", n_ctx=512, threads=1))
before = rss()
b = prepared.open()
b.eval(list(range(300, 812)), 0)   # a whole n_batch: the largest arena the plan covers
print(json.dumps({"grown": rss() - before, "plan": prepared.plan.weights_owned + prepared.plan.kv_cache
                  + prepared.plan.scratch}))
"""


@pytest.mark.slow
def test_memory_plan_covers_what_a_loaded_model_holds(real):
    # In a fresh process: a session's weights, cache and arena after a 512-token prompt.
    name, path, _ = real
    with _make(path, "onnx"):
        pass                                          # the export exists before the child measures
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path)], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{name}: grew {measured['grown'] >> 20} MiB, planned {measured['plan'] >> 20} MiB")
    assert measured["grown"] <= measured["plan"]
    assert measured["plan"] <= 1.6 * measured["grown"]          # honest, not padded out of all proportion


def _openvino(graph: Path, ids, device: str, tmp_path: Path):
    python = _venv_python("ort-openvino")
    assert python.exists(), f"{python} is missing: tools/onnx_envs.sh (run by tools/test.sh) makes it"
    child = Path(__file__).with_name("onnx_provider_child.py")
    out_path = tmp_path / f"openvino_{device}.npy"
    run = subprocess.run([str(python), str(child), str(graph), "OpenVINOExecutionProvider",
                          json.dumps({"device_type": device}), json.dumps(ids), str(out_path)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return np.load(out_path), json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_openvino_cpu_device_runs_the_export_like_the_cpu_provider(real, tmp_path):
    name, path, ids = real
    ids = ids[:48]
    with _make(path, "onnx") as b:
        split = len(ids) // 2
        cpu = [b.eval(ids[:split], 0, all_logits=True)] + [b.eval([t], split + k)[None]
                                                          for k, t in enumerate(ids[split:])]
        graph = b.export.graph_path
    cpu = np.concatenate(cpu)
    got, report = _openvino(graph, ids, "CPU", tmp_path)
    assert report["providers"][0] == "OpenVINOExecutionProvider"
    kl = _kl(cpu, got)
    top1 = (cpu.argmax(1) == got.argmax(1)).mean()
    print(f"{name}: OpenVINO CPU against ORT CPU: mean KL {kl.mean():.4f}, top-1 {top1:.3f}")
    assert kl.mean() < OPENVINO_KL_MAX and top1 >= OPENVINO_TOP1_MIN


def test_openvino_npu_device_when_there_is_one(smollm2_path, tmp_path):
    python = _venv_python("ort-openvino")
    assert python.exists(), f"{python} is missing: tools/onnx_envs.sh (run by tools/test.sh) makes it"
    probe = subprocess.run([str(python), "-c", "import json, onnxruntime.capi._pybind_state as p; "
                            "print(json.dumps(p.get_available_openvino_device_ids()))"],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    devices = json.loads(probe.stdout.strip().splitlines()[-1])
    if "NPU" not in devices:
        pytest.skip(f"no NPU device here (OpenVINO sees {devices})")
    with _make(smollm2_path, "onnx", n_ctx=256, static=True, providers=[("CPUExecutionProvider", {})]) as b:
        graph = b.export.graph_path
    # The static export, compiled for the NPU by OpenVINO: it must at least run and give finite logits.
    run = subprocess.run([str(python), "-c", "import sys, onnxruntime as o; s = o.InferenceSession(sys.argv[1], "
                          "providers=['OpenVINOExecutionProvider'], provider_options=[{'device_type': 'NPU'}]); "
                          "print(s.get_providers())", str(graph)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
