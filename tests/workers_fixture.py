"""`edgesdk worker` processes on loopback for the tests and the benchmark: start, wait until listening, stop."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0      # interpreter + llama_cpp import on a loaded 2-core machine


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """One `edgesdk worker` subprocess on 127.0.0.1."""

    def __init__(self, mem: Optional[str] = None, threads: int = 1, extra: List[str] = ()):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "edgesdk.cli", "worker", "--port", str(self.port), "--threads", str(threads)]
        if mem is not None:
            args += ["--mem", mem]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen(args + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=env, cwd=str(ROOT))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                raise RuntimeError(f"worker on {self.endpoint} ended at start ({self.process.returncode}): "
                                   f"{err.decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"worker on {self.endpoint} did not listen within {START_TIMEOUT_S:.0f} s")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_workers(n: int, mems: Optional[List[Optional[str]]] = None, threads: int = 1) -> List[Worker]:
    mems = mems or [None] * n
    workers: List[Worker] = []
    try:
        for mem in mems:
            workers.append(Worker(mem=mem, threads=threads))
    except BaseException:
        for w in workers:
            w.stop()
        raise
    return workers
