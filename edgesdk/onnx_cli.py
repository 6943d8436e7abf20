"""`edgesdk export-onnx MODEL OUT_DIR`: write a GGUF model's ONNX export (parsing and printing only).

The export is edgesdk.onnx_export's: model.onnx, model.onnx.data and manifest.json; with
--genai-config also the genai_config.json onnxruntime-genai needs to run it.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import fields


def add_export_onnx_command(sub) -> None:
    """Register `export-onnx` on the CLI's subparsers."""
    from .onnx_export import ExportOptions

    defaults = {f.name: f.default for f in fields(ExportOptions)}
    p = sub.add_parser("export-onnx", help="export a GGUF model to a 4-bit ONNX graph for ONNX Runtime",
                       description="Write MODEL as an ONNX graph with its weights in MatMulNBits form "
                                   "(no weight value changed) into OUT_DIR, which must not exist.")
    p.add_argument("model", help="registry name or .gguf path")
    p.add_argument("out_dir", help="directory to create")
    p.add_argument("--static", action="store_true",
                   help="fixed shapes (context and chunk), as NPU compilers need them")
    p.add_argument("--n-ctx", type=int, default=defaults["n_ctx"],
                   help="positions covered (dynamic) or the cache length (static) (default %(default)s)")
    p.add_argument("--chunk", type=int, default=defaults["chunk"],
                   help="static: tokens per run (default %(default)s)")
    p.add_argument("--kv-dtype", choices=("f16", "f32"), default=defaults["kv_dtype"])
    for bits in (4, 8):
        p.add_argument(f"--accuracy-{bits}bit", type=int, choices=(0, 1, 2, 3, 4), default=defaults[f"accuracy_{bits}bit"],
                       help=f"MatMulNBits accuracy_level of {bits}-bit weights: 0 float32, 4 int8 activations "
                            f"(default %(default)s)")
    p.add_argument("--genai-config", action="store_true",
                   help="also write genai_config.json for onnxruntime-genai (dynamic exports)")
    p.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from . import onnx_export, registry
    from .onnx_export.genai import write_genai_config

    options = onnx_export.ExportOptions(static=args.static, n_ctx=args.n_ctx, chunk=args.chunk,
                                        kv_dtype=args.kv_dtype, accuracy_4bit=args.accuracy_4bit,
                                        accuracy_8bit=args.accuracy_8bit)
    path = registry.resolve(args.model)
    started = time.monotonic()
    export = onnx_export.export(path, args.out_dir, options)
    if args.genai_config:
        write_genai_config(path, export)
    print(f"{export.directory}: {export.data_bytes / (1 << 20):.1f} MiB of weights, "
          f"{'static' if options.static else 'dynamic'} graph, in {time.monotonic() - started:.1f} s")
    return 0


__all__ = ["add_export_onnx_command", "cmd_export_onnx"]
