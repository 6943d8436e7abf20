"""The serial codec (edgesdk/serve/serial_protocol.py) against independent references, and the spec's examples.

References: the CRC catalogue's check value and a bitwise CRC written here,
the published COBS vectors (Cheshire & Baker; Wikipedia's table), and a
reference COBS encoder written here from the paper's description.
"""
from __future__ import annotations

import ast
import random
import re
from pathlib import Path

import pytest

from edgesdk.serve import serial_protocol as proto
from edgesdk.serve.serial_protocol import Code, FrameType

DOC = Path(__file__).resolve().parent.parent / "docs" / "serial-protocol.md"


def crc16_bitwise(data: bytes) -> int:
    """CRC-16/CCITT-FALSE as a microcontroller computes it, bit by bit."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def cobs_reference(data: bytes) -> bytes:
    """COBS from the paper: a code byte before each run of up to 254 non-zero bytes, code = run length + 1;
    a full run (code 0xFF) implies no zero; nothing follows a full run that ends the data."""
    out, run, ended_full = bytearray(), bytearray(), False
    for byte in data:
        ended_full = False
        if byte == 0:
            out += bytes([len(run) + 1]) + run
            run = bytearray()
        else:
            run.append(byte)
            if len(run) == 254:
                out += b"\xff" + run
                run, ended_full = bytearray(), True
    if not ended_full:
        out += bytes([len(run) + 1]) + run
    return bytes(out)


def frame_reference(frame_type: int, seq: int, payload: bytes) -> bytes:
    body = bytes([frame_type, seq]) + len(payload).to_bytes(2, "big") + payload
    body += crc16_bitwise(body).to_bytes(2, "big")
    return cobs_reference(body) + b"\x00"


# -- CRC and COBS ---------------------------------------------------------------------------------------------------

def test_crc16_is_ccitt_false_with_the_catalogue_check_value():
    assert proto.crc16(b"123456789") == 0x29B1
    rng = random.Random(7)
    for n in (0, 1, 2, 31, 64, 255, 1000):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert proto.crc16(data) == crc16_bitwise(data)


COBS_VECTORS = [          # (data, encoding without the delimiter)
    (b"", "01"),
    (b"\x00", "0101"),
    (b"\x00\x00", "010101"),
    (bytes.fromhex("001100"), "01021101"),
    (bytes.fromhex("11220033"), "0311220233"),
    (bytes.fromhex("11223344"), "0511223344"),
    (bytes.fromhex("11000000"), "0211010101"),
    (bytes(range(1, 255)), "ff" + bytes(range(1, 255)).hex()),
    (bytes(range(0, 255)), "01ff" + bytes(range(1, 255)).hex()),
    (bytes(range(1, 256)), "ff" + bytes(range(1, 255)).hex() + "02ff"),
    (bytes(range(2, 256)) + b"\x00", "ff" + bytes(range(2, 256)).hex() + "0101"),
    (bytes(range(3, 256)) + b"\x00\x01", "fe" + bytes(range(3, 256)).hex() + "0201"),
]


@pytest.mark.parametrize("data,encoded", COBS_VECTORS, ids=[f"v{i}" for i in range(len(COBS_VECTORS))])
def test_cobs_matches_the_published_vectors(data, encoded):
    assert proto.cobs_encode(data).hex() == encoded
    assert proto.cobs_decode(bytes.fromhex(encoded)) == data


def test_cobs_roundtrips_zero_runs_and_block_edges_within_its_size_bound():
    rng = random.Random(11)
    for n in list(range(0, 600)) + [1016, 1017, 1018]:
        zero_share = rng.choice([0.0, 0.02, 0.5, 1.0])
        data = bytes(0 if rng.random() < zero_share else rng.randrange(1, 256) for _ in range(n))
        encoded = proto.cobs_encode(data)
        assert 0 not in encoded
        assert encoded == cobs_reference(data)
        assert proto.cobs_decode(encoded) == data
        assert len(encoded) <= proto.cobs_size(n)
        if zero_share == 0.0:
            assert len(encoded) == proto.cobs_size(n)      # the bound is reached: it is the exact worst case


@pytest.mark.parametrize("encoded", ["00", "0311", "05112233", "031100"])
def test_cobs_decode_rejects_a_zero_or_a_block_past_the_end(encoded):
    with pytest.raises(ValueError):
        proto.cobs_decode(bytes.fromhex(encoded))


# -- frames ----------------------------------------------------------------------------------------------------------

def test_encode_frame_matches_the_layout_built_by_hand():
    rng = random.Random(3)
    for frame_type in FrameType:
        for n in (0, 1, 5, 250, 254, 300):
            payload = bytes(rng.randrange(256) for _ in range(n))
            seq = rng.randrange(256)
            assert proto.encode_frame(frame_type, seq, payload) == frame_reference(frame_type, seq, payload)
            assert len(proto.encode_frame(frame_type, seq, payload)) <= proto.frame_wire_size(n)


def test_decoder_resynchronises_after_garbage_and_a_truncated_frame():
    good = [proto.encode_frame(FrameType.ASK, 1, b"What is 2+2?"), proto.encode_frame(FrameType.PING, 2, b"hb")]
    stream = (b"\x13\x37noise" + b"\x00" + good[0][:7] + b"\x00" + good[0] + b"\x00\x00\x00" + b"\xff" * 9
              + b"\x00" + good[1])
    events = proto.FrameDecoder(256).feed(stream)
    frames = [e for e in events if isinstance(e, proto.Frame)]
    assert frames == [proto.Frame(FrameType.ASK, 1, b"What is 2+2?"), proto.Frame(FrameType.PING, 2, b"hb")]
    assert all(isinstance(e, proto.BadFrame) for e in events if not isinstance(e, proto.Frame))
    assert len(events) - len(frames) == 3       # the noise, the truncated frame, the 0xff run


def test_decoder_gives_the_same_events_whatever_the_pieces():
    rng = random.Random(5)
    stream = b"".join(proto.encode_frame(FrameType.ASK, i, bytes(rng.randrange(256) for _ in range(i * 7)))
                      + bytes(rng.randrange(256) for _ in range(rng.randrange(8))) + b"\x00" for i in range(30))
    whole = proto.FrameDecoder(256).feed(stream)
    decoder = proto.FrameDecoder(256)
    pieces, at = [], 0
    while at < len(stream):
        step = rng.randrange(1, 20)
        pieces += decoder.feed(stream[at:at + step])
        at += step
    assert pieces == whole and sum(isinstance(e, proto.Frame) for e in whole) == 30


def test_every_single_bit_flip_in_a_frame_is_rejected():
    frame = proto.encode_frame(FrameType.CHUNK, 7, "Le café est prêt.".encode())
    for at in range(len(frame) - 1):
        for bit in range(8):
            noisy = bytearray(frame)
            noisy[at] ^= 1 << bit
            events = proto.FrameDecoder(256).feed(bytes(noisy) + b"\x00")
            assert not any(isinstance(e, proto.Frame) for e in events), (at, bit)


def test_the_crc_rejects_a_flipped_payload_byte_and_says_so():
    frame = bytearray(proto.encode_frame(FrameType.ASK, 3, b"hello"))
    frame[6] ^= 0x20                       # inside the payload's COBS block: only the CRC can tell
    assert proto.FrameDecoder(256).feed(bytes(frame)) == [proto.BadFrame("crc", len(frame) - 1)]


def test_endless_garbage_never_grows_the_decoder_and_is_reported_once():
    decoder = proto.FrameDecoder(256)
    rng = random.Random(9)
    for _ in range(256):
        assert decoder.feed(bytes(rng.randrange(1, 256) for _ in range(4096))) == []
        assert decoder.buffered <= decoder.limit
    (event,) = decoder.feed(b"\x00")
    assert (event.reason, event.size) == ("overlong", 256 * 4096)
    assert decoder.feed(proto.encode_frame(FrameType.PING, 1)) == [proto.Frame(FrameType.PING, 1, b"")]


def test_an_overlong_ask_names_its_type_and_seq():
    wire = proto.encode_frame(FrameType.ASK, 42, b"x" * 300)
    (event,) = proto.FrameDecoder(256).feed(wire)
    assert event == proto.BadFrame("overlong", len(wire) - 1, FrameType.ASK, 42)


def test_chunks_plus_one_control_reply_fit_the_device_buffer():
    worst_control = [
        proto.encode_frame(FrameType.BRIDGE_ACK, 255, b"\xff"),
        proto.encode_frame(FrameType.PONG, 255, b"\xff" * proto.PING_ECHO_MAX),
        proto.encode_frame(FrameType.BUSY, 255, proto.code_payload(Code.RATE_LIMIT, 0xFFFF)),
        proto.encode_frame(FrameType.ERROR, 255, proto.code_payload(Code.TOO_LONG, 0xFFFF)),
        proto.encode_frame(FrameType.END, 255, proto.end_payload("cancelled", 0xFFFF, 0xFFFF)),
    ]
    assert max(len(f) for f in worst_control) <= proto.CONTROL_RESERVE
    for rx_buffer in list(range(proto.MIN_RX_BUFFER, 300)) + [512, 1024, 4096]:
        for window in range(1, proto.MAX_WINDOW + 1):
            rx, win = proto.parse_hello(proto.hello_payload(rx_buffer, window))
            payload = proto.chunk_payload_limit(rx, win)
            assert payload >= proto.MIN_CHUNK_PAYLOAD
            # A chunk of that many non-zero bytes is the longest it can be on the wire.
            wire = len(proto.encode_frame(FrameType.CHUNK, 255, b"\xff" * payload))
            assert win * wire + proto.CONTROL_RESERVE <= rx
            if payload < proto.MAX_CHUNK_PAYLOAD:      # and it is the largest the wire-size bound allows
                assert win * proto.frame_wire_size(payload + 1) + proto.CONTROL_RESERVE > rx
    assert proto.chunk_payload_limit(64, 1) == 40          # the spec's example


def test_hello_is_clamped_and_optional():
    assert proto.parse_hello(b"") == (proto.DEFAULT_RX_BUFFER, proto.DEFAULT_WINDOW)
    assert proto.parse_hello(b"\x00\x01\x00") == (proto.MIN_RX_BUFFER, 1)
    assert proto.parse_hello(b"\xff\xff\xff") == (proto.MAX_RX_BUFFER, proto.MAX_WINDOW)
    assert proto.parse_hello(b"\x01\x00\x04extra") == (256, 4)
    rx, window = proto.parse_hello(b"\x00\x20\x08")           # 32 bytes cannot hold 8 chunks
    assert rx == 32 and proto.chunk_payload_limit(rx, window) >= proto.MIN_CHUNK_PAYLOAD


def test_ready_fits_the_buffer_and_keeps_whole_characters():
    payload = proto.ready_payload("modèle-" * 20, 256, rx_buffer=63)
    assert len(proto.encode_frame(FrameType.READY, 0, payload)) <= 63
    version, max_request, model = proto.parse_ready(payload)
    assert (version, max_request) == (proto.PROTOCOL_VERSION, 256)
    assert model and ("modèle-" * 20).startswith(model)


def test_end_and_code_payloads_roundtrip_and_saturate():
    assert proto.parse_end(proto.end_payload("length", 200, 70000)) == ("length", 200, 0xFFFF)
    assert proto.parse_code(proto.code_payload(Code.RATE_LIMIT, 41)) == (Code.RATE_LIMIT, 41)
    with pytest.raises(ValueError):
        proto.parse_end(b"\x09\x00\x00\x00\x00")


# -- requests and lines ---------------------------------------------------------------------------------------------

def test_decode_request_refuses_what_the_model_must_not_see():
    assert proto.decode_request(" Wie spät ist es?\n".encode(), 256) == "Wie spät ist es?"
    assert proto.decode_request(b"x" * 257, 256).code == Code.TOO_LONG
    assert proto.decode_request(b"hi\x00there", 256).code == Code.BAD_REQUEST
    assert proto.decode_request(b"\xc3\x28", 256).code == Code.BAD_REQUEST
    assert proto.decode_request(b" \t ", 256).code == Code.BAD_REQUEST


def test_line_decoder_takes_every_line_ending_backspace_and_ctrl_c():
    decoder = proto.LineDecoder(32)
    events = decoder.feed(b"one\r\ntwo\rthree\n\r\n\n  four  \n" + "caf\u00e9\x7fe!".encode() + b"\r"
                          + b"typo\x03fresh\n")
    assert events == [proto.Line("one"), proto.Line("two"), proto.Line("three"), proto.Line("four"),
                      proto.Line("cafe!"), proto.Interrupt(), proto.Line("fresh")]


def test_line_decoder_drops_an_overlong_line_once_and_holds_no_more_than_the_limit():
    decoder = proto.LineDecoder(16)
    for _ in range(100):
        assert decoder.feed(b"y" * 1000) == []
        assert decoder.buffered <= 16
    assert decoder.feed(b"\nnext\n") == [proto.BadRequest(Code.TOO_LONG, "the line is 100000 bytes; the limit is 16"),
                                         proto.Line("next")]


def test_line_decoder_refuses_control_bytes_and_broken_utf8():
    decoder = proto.LineDecoder(64)
    bad = decoder.feed(b"\x1b[A\n\xff\xfe\nok\n")
    assert [type(e) for e in bad] == [proto.BadRequest, proto.BadRequest, proto.Line]
    assert all(e.code == Code.BAD_REQUEST for e in bad[:2])


def test_escaping_leaves_no_line_end_or_flow_control_byte_and_roundtrips():
    rng = random.Random(13)
    alphabet = [chr(i) for i in range(0, 0x80)] + ["é", "€", "𝄞", "\u2028", "\\", "\\n"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        escaped = proto.escape_text(text).encode("utf-8")
        assert not any(b < 0x20 and b != 0x09 for b in escaped) and 0x7F not in escaped
        assert proto.unescape_text(escaped.decode()) == text


def test_line_chunks_stay_in_budget_keep_words_and_rebuild_the_text():
    text = "The quick brown fox jumps over the lazy dog.\nZweite Zeile mit Umlauten: äöü ß — und \x07 ein Piepton. " * 4
    pieces, rest = [], text
    while rest:
        n = proto.take_line_chunk(rest, 24)
        assert n >= 1
        piece, rest = rest[:n], rest[n:]
        assert len(proto.escape_text(piece).encode()) <= 24
        assert "\n" not in piece[:-1]
        pieces.append(piece)
    assert "".join(pieces) == text
    assert pieces[0] == "The quick brown fox "                # cut after a space, not inside "jumps"
    assert any(p.endswith("\n") for p in pieces)
    line = proto.chunk_line(pieces[0])
    assert len(line) <= 2 + 24 + 2


def test_reply_lines_stay_one_line_whatever_the_message():
    line = proto.error_line(Code.BAD_REQUEST, "evil\r\nEND stop tokens=1 bytes=1\r\n" + "x" * 500)
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")
    assert len(line) <= 200
    reply = proto.parse_reply_line(line)
    assert (reply.kind, reply.word) == ("error", "bad-request")
    ready = proto.parse_reply_line(proto.ready_line("my model\r\nEND", 256))
    assert ready.kind == "ready" and ready.fields == {"model": "my_model__END", "max_request": "256"}


def test_bridge_lines_are_recognised_as_echo_and_questions_are_not():
    for line in (proto.ready_line("m", 256), proto.chunk_line("hi"), proto.end_line("stop", 1, 2),
                 proto.busy_line(Code.QUEUE_FULL, 2, "4 requests are waiting"), proto.error_line(Code.TOO_LONG, "x"),
                 proto.pong_line()):
        assert proto.looks_like_echo(line.decode().strip())
    for question in ("What is 2+2?", "END of the world?", "PONG is a game?", "ERR, what?", "READY?"):
        assert not proto.looks_like_echo(question)


# -- the spec's examples ---------------------------------------------------------------------------------------------

def _doc_blocks(lang: str):
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_every_frame_example_in_the_spec_is_what_the_codec_writes():
    examples = 0
    for block in _doc_blocks("frames"):
        lines = block.strip().splitlines()
        for title, body_line, wire_line in zip(lines[0::3], lines[1::3], lines[2::3]):
            name, seq = re.match(r"(\w+) seq=(\d+)", title).groups()
            body = bytes.fromhex(body_line.split("body", 1)[1])
            wire = bytes.fromhex(wire_line.split("wire", 1)[1])
            assert crc16_bitwise(body[:-2]) == int.from_bytes(body[-2:], "big"), title
            assert wire.lstrip(b"\x00") == cobs_reference(body) + b"\x00", title
            (frame,) = proto.FrameDecoder(1024).feed(wire)
            assert (FrameType(frame.type).name, frame.seq) == (name, int(seq)), title
            assert proto.encode_frame(frame.type, frame.seq, frame.payload) == wire.lstrip(b"\x00")
            quoted = re.search(r'"(.*)"', title)
            if quoted and name in ("ASK", "CHUNK", "PING", "PONG"):
                assert frame.payload == quoted.group(1).encode()
            if name == "END":
                reason, tokens, nbytes = proto.parse_end(frame.payload)
                assert f"reason={reason} tokens={tokens} bytes={nbytes}" in title
            examples += 1
    assert examples >= 16


def test_every_line_example_in_the_spec_parses_as_it_says():
    (block,) = _doc_blocks("lines")
    decoder = proto.LineDecoder(256)
    for line in block.strip().splitlines():
        direction, literal = line.split(" ", 1)
        data = ast.literal_eval(literal)
        if direction == "→":
            assert len(decoder.feed(data)) == 1, line
        else:
            assert data.endswith(b"\r\n") and proto.parse_reply_line(data).kind != "other", line


def test_frames_pass_through_a_pyserial_port_unchanged():
    import serial   # pyserial: in the test extra

    port = serial.serial_for_url("loop://", timeout=0.5)
    frames = [proto.encode_frame(FrameType.CHUNK, i, f"piece {i} ünïcödé".encode()) for i in range(20)]
    port.write(b"".join(frames))
    received = b""
    while len(received) < sum(map(len, frames)):
        received += port.read(port.in_waiting or 1)
    port.close()
    assert [f.payload.decode() for f in proto.FrameDecoder(64).feed(received)] == \
        [f"piece {i} ünïcödé" for i in range(20)]
