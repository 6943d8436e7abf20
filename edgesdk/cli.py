"""The edgesdk command line: argument parsing and printing only; the logic lives in the package.

Each subcommand is a pair: `_add_NAME(sub)` declares its arguments and
`_cmd_NAME(args) -> int` runs it; SUBCOMMANDS lists the pairs in help order.
Errors edgesdk raises on purpose print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any, Callable, Iterable, List, Optional, Tuple

from . import __version__
from .errors import EdgeSDKError, NativeBuildError
from .onnx_cli import add_export_onnx_command
from .quantize_cli import add_quantize_commands
from .serial_cli import add_serial_command
from .serve_cli import add_serve_command
from .worker_cli import add_worker_command

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
MIB = 1 << 20


def _print_rows(rows: Iterable[Tuple[str, Any]], out=None) -> None:
    out = out or sys.stdout
    for label, value in rows:
        print(f"{label:15} {value}", file=out)


# -- pull ----------------------------------------------------------------------

class PullPrinter:
    """Progress of a pull on stderr, in MiB: one updating bar on a terminal, a line every few seconds otherwise.

    Used as a context manager around the pull, so a bar cut short by an error
    or Ctrl-C ends its line before the error is printed.
    """

    LOG_INTERVAL_S = 5.0
    STAGES = {"download": "downloading", "extract": "unpacking", "verify": "checking sha256"}
    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} MiB [{elapsed}<{remaining}, {rate_fmt}]"
    LINE_FORMAT = "{desc}: {percentage:3.0f}% {n:.1f}/{total:.1f} MiB [{elapsed}<{remaining}, {rate_fmt}]"

    def __init__(self, stream, clock: Callable[[], float] = time.monotonic):
        from tqdm import tqdm   # the CLI's only progress display

        self._tqdm = tqdm
        self.stream = stream
        self.tty = stream.isatty()
        self.clock = clock
        self.bar = None
        self.started: Optional[float] = None
        self.last_stage: Optional[str] = None
        self.last_line_at = 0.0

    def __call__(self, p) -> None:
        if p.stage == "done":
            self.close()
            if self.started is None:
                print(f"{p.model}: already cached ({p.total_bytes / MIB:.1f} MiB), nothing downloaded",
                      file=self.stream)
            else:
                print(f"{p.model}: {p.total_bytes / MIB:.1f} MiB, sha256 verified, saved", file=self.stream)
            self.stream.flush()
            return
        total = p.total_bytes / MIB
        done = min(p.done_bytes, p.total_bytes) / MIB   # wheel bytes can run a little past the model's
        desc = f"{p.model}: {self.STAGES.get(p.stage, p.stage)}"
        now = self.clock()
        if self.started is None:
            self.started = now
        if self.tty:
            if self.bar is None:
                self.bar = self._tqdm(total=total, desc=desc, unit="MiB", file=self.stream,
                                      bar_format=self.BAR_FORMAT, dynamic_ncols=True, mininterval=0.2)
            elif p.stage != self.last_stage:
                self.bar.set_description_str(desc, refresh=False)
            self.bar.update(done - self.bar.n)
        elif p.stage != self.last_stage or now - self.last_line_at >= self.LOG_INTERVAL_S:
            print(self._tqdm.format_meter(done, total, now - self.started, prefix=desc, unit="MiB",
                                          bar_format=self.LINE_FORMAT), file=self.stream, flush=True)
            self.last_line_at = now
        self.last_stage = p.stage

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "PullPrinter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _add_pull(sub) -> None:
    p = sub.add_parser("pull", help="download a registry model into the cache and verify it")
    p.add_argument("model", help="registry name (see: edgesdk models)")
    p.add_argument("--verify", action="store_true", help="re-check the sha256 of an already cached file")
    p.set_defaults(func=_cmd_pull)


def _cmd_pull(args: argparse.Namespace) -> int:
    from . import registry

    with PullPrinter(sys.stderr) as printer:
        path = registry.pull(args.model, progress=printer, verify_cached=args.verify)
    print(path)
    return 0


# -- models --------------------------------------------------------------------

def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list known models and what is cached")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from . import registry

    default = registry.default_model()
    print(f"{'NAME':24} {'ARCH':8} {'QUANT':7} {'SIZE':>10}  CACHED")
    known_files = set()
    for name, entry in registry.load_registry().items():
        cached = registry.cached_path(name)
        known_files.add(entry.file)
        label = name + (" *" if name == default else "")
        print(f"{label:24} {entry.architecture:8} {entry.quantization:7} {entry.size / MIB:6.1f} MiB  {cached or '-'}")
    others = [p for p in registry.cache_listing() if p.name not in known_files]
    if others:
        print(f"\nother .gguf files in {registry.models_dir()}:")
        for path in others:
            print(f"  {path}")
    print(f"\n* default model; cache: {registry.models_dir()}")
    return 0


# -- info ----------------------------------------------------------------------

def _add_info(sub) -> None:
    p = sub.add_parser("info", help="this device; with MODEL, the model and how this machine would run it")
    p.add_argument("model", nargs="?", help="registry name or path to a .gguf file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    from .chat_cli import add_load_options
    add_load_options(p)
    p.set_defaults(func=_cmd_info)


def _model_rows(m) -> List[Tuple[str, Any]]:
    def opt(value):
        return "-" if value is None else value

    rows = [
        ("model", m.name or "-"),
        ("file", f"{m.path} ({m.file_size / MIB:.1f} MiB, GGUF v{m.gguf_version}, {m.n_tensors} tensors)"),
        ("architecture", opt(m.architecture)),
        ("parameters", f"{m.parameters / 1e6:.1f} M ({m.parameters})"),
        ("layers", opt(m.n_layers)),
        ("heads", f"{opt(m.n_heads)} (kv heads {opt(m.n_kv_heads)}, head dim {opt(m.head_dim)})"),
        ("embedding", opt(m.embedding_length)),
        ("feed-forward", opt(m.feed_forward_length)),
        ("context", opt(m.context_length)),
    ]
    if m.sliding_window:
        rows.append(("sliding window", m.sliding_window))
    rows.append(("quantization", f"{m.file_type or '-'}, {m.bits_per_weight:.2f} bits per weight"))
    for u in m.quantization:
        rows.append(("", f"{u.type_name:6} {u.n_tensors:4} tensors {u.n_elements:>12} weights "
                         f"{u.nbytes:>12} bytes ({u.nbytes / MIB:.1f} MiB)"))
    rows += [
        ("tokenizer", f"{m.tokenizer_kind}, vocabulary {opt(m.vocab_size)}"),
        ("chat template", "yes" if m.has_chat_template else "no"),
    ]
    return rows


def _backend_rows(b) -> List[Tuple[str, Any]]:
    return [("backends" if i == 0 else "", f"{s.name:10} " + ("available" if s.available else f"not available: {s.reason}")
             + f" ({s.description})") for i, s in enumerate(b.backends)]


def _native_rows(n) -> List[Tuple[str, Any]]:
    return [
        ("cpu features", " ".join(n.cpu_features) or "none"),
        ("kernel ISA", f"{n.isa_current} (available: {', '.join(n.isa_available)})"),
    ]


def _cmd_info(args: argparse.Namespace) -> int:
    from . import hardware, loading, memory, modelinfo
    from .chat_cli import load_config

    # Sections in print order: name -> (record, rows for the text output).
    sections: List[Tuple[str, Any, Callable[[Any], List[Tuple[str, Any]]]]] = []
    if args.model:
        sections.append(("model", modelinfo.describe_model(args.model), _model_rows))
    try:
        sections.append(("native", modelinfo.describe_native(), _native_rows))
    except NativeBuildError as exc:
        if args.model:  # a model's report is about running it here: without the kernels, an error
            raise
        print(f"edgesdk: note: {exc}", file=sys.stderr)  # the device report stands without them
    sections.append(("backends", modelinfo.describe_backends(), _backend_rows))
    sections.append(("device", hardware.probe(), hardware.device_rows))
    if args.model:
        prepared = loading.prepare(args.model, load_config(args))
        prepared.close()
        sections.append(("memory", prepared.plan, memory.plan_rows))
        if prepared.split is not None:
            sections.append(("split", prepared.split, memory.split_rows))
    if args.json:
        # frozensets (CPU features) become sorted lists.
        print(json.dumps({name: asdict(record) for name, record, _ in sections}, indent=2, default=sorted))
        return 0
    for i, (_name, record, rows) in enumerate(sections):
        if i:
            print()
        _print_rows(rows(record))
    return 0


# -- entry point -----------------------------------------------------------------

def _add_chat(sub) -> None:
    """`chat` and `run`: declared and run in chat_cli.py."""
    from .chat_cli import add_chat_commands
    add_chat_commands(sub)


SUBCOMMANDS = [_add_pull, _add_models, _add_info, _add_chat, add_serial_command, add_serve_command,
               add_worker_command, add_export_onnx_command, add_quantize_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesdk", description="Run language models offline, on this device.")
    parser.add_argument("--version", action="version", version=f"edgesdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeSDKError as exc:
        print(f"edgesdk: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("edgesdk: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`edgesdk info X | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
