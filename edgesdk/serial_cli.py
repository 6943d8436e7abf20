"""`edgesdk serial`: the terminal face of edgesdk.serve.serial (argument parsing and printing only).

    edgesdk serial [MODEL] --port /dev/serial/by-id/usb-...-if00 [--port ...] [--baud 115200] [--mode auto]

Serves the model to the microcontrollers on the ports until Ctrl-C or
SIGTERM; logs each connection and answer on stderr. Every limit of
SerialLimits is a flag with its default (`--max-queue`, `--stall-timeout-s`,
...). The protocol is docs/serial-protocol.md.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import fields
from typing import Any, Dict

EPILOG = ("Line mode: send a question as a line, read '> ' lines up to 'END <reason>'. Framed mode: COBS frames "
          "with CRC-16 and acknowledgements. Both are specified, byte by byte, in docs/serial-protocol.md; "
          "clients to copy are in examples/serial/.")


def add_serial_command(sub) -> None:
    """Register `serial` on the CLI's subparsers."""
    from .chat_cli import add_load_options
    from .generation import GenerationConfig
    from .serve.serial import MODES, PortSpec, SerialLimits

    spec_defaults = {f.name: f.default for f in fields(PortSpec)}
    p = sub.add_parser("serial", help="answer microcontrollers over serial ports (UART, USB-serial), offline",
                       description="Serve a model to devices on serial ports: one conversation per port, kept "
                                   "across restarts.", epilog=EPILOG)
    p.add_argument("model", nargs="?", default=None, help="registry name or .gguf path (default: the registry's)")
    p.add_argument("--port", action="append", required=True, metavar="PATH",
                   help="a serial port, repeat for more: /dev/serial/by-id/... (survives replugging), /dev/ttyUSB0, "
                        "/dev/ttyAMA0, or a pyserial URL such as socket://host:port")
    p.add_argument("--baud", type=int, default=spec_defaults["baud"], help="(default %(default)s)")
    p.add_argument("--mode", choices=MODES, default=spec_defaults["mode"],
                   help="auto: line mode until the device sends a valid frame (default %(default)s)")
    p.add_argument("--rtscts", action="store_true", help="RTS/CTS hardware flow control (when wired)")
    p.add_argument("--xonxoff", action="store_true", help="XON/XOFF flow control (line mode only)")
    p.add_argument("--system", default=None, help="system prompt of new conversations")
    p.add_argument("--state-dir", default=None,
                   help="where each port's conversation is saved (default: $EDGESDK_HOME/serial)")
    sampling = GenerationConfig().sampling
    p.add_argument("--temperature", type=float, default=None, help=f"(default {sampling.temperature})")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    limits = p.add_argument_group("limits (what a device cannot change)")
    for f in fields(SerialLimits):
        kind = int if f.type in ("int", int) else float
        limits.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                            help=f"{f.metadata['help']} (default %(default)s)")
    add_load_options(p)
    p.set_defaults(func=cmd_serial)


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def cmd_serial(args: argparse.Namespace) -> int:
    from . import registry
    from .chat_cli import load_config
    from .cli import PullPrinter
    from .model import load
    from .serve.serial import PortSpec, SerialBridge, SerialLimits

    # Settings first: a mistake fails before the model is loaded.
    limits = SerialLimits(**{f.name: getattr(args, f.name) for f in fields(SerialLimits)})
    specs = [PortSpec(path, baud=args.baud, mode=args.mode, rtscts=args.rtscts, xonxoff=args.xonxoff)
             for path in args.port]
    options: Dict[str, Any] = {k: v for k, v in (("temperature", args.temperature), ("seed", args.seed))
                               if v is not None}
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("edgesdk")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)

    name = args.model or registry.default_model()
    if name in registry.load_registry() and registry.cached_path(name) is None:
        print(f"{name}: not downloaded yet, pulling it once", file=sys.stderr)
        registry.pull(name, progress=PullPrinter(sys.stderr))
    model = load(name, load_config(args))
    try:
        bridge = SerialBridge(model, specs, limits=limits, state_dir=args.state_dir, system=args.system, **options)
    except BaseException:
        model.close()
        raise
    bridge.owns_model = True
    print(f"{bridge.model_name}: serving {', '.join(args.port)} ({args.mode} mode, {args.baud} baud); "
          f"conversations in {bridge.state_dir}; Ctrl-C stops", flush=True)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        bridge.start()
        bridge.wait()
    except KeyboardInterrupt:
        print("edgesdk: stopping; answers in flight are cancelled and saved", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        bridge.close()
        logger.removeHandler(handler)
    return 0


__all__ = ["add_serial_command", "cmd_serial"]
