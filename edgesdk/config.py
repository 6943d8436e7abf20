"""How a model is loaded: one frozen configuration, validated once, with its defaults in one place.

`LoadConfig` is what `edgesdk.load`, the memory planner, every backend and the
CLI's flags share. Each field is checked when the record is made, so a backend
receives only well-typed, bounded values; what a value means for one backend
(which KV types it stores, which options it takes) the backend checks itself.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Optional, Tuple, Union

from .errors import InvalidArgumentError

# KV cache element types (GGML type names, lower case) a backend may offer; each backend
# declares the subset it stores (Backend.kv_types).
KV_CACHE_TYPES = ("f32", "f16", "q8_0", "q4_0")
MAX_N_CTX = 1 << 24          # the same bound the GGUF reader puts on a trained context
MAX_N_BATCH = 1 << 16
MAX_N_SEQ = 256              # sequences (server slots) one loaded model holds
# More compute threads than the CPUs this process may run on only makes the workers wait
# for each other (a spinning pool with 1000 threads on 2 cores takes seconds per token).
THREADS_PER_CPU_LIMIT = 1
MAX_WORKERS = 16             # GGML_RPC_MAX_SERVERS of ggml-rpc.h


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "ki": 1 << 10,
         "m": 1000**2, "mb": 1000**2, "mib": 1 << 20, "mi": 1 << 20,
         "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "gi": 1 << 30,
         "t": 1000**4, "tb": 1000**4, "tib": 1 << 40, "ti": 1 << 40}


def parse_size(value: Union[int, str]) -> int:
    """'1.5GB' (10^9), '800MiB' (2^20), '512' or an int -> bytes; anything else raises InvalidArgumentError."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"max_memory must be bytes (int) or a size like '1.5GB', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise InvalidArgumentError(f"max_memory must be positive, got {value}")
        return value
    if not isinstance(value, str):
        raise InvalidArgumentError(f"max_memory must be bytes (int) or a size like '1.5GB', got {value!r}")
    match = _SIZE_RE.match(value)
    if not match:
        raise InvalidArgumentError(f"max_memory {value!r} is not a size like '1.5GB', '800MiB' or '2000000000'")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    size = number * _UNIT[unit]
    if not math.isfinite(size) or size < 1:
        raise InvalidArgumentError(f"max_memory {value!r} is less than one byte")
    return int(size)


_HOST_RE = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")


def parse_endpoint(value: Any) -> str:
    """'host:port' of a worker, checked (ggml's RPC client splits at the first ':', so no IPv6 literals)."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise InvalidArgumentError(f"a worker is 'host:port' such as '192.168.1.20:50052', got {value!r}")
    host, port = value.strip().split(":")
    if not _HOST_RE.match(host) or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidArgumentError(f"a worker is 'host:port' with a port in 1..65535, got {value!r}")
    return f"{host}:{int(port)}"


def check_positive_int(name: str, value: Any, limit: Optional[int] = None, why: str = "") -> int:
    """value as int when it is a positive int (not a bool) no larger than limit; InvalidArgumentError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    value = int(value)
    if value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value}")
    if limit is not None and value > limit:
        raise InvalidArgumentError(f"{name} {value} is too large: at most {limit}{why}")
    return value


def limit(default: Any, meaning: str, allow_zero: bool = False):
    """A field of a limits record (SerialLimits, ServerSettings, ...): its default and what it bounds,
    which is also its command-line flag's help. An int limit is positive unless allow_zero."""
    return field(default=default, metadata={"help": meaning, "allow_zero": allow_zero})


def check_limits(record: Any) -> None:
    """Every limit() field of a dataclass record: ints positive, floats non-negative seconds; a field whose
    default is None may be None."""
    for f in fields(record):
        if "help" not in f.metadata:
            continue
        value = getattr(record, f.name)
        if value is None and f.default is None:
            continue
        if f.type in ("int", int, "Optional[int]"):
            if f.metadata.get("allow_zero") and value == 0 and not isinstance(value, bool):
                continue
            check_positive_int(f.name, value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0:
            raise InvalidArgumentError(f"{f.name} must be a non-negative number of seconds, got {value!r}")


@dataclass(frozen=True)
class LoadConfig:
    """Settings for loading one model. None means "choose for this device and model"."""
    backend: str = "auto"                       # a registered backend's name, or "auto"
    n_ctx: Optional[int] = None                 # None: the largest the memory plan allows
    threads: Optional[int] = None               # None: edgesdk.hardware.default_threads()
    kv_type: str = "f16"
    max_memory: Optional[Union[int, str]] = None  # bytes or "1.5GB"; None: what the device has free
    n_batch: int = 512                          # prompt tokens evaluated per step
    n_seq: int = 1                              # sequences held at once, each with n_ctx positions
    workers: Tuple[str, ...] = ()               # "host:port" of `edgesdk worker`s holding the layers
    options: Mapping[str, Any] = field(default_factory=dict)  # backend-specific, checked by the backend

    def __post_init__(self):
        if not isinstance(self.backend, str) or not self.backend:
            raise InvalidArgumentError(f"backend must be a backend name, got {self.backend!r}")
        if self.n_ctx is not None:
            check_positive_int("n_ctx", self.n_ctx, MAX_N_CTX)
        if self.threads is not None:
            cpus = usable_cpus()
            check_positive_int("threads", self.threads, THREADS_PER_CPU_LIMIT * cpus,
                               f" (this process may run on {cpus} CPU core{'s' if cpus != 1 else ''})")
        if self.kv_type not in KV_CACHE_TYPES:
            raise InvalidArgumentError(f"kv_type {self.kv_type!r} is not one of {', '.join(KV_CACHE_TYPES)}")
        check_positive_int("n_batch", self.n_batch, MAX_N_BATCH)
        check_positive_int("n_seq", self.n_seq, MAX_N_SEQ)
        if self.max_memory is not None:
            parse_size(self.max_memory)
        if not isinstance(self.workers, (list, tuple)):
            raise InvalidArgumentError(f"workers must be a list of 'host:port', got {self.workers!r}")
        workers = tuple(parse_endpoint(w) for w in self.workers)
        if len(workers) > MAX_WORKERS or len(set(workers)) != len(workers):
            raise InvalidArgumentError(f"workers must be at most {MAX_WORKERS} distinct endpoints, got {list(workers)}")
        object.__setattr__(self, "workers", workers)
        if not isinstance(self.options, Mapping) or not all(isinstance(k, str) for k in self.options):
            raise InvalidArgumentError(f"options must be a mapping of option names, got {self.options!r}")
        object.__setattr__(self, "options", dict(self.options))

    @classmethod
    def from_options(cls, **options: Any) -> "LoadConfig":
        """A config from keyword arguments; an unknown name is an InvalidArgumentError listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown load option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)

    def with_(self, **changes: Any) -> "LoadConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


DEFAULT_LOAD = LoadConfig()

__all__ = ["LoadConfig", "DEFAULT_LOAD", "KV_CACHE_TYPES", "MAX_N_CTX", "MAX_N_SEQ", "MAX_WORKERS", "check_limits",
           "check_positive_int", "limit", "parse_endpoint", "parse_size", "usable_cpus"]
