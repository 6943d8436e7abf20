"""The edgesdk command line: argument parsing and printing only; the logic lives in the package."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__
from .errors import EdgeSDKError


def _cmd_pull(args: argparse.Namespace) -> int:
    from . import registry

    path = registry.pull(args.model, progress=lambda msg: print(f"{args.model}: {msg}", file=sys.stderr))
    print(path)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from . import registry

    for name, entry in registry.load_registry().items():
        cached = registry.cached_path(name)
        state = "cached" if cached else "not downloaded"
        print(f"{name:24} {entry.architecture:8} {entry.quantization:7} {entry.size / 2**20:7.1f} MiB  {state}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from . import hardware, memory

    print(hardware.format_device(hardware.probe()))
    if args.model:
        plan = memory.fit(args.model, n_ctx=args.n_ctx, kv_type=args.kv_type, max_memory=args.max_memory,
                          backend=args.backend)
        print()
        print(memory.format_plan(plan))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesdk", description="Run language models offline, on this device.")
    parser.add_argument("--version", action="version", version=f"edgesdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pull", help="download a registry model into the cache")
    p.add_argument("model")
    p.set_defaults(func=_cmd_pull)

    p = sub.add_parser("models", help="list known models and what is cached")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("info", help="this device, and with MODEL the memory plan for it here")
    p.add_argument("model", nargs="?")
    p.add_argument("--backend", default="native", choices=["native", "llamacpp"])
    p.add_argument("--n-ctx", type=int, default=None, help="context size (default: the largest that fits)")
    p.add_argument("--kv-type", default="f16", choices=["f16", "q8_0"])
    p.add_argument("--max-memory", default=None, help="memory budget such as 1.5GB or 800MiB")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeSDKError as exc:
        print(f"edgesdk: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
