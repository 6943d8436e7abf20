"""The serial bridge's wire protocol, the bytes only: COBS, CRC-16, frames and lines (docs/serial-protocol.md).

Pure functions and two streaming decoders: no I/O, no threads, nothing else of
edgesdk imported, so every byte a device can send is parsed here and can be
fuzzed without a port. The bridge (serial.py) decides what to do with what
the decoders report.

Framed mode. On the wire a frame is COBS(body) followed by one 0x00; a sender
may also put a 0x00 before it, which makes the receiver drop any half frame it
holds (that is how a link resynchronises after noise). The body:

    offset  size  field
    0       1     type      FrameType; the high bit is set in frames the bridge sends
    1       1     seq
    2       2     length    of the payload, big-endian
    4       n     payload
    4+n     2     CRC-16/CCITT-FALSE of bytes 0 .. 3+n, big-endian

CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, not reflected, no
final xor; CRC(b"123456789") = 0x29B1 (the stdlib's binascii.crc_hqx(data, 0xFFFF)).

Line mode. UTF-8 text: the device sends one request per line (LineDecoder);
the bridge answers with lines that each start with a keyword (`READY`, `END`,
`BUSY`, `ERR`, `PONG`) or with "> " for a piece of the answer, escaped so
that no answer text can end a line or look like a keyword (*_line functions).
"""
from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Dict, List, Optional, Tuple, Union

PROTOCOL_VERSION = 1
PROTOCOL_NAME = f"edgesdk-serial/{PROTOCOL_VERSION}"

# -- framed mode: sizes -------------------------------------------------------------------------------------------

DELIMITER = b"\x00"
HEADER_BYTES = 4                   # type, seq, length (u16)
CRC_BYTES = 2
BODY_OVERHEAD = HEADER_BYTES + CRC_BYTES
MAX_LENGTH = 0xFFFF                # what the length field can say

# What a device that says nothing else is assumed to hold (HELLO can say more).
DEFAULT_RX_BUFFER = 64             # bytes of receive buffer (an Arduino Uno's)
DEFAULT_WINDOW = 1                 # answer frames in flight before the device acknowledges: stop-and-wait
MIN_RX_BUFFER = 32
MAX_RX_BUFFER = 4096
MAX_WINDOW = 8
# The bridge keeps this many bytes of the device's receive buffer free for one control reply (ACK, PONG,
# BUSY, ERROR: each at most CONTROL_FRAME_MAX on the wire) next to the answer frames in flight.
CONTROL_RESERVE = 16
PING_ECHO_MAX = 8                  # PONG repeats at most this much of PING's payload
MIN_CHUNK_PAYLOAD = 4              # one UTF-8 character of any length
MAX_CHUNK_PAYLOAD = 1024


class FrameType(IntEnum):
    """The type byte. Device to bridge: 0x01-0x05; bridge to device: the high bit set, so a port that echoes
    what the bridge sends (TX wired to RX, a REPL on the UART) is never taken for a device."""
    HELLO = 0x01        # device (re)started: payload [rx_buffer u16, window u8], both optional; reply READY
    PING = 0x02         # reply PONG with the same seq and payload (at most PING_ECHO_MAX bytes of it)
    ASK = 0x03          # payload: a UTF-8 question, or a /command; reply BRIDGE_ACK, BUSY or ERROR
    CANCEL = 0x04       # stop the answer in flight; reply BRIDGE_ACK
    ACK = 0x05          # seq = the last answer frame (CHUNK/END) taken in order
    READY = 0x81        # payload: version u8, max_request u16, model name (UTF-8, the rest)
    PONG = 0x82
    BRIDGE_ACK = 0x85   # seq = the device frame acknowledged; for an ASK, payload [first u8]: the seq of
                        # the answer's first frame
    CHUNK = 0x86        # seq = answer sequence; payload: answer text (UTF-8, whole characters)
    END = 0x87          # seq = answer sequence; payload: reason u8, tokens u16, bytes u16
    BUSY = 0x88         # seq = the ASK's; payload: code u8, retry_s u16
    ERROR = 0x89        # seq = the frame's (0 when it could not be read); payload: code u8, value u16


FROM_BRIDGE = 0x80
END_REASONS = ("stop", "length", "cancelled", "error")     # END's reason byte indexes this


class Code(IntEnum):
    """Why a request was refused: ERROR codes (1-15) and BUSY codes (16-31); in line mode the word."""
    TOO_LONG = 1        # value: the limit in bytes
    BAD_REQUEST = 2     # not UTF-8, control bytes, empty, an unknown /command
    QUEUE_FULL = 16     # every slot of the bridge's queue is taken
    RATE_LIMIT = 17     # this port asked too often; retry_s says when the next one is taken
    IN_PROGRESS = 18    # this port's previous request is not finished (CANCEL it, or wait for END)

    @property
    def word(self) -> str:
        return self.name.lower().replace("_", "-")

    @property
    def is_busy(self) -> bool:
        return self >= 16


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor)."""
    return binascii.crc_hqx(data, 0xFFFF)


# -- COBS --------------------------------------------------------------------------------------------------------

def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: data without any 0x00 (the delimiter is not added)."""
    out = bytearray()
    parts = bytes(data).split(b"\x00")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        chopped = False
        while len(part) >= 254:
            out.append(0xFF)
            out += part[:254]
            part = part[254:]
            chopped = True
        if last and chopped and not part:
            break       # the canonical encoding ends on a full block
        out.append(len(part) + 1)
        out += part
    return bytes(out)


def cobs_decode(data: bytes, partial: bool = False) -> bytes:
    """The bytes cobs_encode was given; ValueError when data is not a COBS encoding (a 0x00, or a block that
    runs past the end). partial: decode what there is of a truncated encoding instead of failing."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ValueError(f"a 0x00 byte at {i}")
        end = i + code
        if end > n:
            if partial:
                out += data[i + 1:n]
                break
            raise ValueError(f"the block at {i} needs {code - 1} bytes, {n - i - 1} are left")
        block = data[i + 1:end]
        if 0 in block:
            raise ValueError(f"a 0x00 byte inside the block at {i}")
        out += block
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def cobs_size(n: int) -> int:
    """The most bytes cobs_encode makes of n bytes."""
    return n + max(1, -(-n // 254))


# -- frames ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""


@dataclass(frozen=True)
class BadFrame:
    """Bytes between two delimiters that are not a good frame. reason: "cobs", "short", "length", "crc" or
    "overlong"; size: the encoded bytes. For "overlong" frames, the type and seq their first bytes claim
    (unchecked, the CRC is never seen unless the frame was whole)."""
    reason: str
    size: int
    type: Optional[int] = None
    seq: Optional[int] = None


def frame_wire_size(payload_bytes: int) -> int:
    """The most bytes a frame with this much payload takes on the wire, its trailing delimiter included."""
    return cobs_size(BODY_OVERHEAD + payload_bytes) + 1


def encode_frame(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame as it goes on the wire: COBS(body) + 0x00."""
    if not 0 <= frame_type <= 0xFF or not 0 <= seq <= 0xFF:
        raise ValueError(f"type {frame_type} and seq {seq} must be bytes")
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"a payload of {len(payload)} bytes does not fit the length field")
    body = bytes((frame_type, seq)) + len(payload).to_bytes(2, "big") + bytes(payload)
    body += crc16(body).to_bytes(2, "big")
    return cobs_encode(body) + DELIMITER


def decode_body(body: bytes) -> Frame:
    """A frame from its COBS-decoded body; ValueError (reason "short", "length" or "crc") when it is not one."""
    if len(body) < BODY_OVERHEAD:
        raise ValueError("short")
    if int.from_bytes(body[2:4], "big") != len(body) - BODY_OVERHEAD:
        raise ValueError("length")
    if crc16(body[:-CRC_BYTES]) != int.from_bytes(body[-CRC_BYTES:], "big"):
        raise ValueError("crc")
    return Frame(body[0], body[1], bytes(body[HEADER_BYTES:-CRC_BYTES]))


class FrameDecoder:
    """Bytes in any pieces -> Frame and BadFrame events, in order; never raises on input.

    Whatever lies between two 0x00 bytes is one frame candidate; empty ones
    (0x00 0x00) are skipped. A candidate longer than a frame with max_payload
    can be is not kept: its first bytes are, to name its type and seq, and
    the rest is counted until the next delimiter. So the decoder never holds
    more than one largest frame, whatever it is fed.
    """

    def __init__(self, max_payload: int):
        if max_payload < 0 or max_payload > MAX_LENGTH:
            raise ValueError(f"max_payload {max_payload} is not 0..{MAX_LENGTH}")
        self.max_payload = max_payload
        self.limit = frame_wire_size(max_payload) - 1     # encoded bytes kept, delimiter excluded
        self._buf = bytearray()
        self._dropped = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> List[Union[Frame, BadFrame]]:
        data = bytes(data)
        events: List[Union[Frame, BadFrame]] = []
        start = 0
        while True:
            end = data.find(DELIMITER, start)
            self._take(data, start, len(data) if end < 0 else end)
            if end < 0:
                return events
            event = self._close()
            if event is not None:
                events.append(event)
            start = end + 1

    def _take(self, data: bytes, start: int, stop: int) -> None:
        n = stop - start
        room = self.limit - len(self._buf)
        if self._dropped or n > room:
            keep = max(0, min(n, room))
            self._buf += data[start:start + keep]
            self._dropped += n - keep
        else:
            self._buf += data[start:stop]

    def _close(self) -> Optional[Union[Frame, BadFrame]]:
        raw, dropped = bytes(self._buf), self._dropped
        self._buf.clear()
        self._dropped = 0
        size = len(raw) + dropped
        if size == 0:
            return None
        if dropped:
            try:
                head = cobs_decode(raw, partial=True)
            except ValueError:
                head = b""
            return BadFrame("overlong", size, head[0] if head else None, head[1] if len(head) > 1 else None)
        try:
            frame = decode_body(cobs_decode(raw))
        except ValueError as exc:
            reason = str(exc)
            return BadFrame(reason if reason in ("short", "length", "crc") else "cobs", size)
        if len(frame.payload) > self.max_payload:
            return BadFrame("overlong", size, frame.type, frame.seq)
        return frame


def next_seq(seq: int) -> int:
    return (seq + 1) & 0xFF


def chunk_payload_limit(rx_buffer: int, window: int) -> int:
    """The largest CHUNK payload such that `window` chunk frames plus CONTROL_RESERVE fit rx_buffer bytes."""
    per_frame = (rx_buffer - CONTROL_RESERVE) // window
    payload = min(MAX_CHUNK_PAYLOAD, per_frame)
    while payload > 0 and frame_wire_size(payload) > per_frame:
        payload -= 1
    return payload


def hello_payload(rx_buffer: int = DEFAULT_RX_BUFFER, window: int = DEFAULT_WINDOW) -> bytes:
    return rx_buffer.to_bytes(2, "big") + bytes((window,))


def parse_hello(payload: bytes) -> Tuple[int, int]:
    """(rx_buffer, window) a HELLO asks for, clamped to what the protocol allows and reduced until a chunk of
    MIN_CHUNK_PAYLOAD fits; left out: the defaults. Extra bytes are ignored (later versions may add fields)."""
    rx_buffer = int.from_bytes(payload[0:2], "big") if len(payload) >= 2 else DEFAULT_RX_BUFFER
    window = payload[2] if len(payload) >= 3 else DEFAULT_WINDOW
    rx_buffer = min(max(rx_buffer, MIN_RX_BUFFER), MAX_RX_BUFFER)
    window = min(max(window, 1), MAX_WINDOW)
    while window > 1 and chunk_payload_limit(rx_buffer, window) < MIN_CHUNK_PAYLOAD:
        window -= 1
    return rx_buffer, window


def ready_payload(model: str, max_request: int, rx_buffer: int = DEFAULT_RX_BUFFER) -> bytes:
    """version, max_request, and as much of the model's name as lets the frame fit rx_buffer."""
    head = bytes((PROTOCOL_VERSION,)) + min(max_request, MAX_LENGTH).to_bytes(2, "big")
    room = rx_buffer - frame_wire_size(len(head))
    return head + _utf8_prefix(model, max(room, 0))


def parse_ready(payload: bytes) -> Tuple[int, int, str]:
    """(version, max_request, model); ValueError when shorter than its fixed part."""
    if len(payload) < 3:
        raise ValueError(f"a READY payload has at least 3 bytes, got {len(payload)}")
    return payload[0], int.from_bytes(payload[1:3], "big"), payload[3:].decode("utf-8", "replace")


def end_payload(reason: str, tokens: int, nbytes: int) -> bytes:
    return bytes((END_REASONS.index(reason),)) + _u16(tokens) + _u16(nbytes)


def parse_end(payload: bytes) -> Tuple[str, int, int]:
    """(reason, tokens, bytes); ValueError when malformed."""
    if len(payload) < 5 or payload[0] >= len(END_REASONS):
        raise ValueError(f"not an END payload: {payload.hex()}")
    return END_REASONS[payload[0]], int.from_bytes(payload[1:3], "big"), int.from_bytes(payload[3:5], "big")


def code_payload(code: Code, value: int = 0) -> bytes:
    """BUSY's and ERROR's payload: the code and a number (retry_s for BUSY, the limit for TOO_LONG)."""
    return bytes((int(code),)) + _u16(value)


def parse_code(payload: bytes) -> Tuple[int, int]:
    if len(payload) < 3:
        raise ValueError(f"not a BUSY/ERROR payload: {payload.hex()}")
    return payload[0], int.from_bytes(payload[1:3], "big")


def _u16(value: int) -> bytes:
    return min(max(int(value), 0), 0xFFFF).to_bytes(2, "big")


# -- text: bounds shared by both modes ------------------------------------------------------------------------------

def utf8_prefix_chars(text: str, max_bytes: int) -> int:
    """How many characters of text fit max_bytes of UTF-8 (never half a character)."""
    if len(text) * 4 <= max_bytes:
        return len(text)
    used = 0
    for i, ch in enumerate(text):
        used += _utf8_len(ch)
        if used > max_bytes:
            return i
    return len(text)


def _utf8_prefix(text: str, max_bytes: int) -> bytes:
    return text[:utf8_prefix_chars(text, max_bytes)].encode("utf-8")


def _utf8_len(ch: str) -> int:
    o = ord(ch)
    return 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4


@dataclass(frozen=True)
class BadRequest:
    """A request that is refused before it reaches the model: the code and a message for people."""
    code: Code
    message: str


def decode_request(raw: bytes, max_bytes: int) -> Union[str, BadRequest]:
    """A request's text (stripped), or why it is refused: longer than max_bytes, control bytes other than
    tab/CR/LF, not UTF-8, empty."""
    if len(raw) > max_bytes:
        return BadRequest(Code.TOO_LONG, f"the request is {len(raw)} bytes; the limit is {max_bytes}")
    for i, byte in enumerate(raw):
        if (byte < 0x20 and byte not in (0x09, 0x0A, 0x0D)) or byte == 0x7F:
            return BadRequest(Code.BAD_REQUEST, f"control byte 0x{byte:02x} at byte {i}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRequest(Code.BAD_REQUEST, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at {exc.start})")
    text = text.strip()
    if not text:
        return BadRequest(Code.BAD_REQUEST, "the request is empty")
    return text


# -- line mode: what the device sends -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    """One request line, decoded and stripped (never empty)."""
    text: str


@dataclass(frozen=True)
class Interrupt:
    """Ctrl-C (0x03): stop the answer in flight."""


CTRL_C = 0x03
_BACKSPACES = (0x08, 0x7F)
_LINE_ENDS = (0x0A, 0x0D)


class LineDecoder:
    """Bytes from a device in line mode -> Line, BadRequest and Interrupt events; never raises on input.

    A line ends at CR or LF (CR LF is one end: empty lines are skipped), and
    is stripped of surrounding whitespace. Backspace and DEL remove the
    character before them, as a person at a terminal expects. Ctrl-C drops
    the line being typed and reports an Interrupt. A line longer than
    max_bytes is not kept: it is counted to its end and reported once as too
    long. Memory held: at most max_bytes.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._dropped = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._dropped = 0

    def feed(self, data: bytes) -> List[Union[Line, BadRequest, Interrupt]]:
        events: List[Union[Line, BadRequest, Interrupt]] = []
        for byte in bytes(data):
            if byte in _LINE_ENDS:
                event = self._end()
                if event is not None:
                    events.append(event)
            elif byte in _BACKSPACES:
                if not self._dropped:
                    self._backspace()
            elif byte == CTRL_C:
                self.reset()
                events.append(Interrupt())
            elif self._dropped or len(self._buf) >= self.max_bytes:
                self._dropped += 1
            else:
                self._buf.append(byte)
        return events

    def _backspace(self) -> None:
        while self._buf and 0x80 <= self._buf[-1] < 0xC0:     # continuation bytes of the last character
            self._buf.pop()
        if self._buf:
            self._buf.pop()

    def _end(self) -> Optional[Union[Line, BadRequest]]:
        raw, dropped = bytes(self._buf), self._dropped
        self.reset()
        if dropped:
            return BadRequest(Code.TOO_LONG, f"the line is {len(raw) + dropped} bytes; the limit is {self.max_bytes}")
        if not raw.strip():
            return None
        text = decode_request(raw, self.max_bytes)
        return text if isinstance(text, BadRequest) else Line(text)


# -- line mode: what the bridge sends -----------------------------------------------------------------------------

LINE_END = b"\r\n"                 # CR LF: a raw terminal shows lines, sketches trim the CR
CHUNK_PREFIX = b"> "
MAX_MESSAGE_BYTES = 160            # the human-readable tail of END/BUSY/ERR lines
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def escape_text(text: str) -> str:
    """Answer text as it goes after "> ": backslash, LF and CR as \\\\, \\n, \\r; other control characters
    but tab as \\xHH. Nothing left can end the line or stop a terminal (XON/XOFF)."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    o = ord(ch)
    if (o < 0x20 and ch != "\t") or o == 0x7F:
        return f"\\x{o:02x}"
    return ch


def unescape_text(text: str) -> str:
    """escape_text's inverse; ValueError on an escape it never writes."""
    out: List[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1:i + 2]
        if nxt in _UNESCAPES:
            out.append(_UNESCAPES[nxt])
            i += 2
        elif nxt == "x" and len(text) >= i + 4:
            out.append(chr(int(text[i + 2:i + 4], 16)))
            i += 4
        else:
            raise ValueError(f"a bad escape at {i} of {text!r}")
    return "".join(out)


def take_line_chunk(text: str, budget: int) -> int:
    """How many characters of text the next "> " line carries: at most budget bytes once escaped, ending
    after the first newline, and when the text goes on past the budget, after the last space in the second
    half of the line (so words stay whole on a display). budget must hold one escaped character (4 bytes)."""
    used = 0
    after_space = 0
    for i, ch in enumerate(text):
        cost = len(_escape_char(ch).encode("utf-8"))
        if used + cost > budget:
            return after_space if after_space > i // 2 else max(i, 1)
        used += cost
        if ch == "\n":
            return i + 1
        if ch == " ":
            after_space = i + 1
    return len(text)


def _word(text: str, limit: int = 64) -> str:
    """text as one word of a reply line: no spaces or control characters, at most limit characters."""
    return "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in text[:limit]) or "-"


def _message(text: str) -> str:
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return flat[:utf8_prefix_chars(flat, MAX_MESSAGE_BYTES)]


def _line(*words: str) -> bytes:
    return " ".join(w for w in words if w).encode("utf-8") + LINE_END


def ready_line(model: str, max_request: int) -> bytes:
    return _line("READY", PROTOCOL_NAME, f"model={_word(model)}", f"max_request={max_request}")


def chunk_line(text: str) -> bytes:
    return CHUNK_PREFIX + escape_text(text).encode("utf-8") + LINE_END


def end_line(reason: str, tokens: int, nbytes: int, message: str = "") -> bytes:
    if reason not in END_REASONS:
        raise ValueError(f"{reason!r} is not one of {END_REASONS}")
    return _line("END", reason, f"tokens={tokens}", f"bytes={nbytes}", _message(message))


def busy_line(code: Code, retry_s: int, message: str = "") -> bytes:
    return _line("BUSY", code.word, f"retry_s={retry_s}", _message(message))


def error_line(code: Code, message: str = "") -> bytes:
    return _line("ERR", code.word, _message(message))


def pong_line() -> bytes:
    return _line("PONG")


def looks_like_echo(text: str) -> bool:
    """Whether a request line is one of the bridge's own reply lines coming back: a port that echoes (TX wired
    to RX, a REPL on the UART) must not have the bridge answer itself."""
    reply = parse_reply_line(text.encode("utf-8"))
    if reply.kind == "ready":
        return reply.word == PROTOCOL_NAME
    if reply.kind == "end":
        return reply.word in END_REASONS and "tokens" in reply.fields
    if reply.kind == "busy":
        return "retry_s" in reply.fields
    if reply.kind == "error":
        return reply.word in {c.word for c in Code}
    return reply.kind == "chunk" or text == "PONG"


@dataclass(frozen=True)
class Reply:
    """A line from the bridge as a device reads it (parse_reply_line): kind is "ready", "chunk", "end", "busy",
    "error", "pong" or "other"; for a chunk, text is the answer piece; for end, word is the reason, for busy
    and error the code's word; fields holds the key=value words; message the rest."""
    kind: str
    text: str = ""
    word: str = ""
    fields: Dict[str, str] = field(default_factory=dict)
    message: str = ""


_REPLY_KINDS = {"READY": "ready", "END": "end", "BUSY": "busy", "ERR": "error", "PONG": "pong"}


def parse_reply_line(line: bytes) -> Reply:
    """One line the bridge sent (CR/LF optional): what a device does with it. Never raises."""
    text = bytes(line).rstrip(b"\r\n").decode("utf-8", "replace")
    if text.startswith(CHUNK_PREFIX.decode()):
        try:
            return Reply("chunk", text=unescape_text(text[len(CHUNK_PREFIX):]))
        except ValueError:
            return Reply("other", text=text)
    words = text.split(" ")
    kind = _REPLY_KINDS.get(words[0])
    if kind is None:
        return Reply("other", text=text)
    rest = words[1:]
    word = ""
    if kind in ("ready", "end", "busy", "error") and rest:
        word, rest = rest[0], rest[1:]
    fields: Dict[str, str] = {}
    while rest and "=" in rest[0]:
        key, _, value = rest.pop(0).partition("=")
        fields[key] = value
    return Reply(kind, word=word, fields=fields, message=" ".join(rest))


__all__ = [
    "PROTOCOL_VERSION", "PROTOCOL_NAME", "FrameType", "Code", "END_REASONS", "Frame", "BadFrame", "FrameDecoder",
    "LineDecoder", "Line", "Interrupt", "BadRequest", "Reply", "crc16", "cobs_encode", "cobs_decode",
    "cobs_size", "encode_frame", "decode_body", "frame_wire_size", "chunk_payload_limit", "hello_payload", "parse_hello",
    "ready_payload", "parse_ready", "end_payload", "parse_end", "code_payload", "parse_code", "decode_request",
    "escape_text", "unescape_text", "take_line_chunk", "utf8_prefix_chars", "ready_line", "chunk_line",
    "end_line", "busy_line", "error_line", "pong_line", "looks_like_echo", "parse_reply_line", "next_seq",
]
