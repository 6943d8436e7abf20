"""What the serial bridge delivers to a device at 115200 baud, against the link's limit, and how soon.

    python benchmarks/bench_serial.py [--model smollm2-135m-instruct] [--baud 115200] [--questions 4]

There is no UART here: the device is the far end of a pseudo-terminal, and
the link's pace is emulated on it (PacedLink). 8N1 framing takes 10 bit times
a byte, so at 115200 baud a byte needs 86.8 us and the link carries at most
11,520 bytes/s each way. A byte the bridge writes reaches the device one byte
time after the previous one (or after it was written, if later); what the
device sends reaches the bridge only once its bytes have been "transmitted".
Not emulated: a USB-serial adapter's latency timer (FTDI: 16 ms by default),
the device's own processing time.

Two sources of answers:
- model: the real model, as a device would get it; the model is the bottleneck
  (its tokens/s is printed next to what arrived);
- canned: a fixed 4 KB answer handed over at once, so the link and the
  protocol are the bottleneck: this is the protocol's efficiency.

Columns: first = request start (the device begins to send) to the first
whole chunk at the device, in ms; text B/s = answer bytes delivered per second
from that first chunk to the END; link % = text B/s / (baud / 10); wire B/s =
every byte the bridge sent in that time (framing, escapes, END).
"""
from __future__ import annotations

import argparse
import os
import platform
import queue
import select
import statistics
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import edgesdk  # noqa: E402
from edgesdk.serve import serial_protocol as proto  # noqa: E402
from edgesdk.serve.serial import PortSpec, SerialBridge, SerialLimits  # noqa: E402
from edgesdk.serve.serial_protocol import FrameType  # noqa: E402

QUESTIONS = ["Explain how a refrigerator keeps food cold.", "Describe the water cycle in a few sentences.",
             "What should I pack for a weekend hiking trip?", "Why is the sky blue?",
             "Give me three tips for learning to play the guitar.", "How do bees make honey?"]
CANNED = ("The serial link carries about eleven and a half kilobytes a second at 115200 baud. " * 60)[:4096]


class PacedLink:
    """The device's end of a pty, paced like a UART: each direction carries one byte per 10 bit times."""

    def __init__(self, master: int, baud: int):
        self.master = master
        self.byte_s = 10.0 / baud
        self._rx = []                   # [arrival time, byte] of bytes not yet read by the device
        self._rx_clock = 0.0
        self._tx: "queue.Queue[bytes]" = queue.Queue()
        self._lock = threading.Condition()
        self.running = True
        self.bytes_in = 0               # bridge -> device, all bytes
        self._threads = [threading.Thread(target=self._receive, daemon=True),
                         threading.Thread(target=self._transmit, daemon=True)]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Stop both directions (before the pty's descriptors are closed and reused)."""
        self.running = False
        for thread in self._threads:
            thread.join()

    def _receive(self):
        while self.running:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            now = time.perf_counter()
            with self._lock:
                clock = max(self._rx_clock, now)
                for byte in data:
                    clock += self.byte_s
                    self._rx.append((clock, byte))
                self._rx_clock = clock
                self._lock.notify_all()

    def _transmit(self):
        clock = 0.0
        while self.running:
            try:
                data = self._tx.get(timeout=0.1)
            except queue.Empty:
                continue
            clock = max(clock, time.perf_counter()) + len(data) * self.byte_s
            delay = clock - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                os.write(self.master, data)
            except OSError:
                return

    def write(self, data: bytes) -> None:
        self._tx.put(bytes(data))

    def read(self, timeout: float = 120.0) -> bytes:
        """The bytes that have arrived by now; waits for at least one."""
        deadline = time.perf_counter() + timeout
        with self._lock:
            while not self._rx:
                if not self._lock.wait(deadline - time.perf_counter()):
                    raise TimeoutError("nothing from the bridge")
            first = self._rx[0][0]
        wait = first - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        now = time.perf_counter()
        with self._lock:
            n = 0
            while n < len(self._rx) and self._rx[n][0] <= now:
                n += 1
            data, self._rx = bytes(b for _, b in self._rx[:n]), self._rx[n:]
        self.bytes_in += len(data)
        return data


class Result:
    def __init__(self, started, first, ended, text_bytes, tokens, wire_bytes, reason):
        self.first_ms = (first - started) * 1000
        span = max(ended - first, 1e-9)
        self.text_bps = text_bytes / span if ended > first else 0.0
        self.tokens_ps = tokens / span if ended > first else 0.0
        self.wire_bps = wire_bytes / span if ended > first else 0.0
        self.text_bytes, self.tokens, self.reason = text_bytes, tokens, reason


def ask_line(link: PacedLink, pending: bytearray, question: str) -> Result:
    started = time.perf_counter()
    link.write(question.encode() + b"\r\n")
    first = None
    wire_at_first = 0
    text = b""
    while True:
        while b"\n" not in pending:
            pending += link.read()
        line, _, rest = bytes(pending).partition(b"\n")
        pending[:] = rest
        reply = proto.parse_reply_line(line)
        if reply.kind == "chunk":
            if first is None:
                first, wire_at_first = time.perf_counter(), link.bytes_in - len(pending)
            text += reply.text.encode()
        elif reply.kind == "end":
            ended = time.perf_counter()
            wire = link.bytes_in - len(pending) - wire_at_first
            return Result(started, first or ended, ended, len(text), int(reply.fields["tokens"]), wire, reply.word)


def ask_framed(link: PacedLink, decoder: proto.FrameDecoder, frames: list, question: str, seq: int) -> Result:
    def next_frame():
        while not frames:
            frames.extend(e for e in decoder.feed(link.read()) if isinstance(e, proto.Frame))
        return frames.pop(0)

    started = time.perf_counter()
    link.write(b"\x00" + proto.encode_frame(FrameType.ASK, seq, question.encode()))
    ack = next_frame()
    while not (ack.type == FrameType.BRIDGE_ACK and ack.seq == seq):
        ack = next_frame()
    expected, first, text, wire_at_first = ack.payload[0], None, 0, 0
    while True:
        frame = next_frame()
        if frame.type not in (FrameType.CHUNK, FrameType.END) or frame.seq != expected:
            continue
        link.write(proto.encode_frame(FrameType.ACK, frame.seq))
        expected = proto.next_seq(expected)
        if frame.type == FrameType.CHUNK:
            if first is None:
                first, wire_at_first = time.perf_counter(), link.bytes_in
            text += len(frame.payload)
            continue
        ended = time.perf_counter()
        reason, tokens, _ = proto.parse_end(frame.payload)
        return Result(started, first or ended, ended, text, tokens, link.bytes_in - wire_at_first, reason)


def canned(model):
    """model.stream_ids replaced by a source that has the whole answer at once (4-byte 'tokens')."""
    def stream_ids(ids, config, stats=None, cancel=None):
        def pieces():
            stats.prompt_tokens, stats.finish_reason = len(ids), "length"
            for at in range(0, len(CANNED), 4):
                if cancel is not None and cancel.is_set():
                    stats.finish_reason = "cancelled"
                    return
                stats.completion_tokens += 1
                yield CANNED[at:at + 4]
        return pieces()
    return stream_ids


def run(model, mode: str, rx_buffer: int, window: int, source: str, questions: int, baud: int,
        max_tokens: int, state_dir: Path):
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    limits = SerialLimits(open_settle_s=0.0, max_answer_tokens=max_tokens if source == "model" else 4096,
                          max_answer_bytes=4096, requests_per_minute=1000)
    if source == "canned":
        model.stream_ids = canned(model)
    bridge = SerialBridge(model, [PortSpec(os.ttyname(slave), baud=baud, mode=mode)], limits=limits,
                          state_dir=state_dir, temperature=0.0)
    link = PacedLink(master, baud)
    results, decode_tps = [], []
    try:
        bridge.start()
        if mode == "line":
            pending = bytearray()
            while b"\n" not in pending:
                pending += link.read()
            pending[:] = bytes(pending).partition(b"\n")[2]
            for i in range(questions):
                results.append(ask_line(link, pending, QUESTIONS[i % len(QUESTIONS)]))
                decode_tps.append(bridge.session(os.ttyname(slave)).last_stats.tokens_per_s)
        else:
            decoder, frames = proto.FrameDecoder(4096), []
            for _ in range(2):            # READY when the port opens, then after HELLO
                while not any(f.type == FrameType.READY for f in frames):
                    frames.extend(e for e in decoder.feed(link.read()) if isinstance(e, proto.Frame))
                frames.clear()
                link.write(b"\x00" + proto.encode_frame(FrameType.HELLO, 0, proto.hello_payload(rx_buffer, window)))
            frames.clear()
            for i in range(questions):
                results.append(ask_framed(link, decoder, frames, QUESTIONS[i % len(QUESTIONS)], seq=i + 1))
                decode_tps.append(bridge.session(os.ttyname(slave)).last_stats.tokens_per_s)
    finally:
        link.close()
        bridge.close()
        model.__dict__.pop("stream_ids", None)
        os.close(master)
        os.close(slave)
    return results, decode_tps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--questions", type=int, default=4, help="answers per configuration")
    parser.add_argument("--max-tokens", type=int, default=128, help="answer length with the model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-ctx", type=int, default=1024)
    args = parser.parse_args()

    limit = args.baud / 10
    model = edgesdk.load(args.model, threads=args.threads, n_ctx=args.n_ctx)
    print(f"# {model!r}, {platform.machine()}, {os.cpu_count()} CPUs (threads: {args.threads or 'default'}); "
          f"link emulated on a pty at {args.baud} baud 8N1: {limit:,.0f} B/s each way")
    configs = [("line", 64, 1, "model"), ("framed", 64, 1, "model"),
               ("line", 64, 1, "canned"), ("framed", 64, 1, "canned"), ("framed", 256, 4, "canned")]
    print(f"{'mode':14} {'source':6} {'answers':>7} {'bytes':>6} {'tokens':>6} {'first ms':>9} {'text B/s':>9} "
          f"{'tokens/s':>9} {'link %':>7} {'wire B/s':>9} {'model tok/s':>11}")
    with tempfile.TemporaryDirectory() as state:
        for mode, rx_buffer, window, source in configs:
            results, decode_tps = run(model, mode, rx_buffer, window, source, args.questions, args.baud,
                                      args.max_tokens, Path(state) / f"{mode}-{rx_buffer}-{source}")
            label = mode if mode == "line" else f"framed {rx_buffer}x{window}"
            med = statistics.median
            text_bps = med(r.text_bps for r in results)
            model_tps = f"{med(decode_tps):11.1f}" if source == "model" else f"{'-':>11}"
            print(f"{label:14} {source:6} {len(results):7d} {med(r.text_bytes for r in results):6.0f} "
                  f"{med(r.tokens for r in results):6.0f} {med(r.first_ms for r in results):9.1f} "
                  f"{text_bps:9.0f} {med(r.tokens_ps for r in results):9.1f} {100 * text_bps / limit:6.1f}% "
                  f"{med(r.wire_bps for r in results):9.0f} {model_tps}", flush=True)
    model.close()
    print("# medians over the answers; first = request start to the first whole chunk at the device; text B/s "
          "and tokens/s from the first chunk to END; link % = text B/s / link limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
