"""How the HTTP server listens and whom it serves: its settings, checked when made.

Apart from edgesdk.serve.http so that the CLI can show their defaults (and refuse bad ones)
without the server's libraries (starlette, uvicorn, prometheus-client: the `server` extra).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..batching import DEFAULT_MAX_QUEUE
from ..config import check_limits, limit
from ..errors import InvalidArgumentError
from .openai_api import RequestLimits

LOOPBACK_NAMES = ("localhost",)
MIN_API_KEY_CHARS = 16


def is_loopback(host: str) -> bool:
    """Whether binding host serves this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """How the server listens and whom it serves; the limits of a request are `limits` (RequestLimits)."""
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: Optional[str] = field(default=None, repr=False)
    allowed_hosts: Tuple[str, ...] = ()     # host names clients may use beyond localhost and this machine's
    cors_origins: Tuple[str, ...] = ()      # browser origins allowed to call (none: no CORS headers)
    log_prompts: bool = False
    max_body_bytes: int = limit(1 << 20, "largest request body in bytes (413 beyond)")
    header_timeout_s: float = limit(10.0, "time a connection has to send a request's headers (closed beyond)")
    body_timeout_s: float = limit(10.0, "time a client has to send its request body (408 beyond)")
    stall_timeout_s: float = limit(30.0, "a streaming client that takes nothing this long loses its answer")
    max_queue: int = limit(DEFAULT_MAX_QUEUE, "requests waiting for a free sequence (429 beyond)", allow_zero=True)
    max_connections: int = limit(64, "open connections (503 beyond)")
    keep_alive_s: int = limit(5, "idle keep-alive connections close after this")
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self):
        check_limits(self)
        if not isinstance(self.host, str) or not self.host:
            raise InvalidArgumentError(f"host must be an address or name, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InvalidArgumentError(f"port must be in [0, 65535], got {self.port!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < MIN_API_KEY_CHARS
                                         or not self.api_key.isprintable() or " " in self.api_key):
            raise InvalidArgumentError(f"the API key must be at least {MIN_API_KEY_CHARS} printable characters "
                                       "without spaces")
        if self.api_key is None and not is_loopback(self.host):
            raise InvalidArgumentError(f"binding {self.host} serves other machines: give an API key "
                                       "(--api-key-file, or the EDGESDK_API_KEY environment variable)")
        for name in ("allowed_hosts", "cors_origins"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
                raise InvalidArgumentError(f"{name} must be a tuple of non-empty strings, got {value!r}")
        if "*" in self.cors_origins:
            raise InvalidArgumentError("cors_origins must list origins; '*' would let every web page call the server")
        if not isinstance(self.limits, RequestLimits):
            raise InvalidArgumentError(f"limits must be RequestLimits, got {type(self.limits).__name__}")

    def host_names(self) -> frozenset:
        """Host header names accepted (address literals always are)."""
        names = set(LOOPBACK_NAMES) | {h.lower().rstrip(".") for h in self.allowed_hosts}
        if not is_loopback(self.host):
            machine = socket.gethostname().lower()
            names |= {machine, machine + ".local", self.host.lower()}
        return frozenset(names)


__all__ = ["ServerSettings", "is_loopback", "LOOPBACK_NAMES", "MIN_API_KEY_CHARS"]
