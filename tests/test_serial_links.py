"""One open port's protocol state (edgesdk/serve/serial_links.py) without threads, a port or a model.

Links take the time as an argument, so retransmission, backoff and stall
deadlines are tested by moving a clock, not by waiting.
"""
from __future__ import annotations

from edgesdk.serve import serial_protocol as proto
from edgesdk.serve.serial import PortStats, SerialLimits
from edgesdk.serve.serial_links import Answer, FramedLink, LineLink
from edgesdk.serve.serial_protocol import FrameType

TEXT = "Serial links carry about eleven kilobytes a second. " * 80      # 4160 bytes


class FakeIO:
    def __init__(self, take=None):
        self.written = bytearray()
        self.take = take             # how many bytes the OS takes per write; None: all

    def write(self, data):
        n = len(data) if self.take is None else min(self.take, len(data))
        self.written += data[:n]
        return n


class FakePort:
    """What a link asks of its port: limits, stats, names, and a queue that takes every request."""

    def __init__(self, **limits):
        self.limits = SerialLimits(**limits)
        self.stats = PortStats()
        self.model_name = "tiny"
        self.path = "/dev/fake"
        self.submitted = []

    def wake(self):
        pass

    def submit(self, answer, question, command, now):
        self.submitted.append((answer, question, command))
        return None


def finished_answer(text: str) -> Answer:
    answer = Answer(lambda: None)
    answer.push(text)
    answer.tokens = 99
    answer.finish("length")
    return answer


def frames_in(data: bytes):
    return [e for e in proto.FrameDecoder(4096).feed(data) if isinstance(e, proto.Frame)]


def test_a_line_link_writes_all_it_has_in_one_pump_while_the_os_takes_it():
    port, io = FakePort(max_answer_bytes=8192), FakeIO()
    link = LineLink(port, io, now=0.0)
    link.answer = finished_answer(TEXT)
    link.pump(0.0)
    lines = bytes(io.written).split(b"\r\n")[:-1]
    replies = [proto.parse_reply_line(line) for line in lines]
    assert "".join(r.text for r in replies if r.kind == "chunk") == TEXT
    assert (replies[-1].kind, replies[-1].word, replies[-1].fields) == \
        ("end", "length", {"tokens": "99", "bytes": str(len(TEXT))})
    assert all(len(line) + 2 <= 64 for line in lines)


def test_a_line_link_holds_no_more_than_its_low_water_mark_for_a_slow_os():
    port, io = FakePort(), FakeIO(take=7)
    link = LineLink(port, io, now=0.0)
    link.answer = finished_answer(TEXT[:900])
    for step in range(2000):
        link.pump(step * 0.001)
        assert len(link.out) <= 256 + 64
        if link.answer is None and not link.out:
            break
    assert b"END length" in io.written and port.stats.stalls == 0


def test_line_pieces_wait_to_fill_a_line_except_the_first():
    port, io = FakePort(line_coalesce_s=0.2), FakeIO()
    link = LineLink(port, io, now=0.0)
    answer = link.answer = Answer(lambda: None)
    answer.push("The")
    link.pump(0.0)
    assert bytes(io.written) == b"> The\r\n"                   # the first piece at once
    answer.push(" answer")
    link.pump(0.1)
    assert bytes(io.written) == b"> The\r\n"                   # later ones wait to fill the line ...
    answer.push(" is 4.")
    link.pump(0.1 + 0.2)                                        # ... for line_coalesce_s at most
    assert bytes(io.written) == b"> The\r\n>  answer is 4.\r\n"


def _framed(rx_buffer: int, window: int, **limits):
    port, io = FakePort(**limits), FakeIO()
    link = FramedLink(port, io, now=0.0)
    link.hello(proto.hello_payload(rx_buffer, window), 0.0)
    link.flush(0.0)
    io.written.clear()
    link.answer = finished_answer(TEXT[:600])
    link.answer.end_sent = False
    return port, io, link


def test_a_framed_link_keeps_window_frames_in_flight_and_within_the_buffer():
    port, io, link = _framed(256, 4)
    taken, now = [], 0.0
    while True:
        link.pump(now)
        sent = frames_in(bytes(io.written))
        io.written.clear()
        assert len(link.unacked) <= 4
        assert sum(len(wire) for _, wire in link.unacked) + proto.CONTROL_RESERVE <= 256
        if not sent:
            break
        taken += sent
        link.on_ack(sent[-1].seq, now)            # cumulative: the last of them acknowledges all
        now += 0.001
    assert "".join(f.payload.decode() for f in taken if f.type == FrameType.CHUNK) == TEXT[:600]
    assert taken[-1].type == FrameType.END and link.answer is None and port.stats.answers == 1
    assert [f.seq for f in taken] == list(range(len(taken)))


def test_unacknowledged_frames_go_again_with_doubling_waits_then_the_answer_stalls():
    port, io, link = _framed(64, 1, ack_timeout_s=1.0, stall_timeout_s=15.0)
    link.pump(0.0)
    (first,) = frames_in(bytes(io.written))
    resent_at = []
    for tenth in range(1, 160):
        now = tenth / 10
        io.written.clear()
        link.pump(now)
        again = frames_in(bytes(io.written))
        if again and again[0].type == FrameType.CHUNK:
            assert again == [first]
            resent_at.append(now)
        if port.stats.stalls:
            break
    assert resent_at == [1.0, 3.0, 7.0]                       # after 1 s, then 2 s, then 4 s more
    assert port.stats.stalls == 1 and now == 15.0
    end = frames_in(bytes(io.written))[-1]
    assert end.type == FrameType.END and proto.parse_end(end.payload)[0] == "error"
    assert link.answer is None and link.unacked == []


def test_an_ack_after_a_resend_resets_the_wait():
    port, io, link = _framed(64, 1, ack_timeout_s=1.0, stall_timeout_s=15.0)
    link.pump(0.0)
    link.pump(1.0)                                             # resent once
    (frame, *_) = frames_in(bytes(io.written))
    link.on_ack(frame.seq, 1.5)
    io.written.clear()
    link.pump(1.5)                                             # the next chunk
    assert frames_in(bytes(io.written))[0].seq == proto.next_seq(frame.seq)
    io.written.clear()
    link.pump(2.4)
    assert io.written == b""                                   # 1 s from the ACK, not 2 s from the resend
    link.pump(2.5)
    assert frames_in(bytes(io.written))[0].seq == proto.next_seq(frame.seq)


def test_a_framed_question_is_acknowledged_with_the_first_answer_seq_and_a_repeat_is_not_asked_twice():
    port, io = FakePort(), FakeIO()
    link = FramedLink(port, io, now=0.0)
    link.tx_seq = 250                                          # the sequence wraps at 256
    for _ in range(2):
        link.on_frame(proto.Frame(FrameType.ASK, 17, b"What is 2+2?"), 0.0)
    link.flush(0.0)
    assert frames_in(bytes(io.written)) == [proto.Frame(FrameType.BRIDGE_ACK, 17, b"\xfa")] * 2
    assert len(port.submitted) == 1 and port.submitted[0][1] == "What is 2+2?"


def test_a_stall_is_counted_once_and_a_cancelled_answer_that_stalls_just_ends():
    port, io = FakePort(stall_timeout_s=1.0), FakeIO(take=0)
    link = LineLink(port, io, now=0.0)
    link.answer = finished_answer(TEXT[:900])
    for tenth in range(40):
        link.pump(tenth / 10)
    assert port.stats.stalls == 1 and link.answer is None
    end = proto.parse_reply_line(bytes(link.out).split(b"\r\n")[-2])
    assert (end.kind, end.word, end.message) == ("end", "error", "the device took no bytes for 1 s")

    port, io, link = _framed(64, 1, stall_timeout_s=1.0)
    link.pump(0.0)
    link.cancel("cancelled", 0.1)                               # the device cancels, then goes quiet
    io.written.clear()
    for tenth in range(1, 40):
        link.pump(tenth / 10)
    assert port.stats.stalls == 0 and link.answer is None
    end = [f for f in frames_in(bytes(io.written)) if f.type == FrameType.END][-1]
    assert proto.parse_end(end.payload)[0] == "cancelled"
