"""The serial bridge: microcontrollers ask a Model over a UART and get the answer streamed back, offline.

    import edgesdk
    model = edgesdk.load("smollm2-135m-instruct")
    with edgesdk.serial_bridge(model, ["/dev/serial/by-id/usb-Espressif_USB_JTAG_serial_debug_unit-if00"]) as bridge:
        bridge.wait()          # until Ctrl-C (or bridge.close() from another thread)

The bytes are serial_protocol.py's and docs/serial-protocol.md's; what one
open port says in each mode is serial_links.py's. This module is the
transport and the policy: ports, threads, the queue, the limits (SerialLimits,
every default in one place), one ChatSession per port (saved after every
answer and loaded again when the bridge starts), and reopening a port that
went away.

Threads. Each port has one thread that opens it (and reopens it after an
unplug, by the same path: use /dev/serial/by-id/... names, which survive
replugging), reads and decodes what the device sends, and writes what the
bridge has for it without ever blocking on the device. One model worker
answers requests from a queue shared by all ports (at most max_queue waiting,
BUSY beyond that), one at a time, through the Model, whose lock serializes it
against any other user of the same Model.

A slow or stalled device never holds the model: an answer is generated into
that port's own buffer, which holds the whole answer (max_answer_bytes), so
the worker never waits for a device; the port thread hands the buffer to the
device as fast as it takes it (in framed mode, as fast as it acknowledges).
When a device takes nothing for stall_timeout_s, its answer is cancelled (the
worker stops generating within one step) and ends with reason "error". What
the bridge keeps per port is bounded: the decoder's buffer (one largest
request), the answer buffer, and max_pending_bytes of bytes the OS has not
taken yet (replies past it are dropped and counted).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..config import check_limits, check_positive_int, limit
from ..errors import EdgeSDKError, InvalidArgumentError, MissingDependencyError, SessionFileError
from . import serial_protocol as proto
from .serial_links import LINE_LOW_WATER, Answer, FramedLink, LineLink, Link
from .serial_protocol import Code

if TYPE_CHECKING:
    from ..chat import ChatSession
    from ..model import Model

log = logging.getLogger("edgesdk.serial")

MODES = ("auto", "line", "framed")
POLL_S = 0.05           # a port thread wakes at least this often for its timers (retransmit, coalesce, stall)
READ_CHUNK = 4096
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class SerialLimits:
    """What a device may ask and how the bridge treats a slow one: every limit the bridge has, with its default."""
    max_request_bytes: int = limit(256, "longest question or command a device may send, in UTF-8 bytes")
    max_answer_tokens: int = limit(200, "longest answer in tokens")
    max_answer_bytes: int = limit(1024, "longest answer in UTF-8 bytes (also the most the bridge holds per port)")
    requests_per_minute: int = limit(20, "questions one port may ask in any 60 s")
    max_queue: int = limit(4, "requests waiting for the model, all ports together (BUSY beyond it)")
    stall_timeout_s: float = limit(15.0, "a device that takes (framed: acknowledges) nothing this long loses "
                                          "its answer")
    ack_timeout_s: float = limit(1.0, "framed: resend unacknowledged frames after this, doubling each time")
    line_chunk_bytes: int = limit(60, "line mode: most answer bytes (escaped) on one '> ' line")
    line_coalesce_s: float = limit(0.2, "line mode: how long answer text may wait to fill a line")
    busy_retry_s: int = limit(2, "the retry_s a BUSY queue-full reply suggests")
    open_settle_s: float = limit(2.0, "wait this long after opening a port before READY (opening resets many "
                                       "Arduinos; their bootloader would eat it)")
    reopen_interval_s: float = limit(1.0, "how often a missing or unplugged port is tried again")
    max_pending_bytes: int = limit(4096, "bytes per port the OS has not taken yet; replies beyond are dropped")

    def __post_init__(self):
        check_limits(self)
        if self.line_chunk_bytes < 8:
            raise InvalidArgumentError(f"line_chunk_bytes must be at least 8, got {self.line_chunk_bytes}")
        if self.max_pending_bytes < 2 * LINE_LOW_WATER:
            raise InvalidArgumentError(f"max_pending_bytes must be at least {2 * LINE_LOW_WATER}, "
                                       f"got {self.max_pending_bytes}")
        if self.max_request_bytes > proto.MAX_LENGTH:
            raise InvalidArgumentError(f"max_request_bytes {self.max_request_bytes} does not fit a frame "
                                       f"(at most {proto.MAX_LENGTH})")


@dataclass(frozen=True)
class PortSpec:
    """One port: a device path (/dev/serial/by-id/..., /dev/ttyUSB0, /dev/ttyAMA0) or a pyserial URL
    (socket://host:port, rfc2217://...), its speed, the protocol mode, and hardware/software flow control."""
    path: str
    baud: int = 115200
    mode: str = "auto"        # "line", "framed", or "auto": line until a valid frame arrives
    rtscts: bool = False      # RTS/CTS, when the wiring has the two extra lines
    xonxoff: bool = False     # XON/XOFF, line mode only (frames may contain 0x11 and 0x13)

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise InvalidArgumentError(f"a port is a device path or a pyserial URL, got {self.path!r}")
        check_positive_int("baud", self.baud)
        if self.mode not in MODES:
            raise InvalidArgumentError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.xonxoff and self.mode != "line":
            raise InvalidArgumentError(f"{self.path}: XON/XOFF needs mode 'line' (frames may contain 0x11 and 0x13)")


@dataclass
class PortStats:
    """What happened on one port since the bridge started (bridge.stats(path) returns a copy)."""
    mode: str = ""                  # the mode now: "line" or "framed"
    connected: bool = False
    opens: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    requests: int = 0               # questions and commands accepted
    answers: int = 0                # END sent
    busy: int = 0                   # BUSY sent
    refused: int = 0                # ERR/ERROR sent
    frames_in: int = 0
    crc_errors: int = 0
    bad_frames: int = 0             # COBS, length or short
    overlong: int = 0               # lines and frames longer than max_request_bytes allows
    echoes: int = 0                 # the bridge's own lines or frames read back
    retransmits: int = 0
    stalls: int = 0
    dropped_replies: int = 0
    saves: int = 0                  # session files written
    peak_pending_bytes: int = 0
    peak_answer_bytes: int = 0


def port_key(path: str) -> str:
    """A file-name-safe name for a port, the same for the same path: its last component and a short hash."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "port"
    return f"{safe[:80]}-{hashlib.sha1(path.encode('utf-8')).hexdigest()[:8]}"


# -- the transport ----------------------------------------------------------------------------------------------

def _pyserial():
    try:
        import serial
    except ImportError:
        raise MissingDependencyError("the serial bridge needs pyserial: pip install edgesdk[serial]") from None
    return serial


class SerialIO:
    """One open port through pyserial: read() waits at most POLL_S (or until wake()), write() never blocks."""

    def __init__(self, spec: PortSpec):
        serial = _pyserial()
        try:
            self.port = serial.serial_for_url(spec.path, baudrate=spec.baud, timeout=POLL_S, rtscts=spec.rtscts,
                                              xonxoff=spec.xonxoff, exclusive=True)
        except ValueError as exc:
            raise InvalidArgumentError(f"{spec.path}: {exc}") from None
        fd = getattr(self.port, "fd", None)
        self._fd = fd if isinstance(fd, int) else None    # a tty, opened O_NONBLOCK by pyserial

    def read(self) -> bytes:
        data = self.port.read(1)
        if data:
            waiting = self.port.in_waiting
            if waiting:
                data += self.port.read(min(waiting, READ_CHUNK))
        return data

    def write(self, data: bytes) -> int:
        """Bytes the OS took (maybe 0); OSError when the port is gone."""
        if self._fd is None:
            return self.port.write(data) or 0     # URL transports (loop://, socket://) buffer themselves
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0

    def wake(self) -> None:
        try:
            self.port.cancel_read()
        except (OSError, AttributeError, TypeError):
            pass

    def close(self) -> None:
        try:
            self.port.close()
        except OSError:
            pass


Opener = Callable[[PortSpec], Any]     # PortSpec -> an object with SerialIO's methods


@dataclass
class _Job:
    port: "_Port"
    answer: Answer
    question: Optional[str] = None
    command: Optional[Tuple[str, str]] = None     # ("reset", "") or ("system", text)


# -- the model worker -----------------------------------------------------------------------------------------------

class _ModelWorker:
    """Answers the ports' requests one at a time, in order; owns the ChatSessions (one per port)."""

    def __init__(self, bridge: "SerialBridge"):
        self.bridge = bridge
        self._jobs: Deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.sessions: Dict[str, "ChatSession"] = {}
        self.thread = threading.Thread(target=self._run, name="edgesdk-serial model", daemon=True)

    def submit(self, job: _Job) -> bool:
        with self._cond:
            if self._stopping or len(self._jobs) >= self.bridge.limits.max_queue:
                return False
            self._jobs.append(job)
            self._cond.notify()
            return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._jobs:
                job.answer.abort("cancelled", "the bridge is stopping")
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            try:
                self._answer(job)
            except BaseException:       # the worker outlives any one request
                log.exception("%s: the request failed", job.port.spec.path)
                job.answer.finish("error", "internal error (see the bridge's log)")

    def _answer(self, job: _Job) -> None:
        answer = job.answer
        if answer.cancel.is_set():
            answer.finish("cancelled")
            return
        session = self.session(job.port)
        reason, message = "stop", ""
        try:
            if job.command is not None:
                answer.push(self._command(session, *job.command))
            else:
                reason = self._generate(session, job)
        except EdgeSDKError as exc:
            log.warning("%s: %s", job.port.spec.path, exc)
            reason, message = "error", str(exc)
        self._save(job.port, session)     # before END: once a device has seen END, the turn is on disk
        answer.finish(reason, message)

    def _generate(self, session: "ChatSession", job: _Job) -> str:
        answer, limits = job.answer, self.bridge.limits
        pieces = session.send(job.question, stream=True, cancel=answer.cancel)
        stats = session.last_stats
        room = limits.max_answer_bytes
        reason = None
        try:
            for piece in pieces:
                size = len(piece.encode("utf-8"))
                if size > room:
                    answer.push(piece[:proto.utf8_prefix_chars(piece, room)])
                    reason = "length"
                    break
                room -= size
                answer.tokens = stats.completion_tokens
                answer.push(piece)
        finally:
            pieces.close()
        answer.tokens = stats.completion_tokens
        job.port.stats.peak_answer_bytes = max(job.port.stats.peak_answer_bytes,
                                               limits.max_answer_bytes - room)
        reason = reason or stats.finish_reason
        log.info("%s: %d tokens, %s, first text after %.2f s, %.1f tokens/s", job.port.spec.path,
                 stats.completion_tokens, reason, stats.time_to_first_token_s, stats.tokens_per_s)
        return reason

    def _command(self, session: "ChatSession", name: str, arg: str) -> str:
        if name == "reset":
            session.reset(system=self.bridge.system or "")
            return "conversation cleared"
        session.reset(system=arg)
        return "system prompt set; conversation cleared"

    # -- sessions --------------------------------------------------------------------------------------------

    def session_path(self, port: "_Port") -> Path:
        return self.bridge.state_dir / f"{port.key}.session"

    def session(self, port: "_Port") -> "ChatSession":
        session = self.sessions.get(port.key)
        if session is None:
            session = self.sessions[port.key] = self._open_session(port)
        return session

    def _open_session(self, port: "_Port") -> "ChatSession":
        from ..chat import ChatSession

        bridge = self.bridge
        fresh = ChatSession(bridge.model, system=bridge.system, **bridge.options)
        path = self.session_path(port)
        if not path.exists():
            return fresh
        try:
            saved = ChatSession.load(path, bridge.model)
        except SessionFileError as exc:
            aside = path.with_name(path.name + ".unreadable")
            log.warning("%s: starting a new conversation: %s (moved to %s)", port.spec.path, exc, aside)
            try:
                os.replace(path, aside)
            except OSError:
                pass
            return fresh
        # The history and the device's system prompt come back; generation settings are this bridge's.
        fresh.system = saved.system
        fresh.history = saved.history
        log.info("%s: resumed a conversation of %d messages from %s", port.spec.path, len(saved.history), path)
        return fresh

    def _save(self, port: "_Port", session: "ChatSession") -> None:
        try:
            session.save(self.session_path(port))
            port.stats.saves += 1
        except SessionFileError as exc:
            log.warning("%s: the conversation is not saved: %s", port.spec.path, exc)


# -- one port -------------------------------------------------------------------------------------------------------

class _Port:
    """One port's thread: open (and reopen), read, decode, answer, write."""

    def __init__(self, bridge: "SerialBridge", spec: PortSpec):
        self.bridge = bridge
        self.spec = spec
        self.path = spec.path
        self.key = port_key(spec.path)
        self.limits = bridge.limits
        self.model_name = bridge.model_name
        self.stats = PortStats(mode="framed" if spec.mode == "framed" else "line")
        self._asked: Deque[float] = deque()      # when this port's questions were accepted, the last minute
        self._io = None
        self.link: Optional[Link] = None
        self.thread = threading.Thread(target=self._run, name=f"edgesdk-serial {spec.path}", daemon=True)

    def wake(self) -> None:
        io = self._io
        if io is not None:
            io.wake()

    def submit(self, answer: Answer, question: Optional[str], command: Optional[Tuple[str, str]],
               now: float) -> Optional[Tuple[Code, int, str]]:
        """Queue a question or a session command; None when taken, else (BUSY code, retry_s, message)."""
        limits = self.bridge.limits
        if question is not None:
            while self._asked and now - self._asked[0] >= RATE_WINDOW_S:
                self._asked.popleft()
            if len(self._asked) >= limits.requests_per_minute:
                retry_s = max(1, math.ceil(RATE_WINDOW_S - (now - self._asked[0])))
                return Code.RATE_LIMIT, retry_s, f"at most {limits.requests_per_minute} questions a minute"
        if not self.bridge.worker.submit(_Job(self, answer, question, command)):
            return Code.QUEUE_FULL, limits.busy_retry_s, f"{limits.max_queue} requests are waiting"
        if question is not None:
            self._asked.append(now)
        return None

    def switch_to_framed(self, link: LineLink, frame: proto.Frame, rest: bytes, now: float) -> None:
        link.cancel("cancelled", now, "the device switched to framed mode")
        framed = FramedLink(self, link.io, now, out=link.out)
        self.link = framed
        self.stats.mode = "framed"
        log.info("%s: framed mode", self.spec.path)
        framed.on_frame(frame, now)
        framed.receive(rest, now)

    def _new_link(self, io, now: float) -> Link:
        if self.spec.mode == "framed":
            return FramedLink(self, io, now)
        return LineLink(self, io, now, auto=self.spec.mode == "auto")

    def _run(self) -> None:
        stop = self.bridge._stop
        waiting_logged = False
        while not stop.is_set():
            try:
                io = self.bridge._opener(self.spec)
            except OSError as exc:
                if not waiting_logged:
                    log.warning("%s: waiting for the port (%s)%s", self.spec.path, exc, _permission_hint(exc))
                    waiting_logged = True
                stop.wait(self.bridge.limits.reopen_interval_s)
                continue
            except EdgeSDKError as exc:
                log.error("%s: %s; this port is not served", self.spec.path, exc)
                return
            waiting_logged = failed = False
            try:
                self._serve(io)
            except OSError as exc:
                log.warning("%s: the port went away (%s); waiting for it to come back", self.spec.path, exc)
            except Exception:       # a bug of ours must not end the port's service: log it, open it again
                log.exception("%s: unexpected error; the port is opened again", self.spec.path)
                failed = True
            finally:
                self._io = None
                if self.link is not None:
                    self.link.close()
                    self.link = None
                self.stats.connected = False
                io.close()
            if failed:
                stop.wait(self.bridge.limits.reopen_interval_s)

    def _serve(self, io) -> None:
        stop, limits = self.bridge._stop, self.bridge.limits
        self._io = io
        self.stats.opens += 1
        self.stats.connected = True
        log.info("%s: open (%s mode, %d baud)", self.spec.path, self.spec.mode, self.spec.baud)
        settle_until = time.monotonic() + limits.open_settle_s
        while time.monotonic() < settle_until and not stop.is_set():
            io.read()                 # what a resetting board prints while it boots is not a request
        now = time.monotonic()
        self.link = self._new_link(io, now)
        self.stats.mode = self.link.mode
        self.link.greet(now)
        self.link.flush(now)
        while not stop.is_set():
            data = io.read()
            now = time.monotonic()
            if data:
                self.stats.bytes_in += len(data)
                self.link.receive(data, now)
            self.link.pump(now)


def _permission_hint(exc: OSError) -> str:
    if getattr(exc, "errno", None) == 13 or "ermission denied" in str(exc):
        return ("; add this user to the port's group (sudo usermod -aG dialout $USER, then log in again)")
    return ""


# -- the bridge -----------------------------------------------------------------------------------------------------

class SerialBridge:
    """One Model served to the devices on some serial ports; start() it, close() it (or use `with`)."""

    def __init__(self, model: "Model", ports: Sequence[Union[PortSpec, str]], limits: Optional[SerialLimits] = None,
                 state_dir: Optional[Union[str, os.PathLike]] = None, system: Optional[str] = None,
                 opener: Optional[Opener] = None, **options: Any):
        limits = limits if limits is not None else SerialLimits()
        if not isinstance(limits, SerialLimits):
            raise InvalidArgumentError(f"limits must be SerialLimits, got {type(limits).__name__}")
        specs = [p if isinstance(p, PortSpec) else PortSpec(p) for p in ports]
        if not specs:
            raise InvalidArgumentError("the bridge needs at least one port")
        keys = [port_key(s.path) for s in specs]
        if len(set(keys)) != len(keys):
            raise InvalidArgumentError(f"a port is named twice: {', '.join(s.path for s in specs)}")
        if system is not None and not isinstance(system, str):
            raise InvalidArgumentError(f"system must be a string, got {type(system).__name__}")
        max_tokens = check_positive_int("max_tokens", options.pop("max_tokens", limits.max_answer_tokens))
        options["max_tokens"] = min(max_tokens, limits.max_answer_tokens)
        model.generation.with_options(**options)       # an unknown or bad option fails here, not per request
        if state_dir is None:
            from ..registry import home
            state_dir = home() / "serial"
        self.model = model
        self.model_name = os.path.basename(model.name) or model.name    # a registry name, or the file's name
        self.limits = limits
        self.system = system or None
        self.options = options
        self.state_dir = Path(state_dir)
        self._opener: Opener = opener or SerialIO
        self._stop = threading.Event()
        self._closed = threading.Event()
        self.worker = _ModelWorker(self)
        self._ports = [_Port(self, spec) for spec in specs]
        self._started = False
        self.owns_model = False

    @property
    def ports(self) -> List[PortSpec]:
        return [p.spec for p in self._ports]

    def start(self) -> "SerialBridge":
        if self._started:
            return self
        if self._opener is SerialIO:
            _pyserial()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SessionFileError(f"cannot create the session directory {self.state_dir}: {exc.strerror}") from None
        self._started = True
        self.worker.thread.start()
        for port in self._ports:
            port.thread.start()
        return self

    def _port(self, path: str) -> _Port:
        for port in self._ports:
            if port.spec.path == path:
                return port
        raise InvalidArgumentError(f"{path} is not one of this bridge's ports")

    def stats(self, path: str) -> PortStats:
        return replace(self._port(path).stats)

    def session(self, path: str) -> Optional["ChatSession"]:
        """The conversation of the device on this port, once it has asked something (or it was loaded)."""
        return self.worker.sessions.get(self._port(path).key)

    def session_path(self, path: str) -> Path:
        return self.worker.session_path(self._port(path))

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until close() (True) or timeout (False). Ctrl-C raises KeyboardInterrupt here, as usual."""
        return self._closed.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Stop serving: answers in flight are cancelled (and saved as far as they got), ports closed."""
        if self._closed.is_set():
            return
        self._stop.set()
        for port in self._ports:
            port.wake()
        deadline = time.monotonic() + timeout
        if self._started:
            for port in self._ports:
                port.thread.join(max(0.0, deadline - time.monotonic()))
            self.worker.stop()
            self.worker.thread.join(max(0.0, deadline - time.monotonic()))
        if self.owns_model:
            self.model.close()
        self._closed.set()

    def __enter__(self) -> "SerialBridge":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def serial_bridge(model: Union["Model", str, os.PathLike], ports: Iterable[Union[PortSpec, str]], *,
                  baud: int = 115200, mode: str = "auto", rtscts: bool = False, xonxoff: bool = False,
                  limits: Optional[SerialLimits] = None, state_dir: Optional[Union[str, os.PathLike]] = None,
                  system: Optional[str] = None, **options: Any) -> SerialBridge:
    """Serve a model to microcontrollers on serial ports; the bridge is started (close() it, or use `with`).

    model: a Model, or a registry name / .gguf path to load (the bridge closes
    what it loaded). ports: paths or pyserial URLs (baud, mode, rtscts and
    xonxoff apply to them), or PortSpecs for per-port settings. mode "auto"
    speaks line mode until the device sends a valid frame. state_dir holds one
    saved conversation per port (default $EDGESDK_HOME/serial). options are
    generation options (temperature, seed, ...); max_tokens is capped by
    limits.max_answer_tokens. Needs pyserial (pip install edgesdk[serial]).
    """
    specs = [p if isinstance(p, PortSpec) else PortSpec(os.fspath(p), baud=baud, mode=mode, rtscts=rtscts,
                                                         xonxoff=xonxoff) for p in ports]
    _pyserial()
    owns = False
    if isinstance(model, (str, os.PathLike)):
        from ..model import load
        model, owns = load(model), True
    try:
        bridge = SerialBridge(model, specs, limits=limits, state_dir=state_dir, system=system, **options)
        bridge.owns_model = owns
        return bridge.start()
    except BaseException:
        if owns:
            model.close()
        raise


__all__ = ["serial_bridge", "SerialBridge", "SerialLimits", "PortSpec", "PortStats", "SerialIO", "MODES", "port_key"]
