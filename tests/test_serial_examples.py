"""The device-side clients in examples/serial, run against the bridge as they are.

The Arduino sketches are compiled for this machine with g++ against a stand-in
for the few Arduino calls they use (tests/arduino_host: Serial is the pty,
Console is stdin/stdout); the MicroPython client runs under CPython with a
UART made of the pty. The bridge's ports are in auto mode, as by default.
"""
from __future__ import annotations

import importlib.util
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import edgesdk
from edgesdk.serve.serial import PortSpec, SerialBridge, SerialLimits

from serial_device import HANG_S, FakeDevice

import serial  # noqa: E402,F401  pyserial is in the test extra: a missing one fails here, it does not skip

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "serial"
HOST = Path(__file__).resolve().parent / "arduino_host"


@pytest.fixture(scope="module")
def model(smollm2_path):
    with edgesdk.load(smollm2_path, threads=1, n_ctx=512) as m:
        yield m


@pytest.fixture
def bridge_for(model, tmp_path):
    made = []

    def make(device):
        bridge = SerialBridge(model, [PortSpec(str(device.link), mode="auto")], state_dir=tmp_path / "sessions",
                              limits=SerialLimits(open_settle_s=0.0, max_answer_tokens=24), temperature=0.0)
        made.append(bridge)
        return bridge.start()

    yield make
    for bridge in made:
        bridge.close()


def _build(sketch: str, tmp_path: Path) -> Path:
    assert shutil.which("g++"), "the sketch tests need g++ (Debian's build-essential, as the README's quickstart)"
    binary = tmp_path / sketch
    subprocess.run(["g++", "-std=gnu++11", "-Wall", "-Wextra", "-Werror", "-I", str(HOST), "-DBRIDGE=Serial",
                    "-DCONSOLE=Console", "-x", "c++", str(EXAMPLES / sketch / f"{sketch}.ino"), "-x", "none",
                    str(HOST / "main.cpp"), "-o", str(binary)], check=True, timeout=HANG_S)
    return binary


def _run_sketch(binary: Path, device: FakeDevice, question: str, done: bytes) -> str:
    """Start the 'board' on the device's end of the pty, type a question on its console, read what it shows."""
    env = dict(os.environ, ARDUINO_HOST_SERIAL_FD=str(device.master))
    proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                            pass_fds=(device.master,))
    try:
        proc.stdin.write(question.encode() + b"\n")
        proc.stdin.flush()
        shown = b""
        deadline = time.monotonic() + HANG_S
        while done not in shown:
            assert time.monotonic() < deadline, f"the sketch showed {shown!r}"
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"the sketch exited (status {proc.poll()}) after {shown!r}"
                shown += chunk
        return shown.decode()
    finally:
        proc.kill()
        proc.wait()


def test_the_framed_arduino_sketch_asks_and_shows_the_answer(bridge_for, tmp_path):
    binary = _build("arduino_framed", tmp_path)
    device = FakeDevice(tmp_path / "usb-Arduino_Mega-if00")
    bridge = bridge_for(device)
    shown = _run_sketch(binary, device, "What is 2+2?", b"]\r\n")
    answer, _, reason = shown.rpartition(" [")
    assert reason.strip() in ("stop]", "length]")
    assert "4" in answer and answer == bridge.session(str(device.link)).history[-1]["content"]
    assert bridge.stats(str(device.link)).mode == "framed"


def test_the_line_arduino_sketch_asks_and_shows_the_answer(bridge_for, tmp_path):
    binary = _build("arduino_line", tmp_path)
    device = FakeDevice(tmp_path / "usb-Arduino_Leonardo-if00")
    bridge = bridge_for(device)
    shown = _run_sketch(binary, device, "What is 2+2?", b"bytes=")
    answer, _, end = shown.partition("\r\nEND ")
    assert end.startswith(("stop", "length"))
    assert "4" in answer and answer == bridge.session(str(device.link)).history[-1]["content"]


class PtyUART:
    """machine.UART's any(), read() and write(), on the device's end of a pty."""

    def __init__(self, fd: int):
        self.fd = fd

    def any(self) -> int:
        return 1 if select.select([self.fd], [], [], 0)[0] else 0

    def read(self):
        return os.read(self.fd, 4096) if self.any() else None

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)


def _micropython_client():
    spec = importlib.util.spec_from_file_location("edgesdk_bridge", EXAMPLES / "micropython_framed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_micropython_client_says_hello_asks_and_streams(bridge_for, tmp_path):
    client = _micropython_client()
    device = FakeDevice(tmp_path / "usb-MicroPython_Board-if00")
    bridge = bridge_for(device)
    board = client.Bridge(PtyUART(device.master), rx_buffer=256, window=2)
    assert board.hello() == "SmolLM2-135M-Instruct.Q4_1.gguf" and board.max_request == 256
    pieces = []
    reason, tokens = board.ask("What is 2+2?", pieces.append)
    assert reason in ("stop", "length") and 0 < tokens <= 24
    assert "".join(pieces) == bridge.session(str(device.link)).history[-1]["content"]
    assert all(len(p.encode()) <= 256 for p in pieces)


def test_the_micropython_client_codec_agrees_with_the_bridge_codec():
    from edgesdk.serve import serial_protocol as proto

    client = _micropython_client()
    assert client.crc16(b"123456789") == 0x29B1
    for data in (b"", b"\x00", bytes(range(256)), b"\x11" * 600, bytes(300)):
        assert proto.cobs_decode(client.cobs_encode(data)) == data
        assert client.cobs_decode(proto.cobs_encode(data)) == data
