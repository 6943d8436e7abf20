"""The engine the fuzz targets in this folder run on: atheris (libFuzzer, coverage-guided) when it is
installed, else a replay of the corpus plus random mutations of it for the same time box.

    python tests/fuzz/fuzz_gguf.py [libFuzzer flags] WRITABLE_CORPUS_DIR SEED_CORPUS_DIR...

Atheris has wheels for Linux x86_64 only; elsewhere (a Raspberry Pi) the fallback keeps the
targets exercised, without coverage feedback and without libFuzzer's per-input -timeout and
-rss_limit_mb (the caller's own timeout still bounds the run). Both print libFuzzer's closing line,
"Done N runs in T second(s)", and on a finding write the input to <artifact_prefix>crash-<sha1>
and exit non-zero.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, ahead of an installed edgesdk

try:
    import atheris
except ImportError:  # no wheel for this platform
    atheris = None

# How many bytes the fallback's mutations may grow an input to: the seeds are a few KB.
FALLBACK_MAX_LEN = 1 << 16


def instrumented(*modules: str):
    """Context for importing the code under test, so that atheris sees the branches of `modules` (and
    their submodules). Instrumenting costs seconds per large module at start-up: name only the code
    under test."""
    if atheris is None:
        return contextlib.nullcontext()
    return atheris.instrument_imports(include=list(modules))


def main(one_input) -> None:
    if atheris is not None:
        atheris.Setup(sys.argv, one_input)
        atheris.Fuzz()
    else:
        _fallback(one_input, sys.argv[1:])


def _mutate(data: bytes, rng: random.Random, pool) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(6)
        at = rng.randrange(len(buf) + 1)
        if kind == 0 and buf:                                   # flip a bit
            at = min(at, len(buf) - 1)
            buf[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and buf:                                 # set an interesting byte
            at = min(at, len(buf) - 1)
            buf[at] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif kind == 2:                                         # insert random bytes
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 3 and buf:                                 # delete a run
            del buf[at:at + rng.randint(1, 32)]
        elif kind == 4 and buf:                                 # duplicate a run
            start = rng.randrange(len(buf))
            buf[at:at] = buf[start:start + rng.randint(1, 64)]
        elif kind == 5 and pool:                                # splice in part of another input
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            buf[at:at] = other[start:start + rng.randint(1, 256)]
    return bytes(buf[:FALLBACK_MAX_LEN])


def _fallback(one_input, args) -> None:
    flags = dict(a[1:].split("=", 1) for a in args if a.startswith("-") and "=" in a)
    dirs = [Path(a) for a in args if not a.startswith("-")]
    seconds = float(flags.get("max_total_time", 10))
    prefix = flags.get("artifact_prefix", "./")
    rng = random.Random(int(flags.get("seed", 0)) or None)
    pool = [p.read_bytes() for d in dirs if d.is_dir() for p in sorted(d.iterdir()) if p.is_file()]
    started = time.monotonic()
    runs = 0
    queue = list(pool)
    while queue or time.monotonic() - started < seconds:
        data = queue.pop(0) if queue else _mutate(rng.choice(pool) if pool else b"", rng, pool)
        try:
            one_input(data)
        except BaseException:  # noqa: BLE001 - any escape is the finding
            traceback.print_exc()
            crash = f"{prefix}crash-{hashlib.sha1(data).hexdigest()}"
            with open(crash, "wb") as f:
                f.write(data)
            print(f"==fallback== ERROR: uncaught exception; test unit written to {crash}", flush=True)
            sys.exit(1)
        runs += 1
    print(f"Done {runs} runs in {int(time.monotonic() - started)} second(s) (fallback engine, no coverage)",
          flush=True)
