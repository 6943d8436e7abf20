"""The llamacpp backend's model split over workers, run in a child process so that a lost worker cannot kill the host.

ggml's RPC client calls abort() when a worker cannot be reached or stops
answering (GGML_ABORT / RPC_STATUS_ASSERT in ggml-rpc.cpp), during a load and
inside llama_decode alike. So every call that talks to a worker runs in a
child interpreter (`python -c`, not multiprocessing's spawn, which would run
the user's __main__ again): `probe()` asks each worker what it offers,
`SplitLlamaCpp` holds the model (a LlamaCppBackend whose layers live on the
workers' devices) and forwards each Backend call over a pipe. When the child
dies, the host asks each worker's port who is gone and raises a WorkerError
naming it; the host process and its other models are untouched. A frozen
worker (its process stopped, its machine hung) still accepts TCP connections
and never answers, and llama.cpp's client waits on it for ever: each call
therefore has a deadline of STALL_TIMEOUT_S per llama_decode it makes, past
which the child is killed and the host told so.
"""
from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import (EdgeSDKError, InvalidArgumentError, WorkerError, WorkerLostError, WorkerMemoryError,
                      WorkerUnreachableError)
from .base import Backend, BackendInfo, SeqInput, check_seq_inputs

CONNECT_TIMEOUT_S = 3.0        # a worker on a LAN answers a TCP connect in milliseconds
PROBE_TIMEOUT_S = 20.0         # the child's start (spawn, import llama_cpp) and each worker's memory report
LOAD_TIMEOUT_S = 600.0         # the weights cross the network once: ~100 MB/s on gigabit, slower on Wi-Fi
STALL_TIMEOUT_S = 120.0        # one llama_decode of n_batch tokens (or one state transfer) on the slowest
                               # board planned for; a worker silent longer is taken as frozen
LOG_TAIL_LINES = 40            # of the child's stderr (llama.cpp's log, ggml's abort) kept for messages

CHILD_CODE = "import sys; from edgesdk.backends._rpc_host import child_main; child_main(int(sys.argv[1]))"


def reachable(endpoint: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Optional[str]:
    """None when something accepts TCP connections at endpoint, else why not."""
    host, port = endpoint.split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return None
    except socket.gaierror as exc:
        return f"the name {host!r} does not resolve ({exc.strerror or exc})"
    except socket.timeout:
        return f"no answer to a TCP connect in {timeout_s:.0f} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def check_reachable(endpoints: Sequence[str]) -> None:
    for endpoint in endpoints:
        why = reachable(endpoint)
        if why is not None:
            raise WorkerUnreachableError(f"worker {endpoint} is not reachable: {why}; start it there with "
                                         f"`edgesdk worker --port {endpoint.split(':')[1]}`", endpoint)


# -- the child's side -------------------------------------------------------------------------

def child_main(fd: int) -> None:
    """The child's entry: the first message names the job (_probe_child or _model_child) and its arguments."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's to handle
    conn = Connection(fd)
    job, args = conn.recv()
    {"probe": _probe_child, "model": _model_child}[job](conn, *args)


def _probe_child(conn, endpoints: Sequence[str]) -> None:
    from .. import ggml_rpc
    try:
        ggml_rpc.libraries()
    except EdgeSDKError as exc:
        conn.send(("err", exc))
        return
    for endpoint in endpoints:
        conn.send(("asking", endpoint))
        conn.send(("ok", (endpoint,) + ggml_rpc.device_memory(endpoint)))
    conn.send(("done", None))


@dataclass(frozen=True)
class OpenRequest:
    model_path: str
    n_ctx: int
    threads: int
    kv_type: str
    n_batch: int
    endpoints: Tuple[str, ...]
    tensor_split: Tuple[float, ...]
    n_seq: int = 1


def _model_child(conn, request: OpenRequest) -> None:
    from .. import ggml_rpc
    from .llamacpp import LlamaCppBackend
    try:
        devices = []
        for endpoint in request.endpoints:
            conn.send(("asking", endpoint))
            found = ggml_rpc.add_server(endpoint)
            if len(found) != 1:
                raise WorkerUnreachableError(f"worker {endpoint} offers {len(found)} devices; an edgesdk worker "
                                             "offers one", endpoint)
            devices += found
        backend = LlamaCppBackend(request.model_path, n_ctx=request.n_ctx, threads=request.threads,
                                  kv_type=request.kv_type, n_batch=request.n_batch, n_seq=request.n_seq,
                                  devices=devices,
                                  tensor_split=request.tensor_split)
    except EdgeSDKError as exc:
        conn.send(("err", exc))
        return
    conn.send(("ok", backend.n_vocab))
    while True:
        try:
            method, args = conn.recv()
        except EOFError:      # the host closed the pipe or died: nothing to answer
            return
        if method == "close":
            backend.close()
            conn.send(("ok", None))
            return
        try:
            attribute = getattr(backend, method)
            result = attribute(*args) if callable(attribute) else attribute
        except EdgeSDKError as exc:
            conn.send(("err", exc))
        else:
            conn.send(("ok", result))


# -- the host's side --------------------------------------------------------------------------

class _Child:
    """A child process and its pipe: each call waits for one answer, or for the child's death."""

    def __init__(self, job: str, args: tuple, endpoints: Sequence[str]):
        self.endpoints = tuple(endpoints)
        self.asking: Optional[str] = None    # the worker the child said it talks to now
        self.log = tempfile.TemporaryFile(prefix="edgesdk-rpc-", suffix=".log")   # its stdout and stderr
        ours, theirs = socket.socketpair()
        # ggml's abort would print a backtrace with gdb when it finds one; the log is enough.
        env = dict(os.environ, GGML_NO_BACKTRACE="1",
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))   # what this process imports
        try:
            self.process = subprocess.Popen([sys.executable, "-c", CHILD_CODE, str(theirs.fileno())],
                                            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                            stdout=self.log, stderr=self.log, env=env, close_fds=True)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.stalled_s: Optional[float] = None     # set when receive() gave up waiting
        self.conn.send((job, args))

    def receive(self, timeout_s: Optional[float]):
        """The next ("ok"|"err"|"done", value) message; None when the child died, or timed out (then it is
        killed, and `stalled_s` says after how long). A Ctrl-C while waiting is raised once the answer is in, so
        our view of the child stays true."""
        interrupted = None
        while True:
            try:
                if not self.conn.poll(timeout_s):
                    self.kill()
                    self.stalled_s = timeout_s
                    return None
                message = self.conn.recv()
            except KeyboardInterrupt as exc:
                interrupted = exc
                continue
            except (EOFError, OSError):
                self._wait()
                return None
            if message[0] == "asking":
                self.asking = message[1]
                continue
            if interrupted is not None:
                raise interrupted
            return message

    def log_tail(self) -> str:
        try:
            self.log.seek(0)
            lines = collections.deque(self.log.read().decode("utf-8", "replace").splitlines(), LOG_TAIL_LINES)
        except (OSError, ValueError):
            return ""
        return "\n".join(lines).strip()

    def _wait(self) -> None:
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        self.kill()
        self.conn.close()
        self.log.close()

    def lost(self, doing: str, loading: bool) -> WorkerError:
        """The error for a child that died or stopped answering while doing something: while loading
        (or probing) WorkerUnreachableError, afterwards WorkerLostError."""
        log = self.log_tail()
        for endpoint in self.endpoints:
            why = reachable(endpoint)
            if why is not None and loading:
                return WorkerUnreachableError(f"worker {endpoint} does not answer ({why}) while {doing}; a "
                                              "worker serves one host at a time: is another host using it?",
                                              endpoint)
            if why is not None:
                return WorkerLostError(f"worker {endpoint} stopped while {doing} ({why}); the split model is "
                                       "closed: load it again when the worker is back", endpoint)
        if self.stalled_s is not None and not loading:
            return WorkerLostError(f"no answer from the workers in {self.stalled_s:.0f} s while {doing}, though every "
                                   "worker's port still accepts connections: one is frozen (its process stopped or "
                                   "its machine hung); the split model is closed: load it again when the worker is "
                                   "back", None)
        endpoint = self.asking if loading else None
        code = self.process.returncode
        how = "stopped answering and was stopped" if code in (None, -signal.SIGKILL) else f"ended (exit code {code})"
        detail = f"; llama.cpp said: {log.splitlines()[-1]}" if log else ""
        if endpoint is not None:
            return WorkerUnreachableError(
                f"worker {endpoint} accepts connections but does not speak llama.cpp's RPC protocol v7 "
                f"(or serves another host: a worker serves one at a time): the llama.cpp process {how} while "
                f"{doing}{detail}", endpoint)
        return WorkerLostError(f"the llama.cpp process holding the split model {how} while {doing}, with every "
                               f"worker still reachable{detail}; the model is closed: load it again", None)


def probe(endpoints: Sequence[str]) -> List[Tuple[str, int, int]]:
    """(endpoint, free, total) bytes each worker offers; WorkerUnreachableError naming the first that does not answer."""
    check_reachable(endpoints)
    child = _Child("probe", (tuple(endpoints),), endpoints)
    try:
        offered = []
        while True:
            message = child.receive(PROBE_TIMEOUT_S)
            if message is None:
                raise child.lost(f"asking {child.asking or 'the workers'} for its memory", loading=True)
            kind, value = message
            if kind == "err":
                raise value
            if kind == "done":
                return offered
            offered.append(value)
    finally:
        child.close()


def _refusal(log: str, endpoints: Sequence[str]) -> Optional[Tuple[str, str]]:
    """(endpoint, llama.cpp's line) when the log says a worker's buffer could not be allocated."""
    for line in reversed(log.splitlines()):
        if "failed to allocate" in line or "unable to allocate" in line:
            for endpoint in endpoints:
                if f"[{endpoint}]" in line:      # llama.cpp names an RPC buffer "RPC<n>[host:port]"
                    return endpoint, line.strip()
    return None


def _picklable_ids(ids: Sequence[int]):
    """ids as a list or an ndarray, to cross the pipe (a range or other sequence would not)."""
    return list(ids) if isinstance(ids, (list, tuple)) else np.asarray(ids)


class SplitLlamaCpp(Backend):
    """A LlamaCppBackend in a child process, its layers on workers; the Backend calls forwarded to it."""

    name = "llamacpp"
    description = "llama.cpp with layers on RPC workers"
    kv_types = ("f32", "f16", "q4_0", "q8_0")

    def __init__(self, request: OpenRequest, layers: Sequence[Tuple[str, int]]):
        self.request = request
        self.layers = tuple(layers)                 # (endpoint, layers held), for info()
        self.n_ctx = request.n_ctx
        self._child: Optional[_Child] = _Child("model", (request,), request.endpoints)
        message = self._child.receive(LOAD_TIMEOUT_S)
        if message is None or message[0] == "err":
            error = self._load_error(message)
            self._child.close()
            self._child = None
            raise error
        self.n_vocab = int(message[1])

    def _load_error(self, message) -> EdgeSDKError:
        log = self._child.log_tail()
        refused = _refusal(log, self.request.endpoints)
        if refused is not None:
            endpoint, line = refused
            return WorkerMemoryError(f"worker {endpoint} refused its share of the model ({line}); it offers less "
                                     "than it reported, or its --mem limit is below the plan: give it a larger "
                                     "--mem, a smaller n_ctx, or another worker", endpoint)
        if message is None:
            return self._child.lost(f"loading the model onto {self._child.asking or 'the workers'}", loading=True)
        return message[1]

    def _call(self, method: str, *args: Any, decodes: int = 1) -> Any:
        """The child's answer to method(*args), which makes at most `decodes` round trips to the workers."""
        if self._child is None:
            raise WorkerLostError("the split model is closed (a worker was lost or close() was called): load it "
                                  "again", None)
        child = self._child
        try:
            child.conn.send((method, args))
        except (OSError, ValueError):
            pass          # a dead child: receive() says so
        message = child.receive(STALL_TIMEOUT_S * decodes)
        if message is None:
            error = child.lost(f"running {method}", loading=False)
            child.close()
            self._child = None
            raise error
        kind, value = message
        if kind == "err":
            raise value
        return value

    # -- Backend -------------------------------------------------------------------------

    @classmethod
    def available(cls):
        from .llamacpp import LlamaCppBackend
        return LlamaCppBackend.available()

    @classmethod
    def memory_parts(cls, checked, config):
        raise InvalidArgumentError("a split model is planned by the llamacpp backend")

    @classmethod
    def open(cls, checked, config):
        raise InvalidArgumentError("a split model is opened by the llamacpp backend")

    @property
    def n_past(self) -> int:
        return self._call("n_past") if self._child is not None else 0

    def _decodes(self, n_rows: int) -> int:
        """llama_decode calls (n_batch rows each) the child makes for n_rows rows: the call's deadline."""
        return max(1, -(-n_rows // self.request.n_batch))

    def eval(self, ids: Sequence[int], start: int, all_logits: bool = False) -> np.ndarray:
        ids = _picklable_ids(ids)
        return self._call("eval", ids, start, all_logits, decodes=self._decodes(len(ids)))

    # -- several sequences: llama.cpp's own, in the child ----------------------------------

    @property
    def n_seq(self) -> int:
        return self.request.n_seq

    def eval_batch(self, entries: Sequence[SeqInput]) -> List[np.ndarray]:
        check_seq_inputs(entries, self.request.n_seq)
        entries = [SeqInput(e.seq, _picklable_ids(e.ids), e.start) for e in entries]
        return self._call("eval_batch", entries, decodes=self._decodes(sum(len(e.ids) for e in entries)))

    def seq_n_past(self, seq: int) -> int:
        return self._call("seq_n_past", seq)

    def copy_seq(self, src: int, dst: int, n: int) -> None:
        self._call("copy_seq", src, dst, n)

    def save_state(self) -> bytes:
        return self._call("save_state")

    def load_state(self, blob: bytes, n_past: int) -> None:
        self._call("load_state", bytes(blob) if isinstance(blob, (bytearray, memoryview)) else blob, n_past)

    def info(self) -> BackendInfo:
        where = ", ".join(f"{endpoint} ({n} layers)" for endpoint, n in self.layers)
        return BackendInfo(name=self.name, device=f"llama.cpp over {len(self.layers)} RPC workers: {where}",
                           n_ctx=self.n_ctx, n_vocab=self.n_vocab, threads=self.request.threads,
                           kv_type=self.request.kv_type)

    def close(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.conn.send(("close", ()))
            child.receive(10.0)
        except (OSError, ValueError, EOFError):
            pass
        child.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


__all__ = ["OpenRequest", "SplitLlamaCpp", "check_reachable", "probe", "reachable"]
