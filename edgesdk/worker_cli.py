"""`edgesdk worker`: the terminal face of edgesdk.serve.worker (argument parsing and printing only).

    edgesdk worker [--host 127.0.0.1] [--port 50052] [--threads N] [--mem 1.5GB] [--allow-remote]

Offers this device's CPU and memory to one llama.cpp host (`edgesdk chat MODEL
--workers host:port,...`) until Ctrl-C or SIGTERM. See docs/workers.md.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

WARNING = ("edgesdk worker: WARNING: listening on {endpoint}, not loopback. llama.cpp's RPC protocol has no "
           "authentication or encryption: anyone who can reach this port can run code paths of ggml on this "
           "device and read what it holds. Use it only on a network you trust, or keep the default "
           "127.0.0.1 and reach it through an SSH or WireGuard tunnel (docs/workers.md).")


def add_worker_command(sub) -> None:
    """Register `worker` on the CLI's subparsers."""
    from .serve.worker import DEFAULT_HOST, DEFAULT_PORT

    p = sub.add_parser("worker", help="offer this device's memory and CPU to a llama.cpp host (RPC worker)",
                       description="Serve llama.cpp's RPC protocol so that a host can place model layers here.")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s, loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="(default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the layers held here "
                                                             "(default: this device's choice)")
    p.add_argument("--mem", default=None, metavar="LIMIT",
                   help="memory offered to the host, such as 1.5GB or 800MiB; allocations past it are refused "
                        "(default: what is available when the host asks)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host that is not loopback (the protocol has no authentication)")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from . import hardware
    from .config import parse_size
    from .errors import InvalidArgumentError, NativeError
    from .serve.worker import WorkerSettings, is_loopback, serve

    settings = WorkerSettings(host=args.host, port=args.port, threads=args.threads or hardware.default_threads(),
                              mem_limit=parse_size(args.mem) if args.mem is not None else None)
    if not is_loopback(settings.host):
        if not args.allow_remote:
            raise InvalidArgumentError(f"--host {settings.host} is not loopback: llama.cpp's RPC protocol has no "
                                       "authentication, so listening there needs --allow-remote "
                                       "(or keep 127.0.0.1 and use a tunnel, see docs/workers.md)")
        print(WARNING.format(endpoint=settings.endpoint), file=sys.stderr, flush=True)
    started = threading.Event()
    failed = []

    def run() -> None:
        try:
            serve(settings, started)
        except BaseException as exc:   # reported by the main thread
            failed.append(exc)
        failed.append(None)            # start_server returned: it could not listen

    server = threading.Thread(target=run, name="edgesdk-worker", daemon=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    while not stop.is_set() and server.is_alive():
        stop.wait(0.2)
    if failed:
        if failed[0] is not None:
            raise failed[0]
        raise NativeError(f"the RPC server could not listen on {settings.endpoint} (is the port in use?)")
    print("edgesdk worker: stopped", file=sys.stderr, flush=True)
    # The server thread is inside ggml's accept loop, which has no stop: end the process here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


__all__ = ["add_worker_command", "cmd_worker"]
