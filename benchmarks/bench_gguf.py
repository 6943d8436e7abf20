"""How long opening a GGUF file takes: header, all metadata (vocabulary
included) and the tensor index, with edgesdk.gguf and with the gguf package's
GGUFReader on the same file, in the same run.

    python benchmarks/bench_gguf.py [--repeat N] [MODEL ...]

MODEL is a registry name or a .gguf path (default: both real test models).
Prints the median wall and CPU time of each reader and the ratios GGUFReader /
edgesdk (GGUFReader's parse alone, and with contents() giving the same Python
values as edgesdk.gguf).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from edgesdk import gguf, registry  # noqa: E402

DEFAULT_MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


def open_edgesdk(path: str) -> int:
    with gguf.open(path) as f:
        return len(f.metadata) + len(f.tensors)


def open_gguf_reader(path: str) -> int:
    """GGUFReader's parse only: fields stay numpy parts, not Python values."""
    import gguf as gguf_pkg

    reader = gguf_pkg.GGUFReader(path)
    return len(reader.fields) + len(reader.tensors)


def open_gguf_reader_values(path: str) -> int:
    """GGUFReader plus contents(): Python values, the same result edgesdk.gguf gives."""
    import gguf as gguf_pkg

    reader = gguf_pkg.GGUFReader(path)
    values = [field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")]
    return len(values) + len(reader.tensors)


def median_ms(fn, path: str, repeat: int) -> Tuple[float, float]:
    """Median wall and CPU (process) time in ms. On a shared machine the wall
    time includes waiting for a core; the CPU time is what the parse costs."""
    fn(path)  # warm the page cache and imports
    walls, cpus = [], []
    for _ in range(repeat):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        fn(path)
        walls.append(time.perf_counter() - wall_start)
        cpus.append(time.process_time() - cpu_start)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    print("median ms, wall / CPU; ratio = GGUFReader time / edgesdk time (CPU)")
    print(f"{'model':34} {'edgesdk':>13} {'GGUFReader':>15} {'ratio':>6} {'+contents()':>15} {'ratio':>6}")
    for model in args.models:
        path = str(registry.resolve(model))
        ours = median_ms(open_edgesdk, path, args.repeat)
        parse = median_ms(open_gguf_reader, path, max(3, args.repeat // 3))
        values = median_ms(open_gguf_reader_values, path, max(3, args.repeat // 3))
        print(f"{os.path.basename(path):34} {ours[0]:6.1f}/{ours[1]:6.1f} {parse[0]:7.0f}/{parse[1]:7.0f} "
              f"{parse[1] / ours[1]:5.0f}x {values[0]:7.0f}/{values[1]:7.0f} {values[1] / ours[1]:5.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
