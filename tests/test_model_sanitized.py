"""The native engine under AddressSanitizer + UBSan, driven from Python: many threads share one Model.

The C tests (native/tests) run the kernels under the sanitizers; this runs the
engine the way users do — edgesdk.load, threads calling generate and sessions on
one Model, a cancelled stream — with the library built instrumented and the
sanitizer runtime preloaded into a child Python.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgesdk._native import LIBRARY_FILE

ROOT = Path(__file__).resolve().parent.parent
CC = os.environ.get("CC", "cc")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
BUILD_TIMEOUT_S = 600        # every native source at -O1 with instrumentation, on 2 shared cores
RUN_TIMEOUT_S = 900          # the instrumented engine is several times slower than the plain one

CHILD = r'''
import sys, threading
import edgesdk
from edgesdk.chat import ChatSession

model = edgesdk.load(sys.argv[1], backend="native", n_ctx=256, threads=1)
prompts = ["The capital of France is", "Water boils at", "My favourite colour is", "Seven times six equals"]
greedy = dict(temperature=0, repeat_penalty=1.0, max_tokens=6)
expected = {}
for p in prompts:
    model.reset()
    expected[p] = model.generate(p, **greedy)
errors = []

def worker(i):
    try:
        for k in range(3):
            p = prompts[(i + k) % len(prompts)]
            text = "".join(model.generate(p, stream=True, **greedy)) if k % 2 else model.generate(p, **greedy)
            assert text == expected[p], (p, text)
        session = ChatSession(model, system=f"Assistant {i}.", **greedy)
        session.send("What is 2 plus 2?")
        cancel = threading.Event()
        for _ in model.generate("Once upon a time, in a land far away, there lived a dragon who", stream=True,
                                cancel=cancel, max_tokens=50):
            cancel.set()
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
model.close()
print("ERRORS" if errors else "OK", errors)
'''

# Several sequences: steps that mix prompt chunks and decodes across passes of n_batch rows,
# prefix copies and per-sequence state, each checked against sequence 0 evaluated alone.
SEQS_CHILD = r'''
import sys
import numpy as np
from edgesdk.backends.base import SeqInput
from edgesdk.backends.native import NativeBackend

be = NativeBackend(sys.argv[1], n_ctx=48, threads=2, n_batch=8, n_seq=4)
rng = np.random.default_rng(0)
prompts = [[int(t) for t in rng.integers(300, 49152, n)] for n in (11, 3, 17, 6)]
first = be.eval_batch([SeqInput(s, p, 0) for s, p in enumerate(prompts)])
step = be.eval_batch([SeqInput(3, [5], 6), SeqInput(1, [9], 3), SeqInput(2, prompts[0][:4], 0)])
be.copy_seq(2, 0, 4)
copied = be.eval_batch([SeqInput(0, prompts[0][4:], 4)])[0]
blob = be.save_state(seq=3)
be.load_state(blob, 7, seq=2)
restored = be.eval_batch([SeqInput(2, [1, 2], 7)])[0]
bad = []
def same(got, ids, what):
    want = be.eval(ids, 0)
    if not np.allclose(got, want, rtol=0, atol=1e-4):  # tests/test_native_seqs.py BATCH_VS_ALONE_ATOL
        bad.append((what, float(np.abs(got - want).max())))
for s, p in enumerate(prompts):
    same(first[s], p, f"prompt {s}")
same(step[0], prompts[3] + [5], "decode 3")
same(step[1], prompts[1] + [9], "decode 1")
same(step[2], prompts[0][:4], "chunk 2")
same(copied, prompts[0], "copied prefix")
same(restored, prompts[3] + [5, 1, 2], "restored state")
be.eval_batch([SeqInput(s, [7] * 48, 0) for s in range(4)])  # every sequence's last position
be.close()
print("ERRORS" if bad else "OK", bad)
'''


def _sanitizer_runtime() -> str:
    path = subprocess.run([CC, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    assert os.path.isabs(path) and os.path.exists(path), f"{CC} has no AddressSanitizer runtime ({path!r})"
    return path


@pytest.fixture(scope="module")
def instrumented_site(tmp_path_factory) -> Path:
    """A copy of edgesdk/ whose native library is built with the sanitizers (built once for this file)."""
    site = tmp_path_factory.mktemp("sanitized") / "site"
    shutil.copytree(ROOT / "edgesdk", site / "edgesdk",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(ROOT / "models", site / "edgesdk" / "models", ignore=shutil.ignore_patterns("__pycache__"))
    sources = sorted(str(p) for p in (ROOT / "native" / "src").glob("*.c"))
    target = site / "edgesdk" / LIBRARY_FILE
    cmd = [CC, "-std=c11", "-O1", "-g", "-shared", "-fPIC", "-pthread", *SANITIZE, "-DEK_BUILDING=1",
           f"-I{ROOT / 'native' / 'include'}", *sources, "-o", str(target), "-lm"]
    subprocess.run(cmd, check=True, timeout=BUILD_TIMEOUT_S, capture_output=True)
    return site


def _run_clean(site: Path, child: str, smollm2_path, tmp_path) -> None:
    """Run child(smollm2_path) on the instrumented package; no sanitizer report, exit 0, "OK"."""
    env = dict(os.environ, PYTHONPATH=str(site), LD_PRELOAD=_sanitizer_runtime(),
               # Python's own allocations are never freed at exit: leak reports would be noise.
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=97",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")
    script = tmp_path / "child.py"
    script.write_text(child)
    # cwd: not the checkout, whose edgesdk/ would come first on sys.path
    probe = ("import edgesdk._native, edgesdk; print(edgesdk.__file__); "
             "print('libasan' in open('/proc/self/maps').read())")
    check = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    assert check.stdout.split() == [str(site / "edgesdk" / "__init__.py"), "True"], check.stderr[-2000:]
    out = subprocess.run([sys.executable, str(script), str(smollm2_path)], env=env, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    report = out.stderr[-4000:]
    assert "AddressSanitizer" not in out.stderr and "runtime error" not in out.stderr, report
    assert out.returncode == 0 and out.stdout.startswith("OK"), (out.stdout[-2000:], report)


@pytest.mark.slow
def test_threads_sharing_one_model_run_clean_under_address_and_undefined_behaviour_sanitizers(
        instrumented_site, smollm2_path, tmp_path):
    _run_clean(instrumented_site, CHILD, smollm2_path, tmp_path)


@pytest.mark.slow
def test_several_sequences_run_clean_under_address_and_undefined_behaviour_sanitizers(
        instrumented_site, smollm2_path, tmp_path):
    _run_clean(instrumented_site, SEQS_CHILD, smollm2_path, tmp_path)
