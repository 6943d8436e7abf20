"""Fuzzing the serial codec's decoders with hypothesis: whatever a device sends, they never raise, never hold
more than their bound, and never hand on a frame or line that breaks the protocol's rules.

Time-boxed for CI: a fixed number of examples each (about 15 s in all on a small machine), no deadline per
example (a busy CI machine is slow, not wrong). Set EDGESDK_FUZZ_EXAMPLES for a longer run.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesdk.serve import serial_protocol as proto
from edgesdk.serve.serial_protocol import FrameType

EXAMPLES = int(os.environ.get("EDGESDK_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None, derandomize=True)
MAX_PAYLOAD = 64

# Bytes that look like the protocol: delimiters, COBS codes, types, and plain noise.
wire_bytes = st.binary(max_size=600) | st.lists(
    st.sampled_from([b"\x00", b"\x01", b"\x02", b"\xff", b"\x03\x03\x01", b"\r\n", b"\x08", b"\x03"])
    | st.binary(max_size=40), max_size=40).map(b"".join)
pieces = st.lists(wire_bytes, max_size=8)
frames = st.builds(lambda t, s, p: (t, s, p), st.sampled_from(list(FrameType)), st.integers(0, 255),
                   st.binary(max_size=MAX_PAYLOAD))


@FUZZ
@given(pieces)
def test_frame_decoder_survives_anything_and_stays_bounded(chunks):
    decoder = proto.FrameDecoder(MAX_PAYLOAD)
    for chunk in chunks:
        for event in decoder.feed(chunk):
            assert isinstance(event, (proto.Frame, proto.BadFrame))
            if isinstance(event, proto.Frame):
                assert len(event.payload) <= MAX_PAYLOAD
                # Only a frame whose CRC holds comes out: encoding it again gives the bytes that were read.
                assert proto.FrameDecoder(MAX_PAYLOAD).feed(proto.encode_frame(event.type, event.seq,
                                                                               event.payload)) == [event]
        assert decoder.buffered <= decoder.limit


@FUZZ
@given(st.lists(st.tuples(frames, wire_bytes), min_size=1, max_size=10), st.integers(1, 50))
def test_good_frames_between_noise_all_come_through_in_order(items, step):
    stream = b""
    for (frame_type, seq, payload), noise in items:
        # Noise, then a delimiter (as a sender puts before every frame), then the frame.
        stream += noise + b"\x00" + proto.encode_frame(frame_type, seq, payload)
    decoder = proto.FrameDecoder(MAX_PAYLOAD)
    got = []
    for at in range(0, len(stream), step):
        got += [e for e in decoder.feed(stream[at:at + step]) if isinstance(e, proto.Frame)]
    wanted = [proto.Frame(t, s, p) for (t, s, p), _ in items]
    it = iter(got)
    assert all(any(g == w for g in it) for w in wanted)      # wanted is a subsequence of got


@FUZZ
@given(pieces, st.integers(1, 80))
def test_line_decoder_survives_anything_and_hands_on_only_clean_lines(chunks, limit):
    decoder = proto.LineDecoder(limit)
    for chunk in chunks:
        for event in decoder.feed(chunk):
            if isinstance(event, proto.Line):
                data = event.text.encode("utf-8")
                assert event.text and event.text == event.text.strip() and len(data) <= limit
                assert not any((b < 0x20 and b != 0x09) or b == 0x7F for b in data)
            else:
                assert isinstance(event, (proto.BadRequest, proto.Interrupt))
        assert decoder.buffered <= limit


@FUZZ
@given(st.text(max_size=200), st.integers(4, 80))
def test_escaped_chunks_rebuild_any_answer_and_fit_their_budget(text, budget):
    rest, rebuilt = text, []
    while rest:
        n = proto.take_line_chunk(rest, budget)
        assert 1 <= n <= len(rest)
        line = proto.chunk_line(rest[:n])
        assert len(line) <= len(proto.CHUNK_PREFIX) + budget + len(proto.LINE_END)
        assert line.count(b"\n") == 1 and line.count(b"\r") == 1
        reply = proto.parse_reply_line(line)
        assert reply.kind == "chunk"
        rebuilt.append(reply.text)
        rest = rest[n:]
    assert "".join(rebuilt) == text


@FUZZ
@given(st.binary(max_size=300))
def test_parsers_of_device_and_bridge_input_never_raise(data):
    proto.parse_reply_line(data)
    proto.parse_hello(data)
    proto.decode_request(data, 256)
    proto.looks_like_echo(data.decode("utf-8", "replace"))
    try:
        proto.cobs_decode(data)
    except ValueError:
        pass
