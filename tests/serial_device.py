"""A fake microcontroller for the serial bridge's tests: the device end of a pseudo-terminal pair.

The bridge opens a symlink to the pty (as /dev/serial/by-id/... names are
symlinks to /dev/ttyUSBn), so the device can be unplugged (the pty closed) and
plugged in again (a new pty, the same name). Every wait has a generous
timeout that only catches a hang; nothing depends on how fast anything is.
"""
from __future__ import annotations

import os
import select
import time
import tty
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from edgesdk.serve import serial_protocol as proto
from edgesdk.serve.serial_protocol import FrameType

HANG_S = 120.0          # model load + answers on a busy 2-core machine, many times over


def wait_for(condition: Callable[[], bool], what: str, timeout: float = HANG_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class FakeDevice:
    """One device on one pty; line-mode and framed-mode helpers speak the protocol as the examples do."""

    def __init__(self, link: Path, plugged: bool = True):
        self.link = Path(link)
        self.master: Optional[int] = None
        if plugged:
            self.plug()

    # -- the cable ----------------------------------------------------------------------------------------

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self.master, self._slave = master, slave
        new = self.link.with_name(self.link.name + ".new")
        os.symlink(os.ttyname(slave), new)
        os.replace(new, self.link)
        self.pending = b""
        self.decoder = proto.FrameDecoder(4096)
        self.frames: List[proto.Frame] = []

    def unplug(self) -> None:
        if self.master is None:
            return
        os.unlink(self.link)
        os.close(self.master)
        os.close(self._slave)
        self.master = None

    # -- bytes --------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            select.select([], [self.master], [], HANG_S)
            view = view[os.write(self.master, view):]

    def read_some(self, timeout: float = HANG_S) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, 65536)
        except OSError:
            return b""

    # -- line mode ----------------------------------------------------------------------------------------

    def read_line(self, timeout: float = HANG_S) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from the bridge; have {self.pending!r}")
            self.pending += self.read_some(left)
        line, _, self.pending = self.pending.partition(b"\n")
        return line + b"\n"

    def reply(self, timeout: float = HANG_S) -> proto.Reply:
        return proto.parse_reply_line(self.read_line(timeout))

    def send_line(self, text: str) -> None:
        self.write(text.encode("utf-8") + b"\r\n")

    def answer_lines(self, on_chunk: Optional[Callable[[str], None]] = None) -> Tuple[str, proto.Reply, List[bytes]]:
        """Read "> " lines until the final line (END, BUSY, ERR): (text, final reply, raw chunk lines)."""
        text, raw = [], []
        while True:
            line = self.read_line()
            reply = proto.parse_reply_line(line)
            if reply.kind == "chunk":
                raw.append(line)
                text.append(reply.text)
                if on_chunk is not None:
                    on_chunk(reply.text)
            elif reply.kind in ("end", "busy", "error"):
                return "".join(text), reply, raw

    def ask_line(self, question: str) -> Tuple[str, proto.Reply]:
        self.send_line(question)
        text, final, _ = self.answer_lines()
        return text, final

    # -- framed mode --------------------------------------------------------------------------------------

    def send_frame(self, frame_type: int, seq: int, payload: bytes = b"", lead: bool = True) -> None:
        self.write((proto.DELIMITER if lead else b"") + proto.encode_frame(frame_type, seq, payload))

    def read_frame(self, timeout: float = HANG_S, skip: Tuple[int, ...] = ()) -> proto.Frame:
        deadline = time.monotonic() + timeout
        while True:
            while self.frames:
                frame = self.frames.pop(0)
                if frame.type not in skip:
                    return frame
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no frame from the bridge")
            self.frames += [e for e in self.decoder.feed(self.read_some(left)) if isinstance(e, proto.Frame)]

    def hello(self, rx_buffer: int = proto.DEFAULT_RX_BUFFER, window: int = proto.DEFAULT_WINDOW) -> proto.Frame:
        self.send_frame(FrameType.HELLO, 0, proto.hello_payload(rx_buffer, window))
        return self.read_frame(skip=(FrameType.CHUNK, FrameType.END, FrameType.PONG, FrameType.BRIDGE_ACK))

    def ask_frame(self, question: str, seq: int) -> proto.Frame:
        """ASK, and the bridge's reply to it (BRIDGE_ACK, BUSY or ERROR with this seq)."""
        self.send_frame(FrameType.ASK, seq, question.encode("utf-8"))
        while True:
            frame = self.read_frame()
            if frame.seq == seq and frame.type in (FrameType.BRIDGE_ACK, FrameType.BUSY, FrameType.ERROR):
                return frame

    def answer_frames(self, first: int, on_chunk: Optional[Callable[[proto.Frame], bool]] = None
                      ) -> Tuple[str, Tuple[str, int, int], List[proto.Frame]]:
        """Take CHUNKs and the END from `first` on, acknowledging each, as the examples do; on_chunk may return
        False to leave a frame unacknowledged (as if its CRC had failed). (text, END, frames taken)."""
        expected, taken, text = first, [], []
        while True:
            frame = self.read_frame()
            if frame.type not in (FrameType.CHUNK, FrameType.END):
                continue
            if frame.seq != expected:
                if taken:
                    self.send_frame(FrameType.ACK, taken[-1].seq, lead=False)
                continue
            if frame.type == FrameType.CHUNK and on_chunk is not None and on_chunk(frame) is False:
                continue
            taken.append(frame)
            expected = proto.next_seq(expected)
            self.send_frame(FrameType.ACK, frame.seq, lead=False)
            if frame.type == FrameType.END:
                return "".join(text), proto.parse_end(frame.payload), taken
            text.append(frame.payload.decode("utf-8"))

    def ask_framed(self, question: str, seq: int) -> Tuple[str, Tuple[str, int, int], List[proto.Frame]]:
        ack = self.ask_frame(question, seq)
        assert ack.type == FrameType.BRIDGE_ACK, ack
        return self.answer_frames(ack.payload[0])
