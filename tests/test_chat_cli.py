"""`edgesdk chat` and `edgesdk run` driven as a person would: in a pseudo-terminal, with pexpect."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from edgesdk import backends

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 90      # model load + a short answer on a busy 2-core machine
COMMON = ["--backend", "llamacpp", "--threads", "1", "--n-ctx", "1024", "--temperature", "0"]


def _env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TERM"] = "dumb"
    # The model cache stays where it is; readline history goes to the test's directory.
    env.setdefault("EDGESDK_HOME", str(Path.home() / ".cache" / "edgesdk"))
    env["EDGESDK_CHAT_HISTORY"] = str(tmp_path / "chat_history")
    return env


def _spawn(args, tmp_path, preexec_fn=None, n_ctx="1024"):
    child = pexpect.spawn(sys.executable, ["-m", "edgesdk.cli", "chat", *args], cwd=str(tmp_path),
                          env=_env(tmp_path), encoding="utf-8", timeout=TIMEOUT_S, dimensions=(40, 200),
                          preexec_fn=preexec_fn)
    child.expect(r"context (\d+) tokens")
    assert child.match.group(1) == n_ctx
    child.expect("> ")
    return child


@pytest.mark.slow
def test_chat_answers_streams_stats_interrupts_saves_and_reloads(smollm2_path, tmp_path):
    child = _spawn([*COMMON, "--max-tokens", "400"], tmp_path)   # default model from the registry
    child.sendline("What is 2 plus 2?")
    child.expect(r"\[(\d+) tokens, ([\d.]+) tokens/s")
    assert "4" in child.before
    child.expect("> ")

    # A long answer, interrupted with Ctrl-C: the answer stops, the program does not.
    child.sendline("Write a very long essay about the history of the Roman Empire.")
    child.expect_exact("Roman Empire.\r\n")     # the echo of what was typed
    child.expect(r"\w+ \w+ \w+ \w+")          # then some words of the answer have streamed
    child.sendintr()
    # The interrupt must take effect: the answer is cut short of --max-tokens, however fast or
    # slow the machine (the cancel is seen before the next token, not after the answer).
    child.expect(r"\[stopped\]\r?\n\[(\d+) tokens")
    assert int(child.match.group(1)) < 400
    child.expect("> ")

    child.sendline("/save conversation.session")
    child.expect(r"\[saved 4 messages")
    child.expect("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "conversation.session").is_file()

    # A new process resumes the conversation; Ctrl-D leaves.
    child = _spawn([str(smollm2_path), *COMMON, "--max-tokens", "40"], tmp_path)
    child.sendline("/load conversation.session")
    child.expect(r"\[loaded 4 messages")
    child.expect("> ")
    child.sendline("/load missing.session")
    child.expect("error: cannot read session file")
    child.expect("> ")
    child.sendline("/help")
    child.expect("/system TEXT")
    child.expect("> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def _ignore_sigint():
    # What a script's background job (`cmd &`) and some service managers hand their children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize("backend", backends.available())
@pytest.mark.parametrize("inherited", [None, _ignore_sigint], ids=["sigint-default", "sigint-ignored"])
def test_ctrl_c_stops_an_answer_on_every_backend(smollm2_path, tmp_path, backend, inherited):
    args = [str(smollm2_path), "--backend", backend, "--threads", "1", "--n-ctx", "512", "--temperature", "0",
            "--max-tokens", "400"]
    child = _spawn(args, tmp_path, preexec_fn=inherited, n_ctx="512")
    child.sendline("Write a very long essay about the history of the Roman Empire.")
    child.expect_exact("Roman Empire.\r\n")
    child.expect(r"\w+ \w+ \w+")
    child.sendintr()
    child.expect(r"\[stopped\]\r?\n\[(\d+) tokens")
    assert int(child.match.group(1)) < 400
    child.expect("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)


@pytest.mark.slow
def test_chat_system_and_reset_commands(smollm2_path, tmp_path):
    child = _spawn([str(smollm2_path), *COMMON, "--max-tokens", "30"], tmp_path)
    child.sendline("/system You are a pirate.")
    child.expect(r"system prompt set")
    child.expect("> ")
    child.sendline("/system")
    child.expect("You are a pirate.")
    child.expect("> ")
    child.sendline("/reset")
    child.expect("conversation cleared")
    child.expect("> ")
    child.sendline("/nonsense")
    child.expect("unknown command")
    child.expect("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)


@pytest.mark.slow
def test_run_prints_one_answer_and_json(smollm2_path, tmp_path):
    cmd = [sys.executable, "-m", "edgesdk.cli", "run", str(smollm2_path), "Name three primary colors.", *COMMON,
           "--max-tokens", "48"]
    out = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    assert "red" in out.stdout.lower()
    out = subprocess.run(cmd + ["--json"], env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S,
                         check=True)
    reply = json.loads(out.stdout)
    assert reply["object"] == "chat.completion"
    assert "blue" in reply["choices"][0]["message"]["content"].lower()


def test_run_with_unknown_model_fails_cleanly(tmp_path):
    cmd = [sys.executable, "-m", "edgesdk.cli", "run", str(tmp_path / "nope.gguf"), "hi", "--backend", "llamacpp"]
    out = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 2 and "edgesdk: error:" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.models
def test_chat_banner_is_three_short_lines(smollm2_path, tmp_path):
    import re

    out = subprocess.run([sys.executable, "-m", "edgesdk.cli", "chat", "smollm2-135m-instruct", "--backend",
                          "llamacpp", "--threads", "1", "--n-ctx", "512"], input="", env=_env(tmp_path),
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    banner = out.stdout.split("> ")[0].splitlines()
    assert len(banner) == 3 and all(len(line) <= 100 for line in banner), banner
    assert banner[0] == f"smollm2-135m-instruct (SmolLM2-135M-Instruct.Q4_1.gguf, " \
                        f"{Path(smollm2_path).stat().st_size / 2**20:.1f} MiB)"
    assert re.fullmatch(r"llamacpp on cpu \(.*\) · context 512 tokens · needs [\d,]+ MiB of [\d,]+ MiB available",
                        banner[1]), banner[1]
    assert banner[2] == "type a message, /help for commands, Ctrl-D to leave"


@pytest.mark.slow
@pytest.mark.models
def test_save_onto_a_directory_or_into_a_missing_directory_is_a_one_line_error_and_chat_goes_on(
        smollm2_path, tmp_path):
    (tmp_path / "sessions").mkdir()
    child = _spawn([str(smollm2_path), *COMMON, "--max-tokens", "8"], tmp_path)
    child.sendline("Say hi.")
    child.expect(r"\[\d+ tokens, ")
    child.expect("> ")
    child.sendline("/save sessions")
    child.expect(r"(.*)\r\n> ")
    assert child.match.group(1).splitlines()[-1] == "error: cannot save the session to sessions: it is a directory"
    child.sendline("/save missing/dir/chat.session")
    child.expect(r"(.*)\r\n> ")
    assert child.match.group(1).splitlines()[-1] == \
        "error: cannot save the session to missing/dir/chat.session: No such file or directory (missing/dir)"
    child.sendline("/save sessions/chat.session")          # the conversation is still there to save
    child.expect(r"\[saved 2 messages to sessions/chat.session\]")
    child.expect("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "sessions" / "chat.session").is_file() and not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_ctrl_c_stops_a_long_prompt_and_leaves_the_conversation_as_it_was(smollm2_path, tmp_path):
    # A prompt of about 2,000 tokens: Ctrl-C aborts the native engine within a layer, not at the end of
    # a 512-token batch; the message is forgotten, so /save writes the two messages from before.
    args = [str(smollm2_path), "--backend", "native", "--threads", "2", "--n-ctx", "4096", "--temperature", "0",
            "--max-tokens", "8"]
    child = _spawn(args, tmp_path, n_ctx="4096")
    child.sendline("Say hi.")
    child.expect(r"\[\d+ tokens")
    child.expect("> ")
    child.sendline(" ".join(f"word{i}" for i in range(700)) + " END")
    child.expect_exact("END\r\n")
    time.sleep(0.5)
    asked = time.perf_counter()
    child.sendintr()
    child.expect(r"\[stopped\]\r?\n\[0 tokens")
    assert time.perf_counter() - asked < 3.0
    child.expect("> ")
    child.sendline("/save conversation.session")
    child.expect(r"\[saved 2 messages")
    child.expect("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
