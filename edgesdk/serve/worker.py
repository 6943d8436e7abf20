"""A worker: this device's CPU and memory offered to one llama.cpp host over ggml's RPC protocol.

`serve()` runs llama.cpp's own RPC server (ggml_backend_rpc_start_server, from
the libggml-rpc that llama-cpp-python ships) in this process, on ggml's CPU
device. In-process rather than llama.cpp's rpc-server binary: the pip build of
llama-cpp-python does not build that tool, and it has no memory limit. Here the
limit is ours: the CPU device's memory report and its buffer type's allocator
are pointed at `MemoryLimit` (ggml_rpc names the slots), so

  - a host asking what the worker has gets `limit - in use` (without a limit:
    what the device has available now: MemAvailable or the cgroup's room), and
  - an allocation past the limit is refused: ggml's allocator returns NULL,
    llama.cpp on the host fails the load and names this worker's buffer.

The protocol has no authentication and serves one host at a time; binding a
non-loopback address is the caller's explicit choice (the CLI warns).
"""
from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from typing import Dict, Optional

from .. import ggml_rpc, memory
from ..config import check_positive_int
from ..errors import InvalidArgumentError

log = logging.getLogger("edgesdk")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50052


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WorkerSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    threads: int = 1
    mem_limit: Optional[int] = None       # bytes offered to hosts; None: what the device has available

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host or any(c in self.host for c in " /:"):
            raise InvalidArgumentError(f"host must be an address or name without a port, got {self.host!r}")
        check_positive_int("port", self.port, 65535)
        check_positive_int("threads", self.threads, 1024)
        if self.mem_limit is not None:
            check_positive_int("mem_limit", self.mem_limit)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


class MemoryLimit:
    """What the worker offers and holds: the report and allocator callbacks ggml calls (any thread)."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self._lock = threading.Lock()
        self._sizes: Dict[int, int] = {}      # live buffer address -> bytes
        self.in_use = 0
        self.refused = 0                      # allocations refused so far (for the log and tests)
        self._alloc_orig = None
        self._free_orig = None
        # ctypes callbacks must stay alive as long as ggml may call them: the process's lifetime.
        self._get_memory_cb = ggml_rpc.GET_MEMORY_FN(self._get_memory)
        self._alloc_cb = ggml_rpc.ALLOC_BUFFER_FN(self._alloc)
        self._free_cb = ggml_rpc.FREE_BUFFER_FN(self._free)

    def offered(self):
        """(free, total) bytes as hosts see them."""
        if self.limit is not None:
            with self._lock:
                return max(0, self.limit - self.in_use), self.limit
        budget = memory.device_budget().resident or 0
        return budget, budget + self.in_use

    def install(self, device: int) -> None:
        """Point the CPU device's memory report and its buffer type's allocator at this object."""
        buft = ggml_rpc.buffer_type(device)
        self._alloc_orig = ggml_rpc.ALLOC_BUFFER_FN(ggml_rpc.read_slot(buft, ggml_rpc.BUFT_ALLOC_BUFFER_SLOT))
        ggml_rpc.write_slot(device, ggml_rpc.DEVICE_GET_MEMORY_SLOT, self._get_memory_cb)
        ggml_rpc.write_slot(buft, ggml_rpc.BUFT_ALLOC_BUFFER_SLOT, self._alloc_cb)

    def _get_memory(self, _dev, free_out, total_out) -> None:
        free, total = self.offered()
        free_out[0], total_out[0] = free, total

    def _alloc(self, buft, size):
        with self._lock:
            if self.limit is not None and self.in_use + size > self.limit:
                self.refused += 1
                log.error("worker: refused a buffer of %.1f MiB: %.1f MiB of the %.1f MiB limit are in use",
                          size / memory.MIB, self.in_use / memory.MIB, self.limit / memory.MIB)
                return None
            buffer = self._alloc_orig(buft, size)
            if not buffer:
                return None
            if self._free_orig is None:
                self._free_orig = ggml_rpc.FREE_BUFFER_FN(ggml_rpc.read_slot(buffer, ggml_rpc.BUFFER_FREE_SLOT))
            ggml_rpc.write_slot(buffer, ggml_rpc.BUFFER_FREE_SLOT, self._free_cb)
            self._sizes[buffer] = size
            self.in_use += size
            return buffer

    def _free(self, buffer) -> None:
        with self._lock:
            self.in_use -= self._sizes.pop(buffer, 0)
        self._free_orig(buffer)


def serve(settings: WorkerSettings, started: Optional[threading.Event] = None) -> None:
    """Run the RPC server until the process ends (it returns only when it could not start)."""
    ggml_rpc.libraries()
    ggml_rpc.check_abi()
    device = ggml_rpc.cpu_device()
    limit = MemoryLimit(settings.mem_limit)
    limit.install(device)
    global _installed
    _installed = limit                     # the callbacks live while the process does
    if started is not None:
        started.set()
    ggml_rpc.start_server(settings.endpoint, device, settings.threads)


_installed: Optional[MemoryLimit] = None

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "MemoryLimit", "WorkerSettings", "is_loopback", "serve"]
