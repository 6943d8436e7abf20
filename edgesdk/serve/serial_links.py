"""What the serial bridge says on one open port: a link per mode, and the answer buffer between them and the model.

A link turns what its port read (already decoded by serial_protocol) into
requests and replies, and the answer in flight into lines or acknowledged
frames, writing through the port's io object without ever blocking. It runs
on its port's thread only; the Answer is the one object the model worker
shares with it. Threads, the queue, sessions and reopening are serial.py's.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from . import serial_protocol as proto
from .serial_protocol import Code, FrameType

if TYPE_CHECKING:
    from .serial import _Port as Port

log = logging.getLogger("edgesdk.serial")

LINE_LOW_WATER = 256    # line mode: more answer text is formatted only while less than this waits for the OS
MAX_BACKOFF_S = 8.0     # framed mode: the longest wait between two retransmissions

HELP = """commands:
/reset        forget the conversation
/system TEXT  set a system prompt, start over
/cancel       stop the answer (Ctrl-C too)
/ping         the bridge answers PONG
/hello        the bridge says READY again
/help         this help"""


class Answer:
    """One answer on its way to a device: text generated and not yet sent, and how it ended.

    The model worker pushes and finishes it; the port thread takes text from
    it; abort() (device cancel, stall, unplug) ends it from the port's side and
    stops the generation. Its text never exceeds max_answer_bytes, so pushing
    never waits."""

    def __init__(self, wake: Callable[[], None]):
        self._lock = threading.Lock()
        self._wake = wake
        self._text = ""
        self.cancel = threading.Event()
        self.end: Optional[Tuple[str, str]] = None     # (reason, message)
        self.tokens = 0
        self.sent_bytes = 0
        self.end_sent = False

    def push(self, text: str) -> None:
        with self._lock:
            if self.end is not None or not text:
                return
            self._text += text
        self._wake()

    def finish(self, reason: str, message: str = "") -> None:
        with self._lock:
            if self.end is None:
                self.end = (reason, message)
        self._wake()

    def abort(self, reason: str, message: str = "") -> None:
        self.cancel.set()
        with self._lock:
            if self.end is None:
                self.end = (reason, message)
            self._text = ""
        self._wake()

    def pending(self) -> Tuple[str, Optional[Tuple[str, str]]]:
        """(text not yet sent, the end if there is one)."""
        with self._lock:
            return self._text, self.end

    def consume(self, n_chars: int) -> None:
        with self._lock:
            taken, self._text = self._text[:n_chars], self._text[n_chars:]
        self.sent_bytes += len(taken.encode("utf-8"))


class Link:
    """One open port in one mode: what the device sent, what goes back, the answer in flight; never blocks."""

    mode = ""

    def __init__(self, port: "Port", io, now: float, out: Optional[bytearray] = None):
        self.port = port
        self.io = io
        self.limits = port.limits
        self.stats = port.stats
        self.out = out if out is not None else bytearray()     # bytes the OS has not taken yet
        self.last_write = now
        self.answer: Optional[Answer] = None
        self.warned_echo = False

    # -- output -------------------------------------------------------------------------------------------

    def send(self, data: bytes, now: float, control: bool = True) -> bool:
        """Queue bytes for the device; a control reply that would pass max_pending_bytes is dropped."""
        if control and len(self.out) + len(data) > self.limits.max_pending_bytes:
            self.stats.dropped_replies += 1
            return False
        if not self.out:
            self.last_write = now
        self.out += data
        self.stats.peak_pending_bytes = max(self.stats.peak_pending_bytes, len(self.out))
        return True

    def flush(self, now: float) -> None:
        if self.out:
            taken = self.io.write(bytes(self.out))
            if taken:
                del self.out[:taken]
                self.last_write = now
                self.stats.bytes_out += taken
        if self.out and self.answer is not None and now - self.last_write >= self.limits.stall_timeout_s:
            self.stall(f"the device took no bytes for {self.limits.stall_timeout_s:g} s", now)

    # -- requests, in both modes ----------------------------------------------------------------------------

    def request(self, text: str, seq: int, now: float) -> None:
        if self.echoed(text):
            return
        if not text.startswith("/"):
            self.start(seq, now, question=text)
            return
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        if name == "/cancel":
            self.cancel("cancelled", now)
            self.reply_ok(seq, now)
        elif name == "/ping":
            self.reply_pong(seq, b"", now)
        elif name == "/hello":
            self.hello(b"", now)
        elif name == "/help":
            self.start(seq, now, text=HELP)
        elif name == "/reset":
            self.start(seq, now, command=("reset", ""))
        elif name == "/system" and arg:
            self.start(seq, now, command=("system", arg))
        elif name == "/system":
            self.reply_error(seq, Code.BAD_REQUEST, 0, "usage: /system TEXT", now)
        else:
            self.reply_error(seq, Code.BAD_REQUEST, 0, f"unknown command {name[:32]}; /help lists them", now)

    def start(self, seq: int, now: float, question: Optional[str] = None,
              command: Optional[Tuple[str, str]] = None, text: Optional[str] = None) -> None:
        if self.answer is not None and not self.answer_delivered():
            self.reply_busy(seq, Code.IN_PROGRESS, 0, "the previous answer is not finished (/cancel stops it)", now)
            return
        self.finish_answer()
        answer = Answer(self.port.wake)
        if text is not None:          # answered here: no model, no queue
            answer.push(text)
            answer.finish("stop")
        else:
            refused = self.port.submit(answer, question, command, now)
            if refused is not None:
                self.reply_busy(seq, *refused, now)
                return
        self.stats.requests += 1
        self.answer = answer
        self.accepted(seq, now)

    def cancel(self, reason: str, now: float, message: str = "") -> None:
        if self.answer is not None:
            self.answer.abort(reason, message)

    def stall(self, message: str, now: float) -> None:
        """The device takes nothing: the answer in flight ends with "error" (once; one already cancelled,
        by the device or an unplug, just ends)."""
        answer = self.answer
        if answer is None:
            return
        if answer.cancel.is_set():
            reason, message = "cancelled", ""
        else:
            self.stats.stalls += 1
            log.warning("%s: %s; the answer is cancelled", self.port.path, message)
            answer.abort("error", message)
            reason = "error"           # even if the model had finished: the device did not get it all
        self.stalled(answer, reason, message, now)

    def stalled(self, answer: Answer, reason: str, message: str, now: float) -> None:
        """What else a mode does when its device stops taking the answer."""

    def finish_answer(self) -> None:
        if self.answer is not None:
            self.answer = None
            self.stats.answers += 1

    def answer_delivered(self) -> bool:
        return False

    def echoed(self, text: str) -> bool:
        return False

    def close(self) -> None:
        """The port is gone: whatever is in flight is cancelled (the model stops; the history keeps it)."""
        self.cancel("cancelled", 0.0, "the port closed")

    # Each mode says these its own way.
    def greet(self, now: float) -> None: ...
    def receive(self, data: bytes, now: float) -> None: ...
    def pump(self, now: float) -> None: ...
    def accepted(self, seq: int, now: float) -> None: ...
    def hello(self, payload: bytes, now: float) -> None: ...
    def reply_ok(self, seq: int, now: float) -> None: ...
    def reply_pong(self, seq: int, payload: bytes, now: float) -> None: ...
    def reply_busy(self, seq: int, code: Code, retry_s: int, message: str, now: float) -> None: ...
    def reply_error(self, seq: int, code: Code, value: int, message: str, now: float) -> None: ...


class LineLink(Link):
    """Line mode. With auto, every byte also goes to a frame decoder, and the first valid frame from the
    device switches the port to framed mode (until it is reopened); a 0x00 drops the line being typed."""

    mode = "line"

    def __init__(self, port: "Port", io, now: float, auto: bool = False):
        super().__init__(port, io, now)
        self.decoder = proto.LineDecoder(self.limits.max_request_bytes)
        self.auto = auto
        self.probe = proto.FrameDecoder(self.limits.max_request_bytes) if auto else None
        self.framing_seen = False     # a 0x00 came since the last good line: control bytes are frame bytes
        self.text_since: Optional[float] = None     # when the link first saw the answer text it holds now

    def greet(self, now: float) -> None:
        self.send(proto.ready_line(self.port.model_name, self.limits.max_request_bytes), now)

    def hello(self, payload: bytes, now: float) -> None:
        self.greet(now)

    def receive(self, data: bytes, now: float) -> None:
        if self.probe is None:
            for event in self.decoder.feed(data):
                self.on_event(event, now)
            return
        start = 0
        while start < len(data):
            zero = data.find(0, start)
            stop = len(data) if zero < 0 else zero + 1
            piece, start = data[start:stop], stop
            for event in self.probe.feed(piece):
                if isinstance(event, proto.Frame) and not event.type & proto.FROM_BRIDGE:
                    self.port.switch_to_framed(self, event, data[start:], now)
                    return
            for event in self.decoder.feed(piece[:-1] if zero >= 0 else piece):
                if self.framing_seen and isinstance(event, proto.BadRequest) and event.code == Code.BAD_REQUEST:
                    continue          # a frame that is not one (noise): no ERR line for it
                self.on_event(event, now)
            if zero >= 0:
                self.decoder.reset()
                self.framing_seen = True

    def stalled(self, answer: Answer, reason: str, message: str, now: float) -> None:
        # END now, after the lines already waiting: a device that reads again gets them, then why it ended.
        self.send(proto.end_line(reason, answer.tokens, answer.sent_bytes, message), now, control=False)
        self.finish_answer()

    def on_event(self, event, now: float) -> None:
        if isinstance(event, proto.Interrupt):
            self.cancel("cancelled", now)
        elif isinstance(event, proto.BadRequest):
            if event.code == Code.TOO_LONG:
                self.stats.overlong += 1
            self.reply_error(0, event.code, 0, event.message, now)
        else:
            self.framing_seen = False
            self.request(event.text, 0, now)

    def echoed(self, text: str) -> bool:
        if not proto.looks_like_echo(text):
            return False
        self.stats.echoes += 1
        if not self.warned_echo:
            self.warned_echo = True
            log.warning("%s: the port sends back what the bridge writes (TX wired to RX? a REPL echoing?); "
                        "those lines are not answered", self.port.path)
        return True

    def reply_ok(self, seq, now):
        pass

    def accepted(self, seq, now):
        pass

    def reply_pong(self, seq, payload, now):
        self.send(proto.pong_line(), now)

    def reply_busy(self, seq, code, retry_s, message, now):
        self.stats.busy += 1
        self.send(proto.busy_line(code, retry_s, message), now)

    def reply_error(self, seq, code, value, message, now):
        self.stats.refused += 1
        self.send(proto.error_line(code, message), now)

    def pump(self, now: float) -> None:
        while self._format(now):      # more lines as long as the OS takes them at once
            self.flush(now)
            if self.out:
                break
        self.flush(now)

    def _format(self, now: float) -> bool:
        """Answer text (then END) into lines while less than LINE_LOW_WATER bytes wait; whether it made any."""
        answer, limits = self.answer, self.limits
        made = False
        while answer is not None and len(self.out) < LINE_LOW_WATER:
            text, end = answer.pending()
            if text:
                if self.text_since is None:
                    self.text_since = now
                n = proto.take_line_chunk(text, limits.line_chunk_bytes)
                # The first piece goes at once (the device sees its answer begin); later ones fill lines.
                ready = (n < len(text) or text[n - 1] == "\n" or end is not None or answer.sent_bytes == 0
                         or now - self.text_since >= limits.line_coalesce_s)
                if not ready:
                    break
                answer.consume(n)
                self.text_since = None
                self.send(proto.chunk_line(text[:n]), now, control=False)
            elif end is not None:
                reason, message = end
                self.send(proto.end_line(reason, answer.tokens, answer.sent_bytes, message), now, control=False)
                self.finish_answer()
                answer = None
            else:
                break
            made = True
        return made


class FramedLink(Link):
    """Framed mode: COBS frames with CRC; the answer goes out as CHUNKs and an END, each acknowledged by the
    device, at most `window` unacknowledged (go-back-N, resent after ack_timeout_s, doubling)."""

    mode = "framed"

    def __init__(self, port: "Port", io, now: float, out: Optional[bytearray] = None):
        super().__init__(port, io, now, out)
        self.decoder = proto.FrameDecoder(self.limits.max_request_bytes)
        self.configure(b"")
        self.tx_seq = 0
        self.unacked: List[Tuple[int, bytes]] = []    # (seq, wire bytes) of answer frames not acknowledged
        self.sent_at = now            # when the unacknowledged frames last went out
        self.waiting_since = now      # when the device last acknowledged something (or we began to wait)
        self.backoff = self.limits.ack_timeout_s
        self.last_ask: Optional[Tuple[int, int]] = None     # (seq, first answer seq) of the ASK being answered

    def configure(self, hello: bytes) -> None:
        self.rx_buffer, self.window = proto.parse_hello(hello)
        self.chunk_payload = proto.chunk_payload_limit(self.rx_buffer, self.window)

    def greet(self, now: float) -> None:
        # A leading delimiter drops whatever the device's decoder held (e.g. the line-mode READY of auto mode).
        room = self.rx_buffer - 1
        payload = proto.ready_payload(self.port.model_name, self.limits.max_request_bytes, room)
        self.send(proto.DELIMITER + proto.encode_frame(FrameType.READY, 0, payload), now)

    def hello(self, payload: bytes, now: float) -> None:
        """The device (re)started: forget this link's state, take its buffer sizes, say READY."""
        self.cancel("cancelled", now, "the device said HELLO")
        self.finish_answer()
        self.unacked.clear()
        self.tx_seq = 0
        self.last_ask = None
        self.configure(payload)
        self.greet(now)

    def receive(self, data: bytes, now: float) -> None:
        for event in self.decoder.feed(data):
            self.on_frame(event, now)

    def on_frame(self, event, now: float) -> None:
        stats = self.stats
        if isinstance(event, proto.BadFrame):
            if event.reason == "crc":
                stats.crc_errors += 1
            elif event.reason == "overlong":
                stats.overlong += 1
                if event.type == FrameType.ASK and event.seq is not None:
                    self.reply_error(event.seq, Code.TOO_LONG, self.limits.max_request_bytes,
                                     "the request is too long", now)
            else:
                stats.bad_frames += 1
            return
        stats.frames_in += 1
        kind, seq = event.type, event.seq
        if kind & proto.FROM_BRIDGE:
            stats.echoes += 1
            if not self.warned_echo:
                self.warned_echo = True
                log.warning("%s: the port sends back the bridge's own frames (TX wired to RX?)", self.port.path)
        elif kind == FrameType.ACK:
            self.on_ack(seq, now)
        elif kind == FrameType.ASK:
            if self.answer is not None and self.last_ask is not None and self.last_ask[0] == seq:
                self.send(proto.encode_frame(FrameType.BRIDGE_ACK, seq, bytes((self.last_ask[1],))), now)
                return                # the device did not hear our ACK and asked again: it is the same ASK
            text = proto.decode_request(event.payload, self.limits.max_request_bytes)
            if isinstance(text, proto.BadRequest):
                value = self.limits.max_request_bytes if text.code == Code.TOO_LONG else 0
                self.reply_error(seq, text.code, value, text.message, now)
            else:
                self.request(text, seq, now)
        elif kind == FrameType.CANCEL:
            self.cancel("cancelled", now)
            self.reply_ok(seq, now)
        elif kind == FrameType.PING:
            self.reply_pong(seq, event.payload, now)
        elif kind == FrameType.HELLO:
            self.hello(event.payload, now)
        else:
            stats.bad_frames += 1

    def accepted(self, seq, now):
        self.last_ask = (seq, self.tx_seq)
        self.send(proto.encode_frame(FrameType.BRIDGE_ACK, seq, bytes((self.tx_seq,))), now)

    def reply_ok(self, seq, now):
        self.send(proto.encode_frame(FrameType.BRIDGE_ACK, seq), now)

    def reply_pong(self, seq, payload, now):
        self.send(proto.encode_frame(FrameType.PONG, seq, payload[:proto.PING_ECHO_MAX]), now)

    def reply_busy(self, seq, code, retry_s, message, now):
        self.stats.busy += 1
        self.send(proto.encode_frame(FrameType.BUSY, seq, proto.code_payload(code, retry_s)), now)

    def reply_error(self, seq, code, value, message, now):
        self.stats.refused += 1
        self.send(proto.encode_frame(FrameType.ERROR, seq, proto.code_payload(code, value)), now)

    def finish_answer(self) -> None:
        super().finish_answer()
        self.unacked.clear()

    def answer_delivered(self) -> bool:
        # All text and the END went out; only END's ACK is missing: a new ASK says the device has it.
        return self.answer is not None and self.answer.end_sent

    def on_ack(self, seq: int, now: float) -> None:
        for i, (sent, _) in enumerate(self.unacked):
            if sent == seq:
                del self.unacked[:i + 1]
                self.waiting_since = self.sent_at = now
                self.backoff = self.limits.ack_timeout_s
                if not self.unacked and self.answer is not None and self.answer.end_sent:
                    self.finish_answer()
                return

    def _send_answer_frame(self, kind: FrameType, payload: bytes, now: float) -> None:
        wire = proto.encode_frame(kind, self.tx_seq, payload)
        if not self.unacked:
            self.sent_at = self.waiting_since = now
        self.unacked.append((self.tx_seq, wire))
        self.tx_seq = proto.next_seq(self.tx_seq)
        self.send(wire, now, control=False)

    def pump(self, now: float) -> None:
        answer, limits = self.answer, self.limits
        while answer is not None and not answer.end_sent and len(self.unacked) < self.window:
            text, end = answer.pending()
            if text:
                n = proto.utf8_prefix_chars(text, self.chunk_payload)
                answer.consume(n)
                self._send_answer_frame(FrameType.CHUNK, text[:n].encode("utf-8"), now)
            elif end is not None:
                reason, _message = end
                answer.end_sent = True
                self._send_answer_frame(FrameType.END, proto.end_payload(reason, answer.tokens, answer.sent_bytes), now)
            else:
                break
        if self.unacked and now - self.waiting_since >= limits.stall_timeout_s:
            self.stall(f"the device acknowledged nothing for {limits.stall_timeout_s:g} s", now)
        if self.unacked and not self.out and now - self.sent_at >= self.backoff:
            for _seq, wire in self.unacked:        # go-back-N: everything not acknowledged, in order
                self.send(wire, now, control=False)
            self.stats.retransmits += 1
            self.sent_at = now
            self.backoff = min(self.backoff * 2, MAX_BACKOFF_S)
        self.flush(now)

    def stalled(self, answer: Answer, reason: str, message: str, now: float) -> None:
        # Nothing more is waited for. The END goes out once, unacknowledged: a device that reads again
        # learns why the answer stopped.
        self.unacked.clear()
        self.send(proto.encode_frame(FrameType.END, self.tx_seq,
                                     proto.end_payload(reason, answer.tokens, answer.sent_bytes)), now)
        self.tx_seq = proto.next_seq(self.tx_seq)
        answer.end_sent = True
        self.finish_answer()


__all__ = ["Answer", "Link", "LineLink", "FramedLink", "HELP", "LINE_LOW_WATER"]
