"""`edgesdk quantize` and `edgesdk convert`: the terminal face of edgesdk.quantize and
edgesdk.convert (argument parsing and printing only).

    edgesdk quantize IN.gguf OUT.gguf --type q4_k_m [--tensor-type REGEX=TYPE ...] [--imatrix-text FILE]
    edgesdk convert HF_DIR OUT.gguf [--type q4_k_m|f16|...]
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

MIB = 1 << 20


class Progress:
    """A tqdm bar on stderr when it is a terminal, silent otherwise; `count(p)` reads how far a
    progress record is and `total(p)` of what, in `unit`s."""

    def __init__(self, label: str, unit: str, count: Callable, total: Callable, stream=None):
        self.label, self.unit, self.count, self.total = label, unit, count, total
        self.stream = stream or sys.stderr
        self.bar = None

    def __call__(self, p) -> None:
        if not self.stream.isatty():
            return
        if self.bar is None:
            from tqdm import tqdm   # the CLI's only progress display
            self.bar = tqdm(total=self.total(p), desc=self.label, unit=self.unit, file=self.stream,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} {unit} "
                                       "[{elapsed}<{remaining}] {postfix}", dynamic_ncols=True)
        self.bar.set_postfix_str(p.tensor, refresh=False)
        self.bar.update(self.count(p) - self.bar.n)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _add_mix_options(p, default: str, extra_types: tuple = ()) -> None:
    from .quantize import MIXES

    choices = list(MIXES) + list(extra_types)
    p.add_argument("--type", dest="mix", choices=choices, default=default, metavar="TYPE",
                   help="; ".join(f"{m.name}: {m.summary}" for m in MIXES.values()) +
                        (f"; {', '.join(extra_types)}: unquantized" if extra_types else "") +
                        " (default %(default)s)")
    p.add_argument("--tensor-type", action="append", default=[], metavar="REGEX=TYPE",
                   help="type of the tensors whose name matches REGEX, e.g. 'attn_v=q8_0'; repeat for more, the "
                        "first match wins")
    p.add_argument("--token-embedding-type", metavar="TYPE", help="type of token_embd.weight")
    p.add_argument("--output-tensor-type", metavar="TYPE", help="type of the output head")
    p.add_argument("--threads", type=int, default=0, help="quantizing threads (default: one per performance core)")


def _options(args: argparse.Namespace):
    from .quantize import QuantizeOptions, parse_tensor_type

    return QuantizeOptions(mix=args.mix, tensor_types=[parse_tensor_type(s) for s in args.tensor_type],
                           token_embedding_type=args.token_embedding_type,
                           output_tensor_type=args.output_tensor_type,
                           allow_requantize=getattr(args, "allow_requantize", False), threads=args.threads)


def _print_report(report, out=None) -> None:
    out = out or sys.stdout
    counts = ", ".join(f"{t} {n}" for t, n in sorted(report.type_counts.items()))
    print(f"{report.out_path}: {report.out_bytes / MIB:.1f} MiB from {report.in_bytes / MIB:.1f} MiB "
          f"in {report.seconds:.1f} s ({counts} tensors)", file=out)


def add_quantize_commands(sub) -> None:
    """Register `quantize` and `convert` on the CLI's subparsers."""
    p = sub.add_parser("quantize", help="quantize a GGUF model (F32/F16/BF16 tensors) to 4, 5, 6 or 8 bits",
                       description="Write a smaller GGUF: a type per tensor as llama.cpp's file types choose "
                                   "them, the output head kept at higher precision.")
    p.add_argument("input", help="the GGUF to quantize")
    p.add_argument("output", help="the GGUF to write (replaced only once it is complete)")
    _add_mix_options(p, "q4_k_m")
    p.add_argument("--allow-requantize", action="store_true",
                   help="quantize tensors that are already quantized (their two roundings add up: worse than "
                        "quantizing the float original)")
    p.add_argument("--imatrix-text", metavar="FILE",
                   help="calibration text: run the model on it (native engine) and weight each column by its "
                        "mean squared activation")
    p.add_argument("--imatrix-tokens", type=int, default=None, metavar="N",
                   help="calibration tokens to use at most (default: edgesdk.imatrix's)")
    p.set_defaults(func=cmd_quantize)
    _add_convert(sub)


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import quantize_file

    options = _options(args)
    if args.imatrix_text:
        from . import imatrix

        kwargs = {} if args.imatrix_tokens is None else {"max_tokens": args.imatrix_tokens}
        result = imatrix.compute_from_text_file(args.input, args.imatrix_text, threads=args.threads, **kwargs)
        print(f"importance matrix: {result.n_tokens} tokens of {args.imatrix_text}, "
              f"{len(result.importance)} matrices", file=sys.stderr)
        options.importance = result.importance
        options.importance_source = args.imatrix_text
    with Progress(f"quantizing to {args.mix}", "MiB", lambda p: p.done_bytes / MIB,
                  lambda p: p.total_bytes / MIB) as progress:
        report = quantize_file(args.input, args.output, options, progress=progress)
    _print_report(report)
    if report.requantized:
        print(f"note: {report.requantized} tensors were requantized from quantized sources", file=sys.stderr)
    return 0


def _add_convert(sub) -> None:
    from .convert import DEFAULT_OUTPUT_TYPE, FLOAT_OUTPUT_TYPES

    p = sub.add_parser("convert", help="convert a Hugging Face model folder (llama, qwen2, gemma3) to GGUF",
                       description="Read safetensors weights, config.json and the tokenizer (tokenizer.json or "
                                   "tokenizer.model) of a Hugging Face folder and write one GGUF file that "
                                   "llama.cpp and edgesdk load; quantize it on the way with --type.")
    p.add_argument("folder", help="the Hugging Face model folder")
    p.add_argument("output", help="the GGUF to write (replaced only once it is complete)")
    _add_mix_options(p, DEFAULT_OUTPUT_TYPE, tuple(FLOAT_OUTPUT_TYPES))
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    import os

    from .convert import FLOAT_OUTPUT_TYPES, convert_folder

    options = None if args.mix in FLOAT_OUTPUT_TYPES else _options(args)
    with Progress(f"converting {os.path.basename(os.path.normpath(args.folder))}", "tensors",
                  lambda p: p.done, lambda p: p.total) as progress:
        out = convert_folder(args.folder, args.output, out_type=args.mix, threads=args.threads,
                             quantize_options=options, progress=progress)
    print(f"{out}: {os.path.getsize(out) / MIB:.1f} MiB ({args.mix})")
    return 0
