"""`edgesdk serial` as a maker runs it: a process, a device on a pty, Ctrl-C/SIGTERM to stop."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from edgesdk.cli import build_parser
from edgesdk.serial_cli import cmd_serial
from edgesdk.serve.serial import SerialLimits

from serial_device import HANG_S, FakeDevice

import serial  # noqa: E402,F401  pyserial is in the test extra: a missing one fails here, it does not skip

ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("EDGESDK_HOME", str(Path.home() / ".cache" / "edgesdk"))
    return env


def test_every_limit_is_a_flag_with_its_default():
    args = build_parser().parse_args(["serial", "m.gguf", "--port", "/dev/ttyUSB0", "--port", "/dev/ttyACM0",
                                      "--max-queue", "2", "--stall-timeout-s", "3.5", "--mode", "framed"])
    assert args.func is cmd_serial and args.port == ["/dev/ttyUSB0", "/dev/ttyACM0"]
    assert (args.max_queue, args.stall_timeout_s, args.mode, args.baud) == (2, 3.5, "framed", 115200)
    defaults = build_parser().parse_args(["serial", "--port", "p"])
    assert {f.name: getattr(defaults, f.name) for f in fields(SerialLimits)} == \
        {f.name: f.default for f in fields(SerialLimits)}


def test_bad_settings_fail_in_one_line_before_the_model_loads(tmp_path):
    cmd = [sys.executable, "-m", "edgesdk.cli", "serial", str(tmp_path / "missing.gguf"), "--port", "/dev/ttyUSB0",
           "--mode", "framed", "--xonxoff"]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=HANG_S)
    assert out.returncode == 2 and "XON/XOFF" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_the_command_serves_a_device_and_stops_cleanly_on_sigterm(smollm2_path, tmp_path):
    device = FakeDevice(tmp_path / "usb-Arduino_Uno-if00")
    state = tmp_path / "sessions"
    cmd = [sys.executable, "-m", "edgesdk.cli", "serial", str(smollm2_path), "--port", str(device.link),
           "--open-settle-s", "0", "--threads", "1", "--n-ctx", "512", "--max-answer-tokens", "16",
           "--temperature", "0", "--state-dir", str(state)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = device.reply()
        assert ready.kind == "ready" and ready.fields["model"] == smollm2_path.name
        text, end = device.ask_line("What is 2+2?")
        assert end.kind == "end" and "4" in text
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "serving" in stdout and "Traceback" not in stderr
    assert "tokens, stop" in stderr or "tokens, length" in stderr      # the log line of the answer
    assert len(list(state.glob("usb-Arduino_Uno-if00-*.session"))) == 1
