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


def _sanitizer_runtime() -> str:
    path = subprocess.run([CC, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    assert os.path.isabs(path) and os.path.exists(path), f"{CC} has no AddressSanitizer runtime ({path!r})"
    return path


def _instrumented_package(tmp_path: Path) -> Path:
    """A copy of edgesdk/ whose native library is built with the sanitizers."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "edgesdk", site / "edgesdk",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(ROOT / "models", site / "edgesdk" / "models", ignore=shutil.ignore_patterns("__pycache__"))
    sources = sorted(str(p) for p in (ROOT / "native" / "src").glob("*.c"))
    target = site / "edgesdk" / LIBRARY_FILE
    cmd = [CC, "-std=c11", "-O1", "-g", "-shared", "-fPIC", "-pthread", *SANITIZE, "-DEK_BUILDING=1",
           f"-I{ROOT / 'native' / 'include'}", *sources, "-o", str(target), "-lm"]
    subprocess.run(cmd, check=True, timeout=BUILD_TIMEOUT_S, capture_output=True)
    return site


@pytest.mark.slow
def test_threads_sharing_one_model_run_clean_under_address_and_undefined_behaviour_sanitizers(
        smollm2_path, tmp_path):
    site = _instrumented_package(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(site), LD_PRELOAD=_sanitizer_runtime(),
               # Python's own allocations are never freed at exit: leak reports would be noise.
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=97",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
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
