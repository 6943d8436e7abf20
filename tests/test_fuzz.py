"""Coverage-guided fuzzing of the readers that take bytes from outside, time-boxed, in the suite.

Each target in tests/fuzz/ runs in its own process under atheris (libFuzzer) for FUZZ_SECONDS,
starting from its committed seed corpus (tests/fuzz/corpus/<target>/; new inputs go to a temporary
directory, so the checkout is left as it was). A finding is an exception the target does not allow,
a failed property, an input running past -timeout or memory past -rss_limit_mb: the test fails
with the input's bytes and the traceback. Turn each into a regression test in
tests/test_fuzz_findings.py and add the input to the corpus as finding-<what>.

Without atheris (it has wheels for Linux x86_64 only) the same targets replay the corpus and random
mutations of it for the same time (tests/fuzz/_fuzz.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).parent / "fuzz"
# Per target, so that the five stay under 2 minutes with start-up; a coverage-guided run finds shallow
# bugs in seconds (the tokenizer target's one finding came in its first second).
FUZZ_SECONDS = 15
# libFuzzer's per-input limit: the template sandbox's own deadline is 2 s, everything else takes
# milliseconds; a slow, shared CI machine gets the rest.
PER_INPUT_TIMEOUT_S = 10
# libFuzzer's RSS limit for the whole process: the interpreter with numpy, Jinja and (tokenizer)
# SmolLM2's vocabulary and llama.cpp's take 60-150 MB; a bounded render adds at most ~64 MB.
RSS_LIMIT_MB = 1024
# Time for the interpreter to start, load SmolLM2's vocabulary twice and write the final stats.
STARTUP_ALLOWANCE_S = 60
# Executions that show a target really ran rather than failing at start, far below what each
# reaches in 15 s on two shared cores (tokenizer 2,400-4,900, template 700-4,200, gguf
# 6,000-19,000, session 0.4-1 million).
MIN_RUNS = 100
TARGETS = ["gguf", "tokenizer", "template", "session", "http"]
# `sh -c 'CMD; exit $?'` runs CMD as a forked child (a lone command could be exec'd in place).
FRESH_PEAK_RSS = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]
# Jinja's syntax as a dictionary: byte mutations alone seldom make a template that compiles.
EXTRA_FLAGS = {"template": [f"-dict={FUZZ_DIR / 'template.dict'}"]}


def _run_target(target: str, tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    new_inputs = tmp_path / "new"
    new_inputs.mkdir()
    command = [sys.executable, str(FUZZ_DIR / f"fuzz_{target}.py"), f"-max_total_time={FUZZ_SECONDS}",
               f"-timeout={PER_INPUT_TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}",
               f"-artifact_prefix={tmp_path}{os.sep}", *EXTRA_FLAGS.get(target, []),
               str(new_inputs), str(FUZZ_DIR / "corpus" / target)]
    # Through a shell that forks: a process's peak RSS (what libFuzzer's -rss_limit_mb reads, via
    # getrusage) carries over from the process that forked it, and late in the suite pytest is
    # gigabytes; the shell's own child starts counting from the shell's few MiB.
    return subprocess.run([*FRESH_PEAK_RSS, *command], capture_output=True, text=True, env=env,
                          timeout=FUZZ_SECONDS + PER_INPUT_TIMEOUT_S + STARTUP_ALLOWANCE_S)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_runs_its_time_box_without_a_finding(target, tmp_path, smollm2_path):
    env = dict(os.environ, EDGESDK_FUZZ_GGUF=str(smollm2_path))
    proc = _run_target(target, tmp_path, env)
    output = proc.stdout + proc.stderr
    findings = sorted(p for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    described = "\n".join(f"{p.name}: {p.read_bytes()[:400]!r}" for p in findings)
    assert proc.returncode == 0 and not findings, f"{target} fuzzing found:\n{described}\n\n{output[-6000:]}"
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done and int(done.group(1)) >= MIN_RUNS, output[-3000:]
    print(f"{target}: {done.group(0)}")


def _run_fallback(script: Path, corpus: Path, tmp_path: Path, seconds: float) -> subprocess.CompletedProcess:
    """A fuzz script run as if atheris were not installed."""
    runner = ("import runpy, sys\n"
              "sys.modules['atheris'] = None\n"
              f"sys.path.insert(0, {str(FUZZ_DIR)!r})\n"
              f"sys.argv = [{str(script)!r}, '-max_total_time={seconds}', '-artifact_prefix={tmp_path}{os.sep}',"
              f" {str(tmp_path / 'new')!r}, {str(corpus)!r}]\n"
              f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True,
                          timeout=seconds + STARTUP_ALLOWANCE_S)


# Long enough for the corpus replay and some mutations, short enough not to matter in the suite.
FALLBACK_SECONDS = 2


def test_fallback_engine_replays_the_corpus_and_mutates_it_for_its_time_box(tmp_path):
    proc = _run_fallback(FUZZ_DIR / "fuzz_session.py", FUZZ_DIR / "corpus" / "session", tmp_path, FALLBACK_SECONDS)
    done = re.search(r"Done (\d+) runs in \d+ second\(s\) \(fallback engine", proc.stdout)
    assert proc.returncode == 0 and done, proc.stdout + proc.stderr
    assert int(done.group(1)) > len(list((FUZZ_DIR / "corpus" / "session").iterdir()))


def test_fallback_engine_writes_the_input_that_raised_and_fails(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "seed").write_bytes(b"fine")
    (corpus / "trigger").write_bytes(b"boom")
    script = tmp_path / "fuzz_boom.py"
    script.write_text("import _fuzz\n\n"
                      "def one_input(data):\n"
                      "    if data == b'boom':\n"
                      "        raise IndexError('found it')\n\n"
                      "_fuzz.main(one_input)\n")
    proc = _run_fallback(script, corpus, tmp_path, FALLBACK_SECONDS)
    crashes = list(tmp_path.glob("crash-*"))
    assert proc.returncode != 0 and "IndexError: found it" in proc.stderr
    assert [c.read_bytes() for c in crashes] == [b"boom"]
