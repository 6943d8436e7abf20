"""Build llama-cpp-python once per configuration, cache the wheel under $EDGESDK_HOME, install it.

    python tools/build_llamacpp.py [--config ci|avx2] [--install | --venv DIR] [--print-wheel]

llama.cpp is edgesdk's test reference, benchmark peer, second backend and RPC engine. Its
default source build (-march=native) turns on its AMX buffer types, which crash on CPUs
that have AMX, and leaves out the RPC backend. The configurations here are the ones the
project uses, each built from the same pinned release and kept as a wheel keyed by the
configuration and the CPU features it was built for:

  ci    every x86 SIMD extension this CPU has up to AVX-512 (VNNI, VBMI, BF16), AMX off,
        runtime weight repacking on, GGML_RPC on (the ggml-rpc library `edgesdk worker`
        and the llamacpp backend's workers use). tools/test.sh installs it into the test venv.
  avx2  AVX2/FMA/F16C/BMI2 only: llama.cpp as it runs on an Intel N100-class mini-PC, for the
        benchmark's "x86 mini-PC" rows (installed into its own venv with --venv).

Only this script reaches the network (the sdist from the package index, the first time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"   # the release the suite is tested against

# CPU flag (as /proc/cpuinfo spells it) -> ggml's CMake option, in the order they build on.
X86_OPTIONS = [
    ("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"), ("f16c", "GGML_F16C"),
    ("bmi2", "GGML_BMI2"), ("avx_vnni", "GGML_AVX_VNNI"), ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"), ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
]
AVX2_ONLY = {"avx", "avx2", "fma", "f16c", "bmi2"}
# LLAVA_BUILD: the multimodal library (mtmd) is imported only by llava chat handlers edgesdk never
# uses, and is a large share of the build time.
ALWAYS_OFF = ["GGML_NATIVE", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "LLAMA_CURL", "LLAVA_BUILD"]


def edgesdk_home() -> Path:
    return Path(os.environ.get("EDGESDK_HOME") or Path.home() / ".cache" / "edgesdk")


def cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_options(config: str, flags: set) -> dict:
    """CMake -D options of a configuration on a CPU with these flags."""
    options = {name: "OFF" for name in ALWAYS_OFF}
    if platform.machine() in ("x86_64", "AMD64"):
        wanted = AVX2_ONLY if config == "avx2" else {flag for flag, _ in X86_OPTIONS}
        if config == "avx2" and not AVX2_ONLY <= flags:
            sys.exit(f"build_llamacpp: this CPU lacks {', '.join(sorted(AVX2_ONLY - flags))}; "
                     "the avx2 configuration cannot run here")
        for flag, option in X86_OPTIONS:
            options[option] = "ON" if flag in wanted and flag in flags else "OFF"
    else:
        options["GGML_NATIVE"] = "ON"   # ARM: no AMX to avoid; the compiler's own target
    options["GGML_CPU_REPACK"] = "ON"
    options["GGML_RPC"] = "ON" if config == "ci" else "OFF"
    return options


def cache_dir(config: str, options: dict) -> Path:
    key = hashlib.sha256(json.dumps([LLAMA_CPP_PYTHON, platform.machine(), sorted(options.items())])
                         .encode()).hexdigest()[:12]
    return edgesdk_home() / "llamacpp" / f"{LLAMA_CPP_PYTHON}-{config}-{key}"


def built_wheel(where: Path):
    wheels = sorted(where.glob("llama_cpp_python-*.whl"))
    return wheels[0] if wheels else None


def build(config: str, options: dict, where: Path) -> Path:
    """The cached wheel of this configuration, building it first when absent (atomically)."""
    wheel = built_wheel(where)
    if wheel:
        return wheel
    where.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{config}-", dir=where.parent))
    try:
        env = dict(os.environ)
        env["CMAKE_ARGS"] = " ".join(f"-D{k}={v}" for k, v in sorted(options.items()))
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        print(f"build_llamacpp: building llama-cpp-python {LLAMA_CPP_PYTHON} ({config}: {env['CMAKE_ARGS']}); "
              "this takes 10-20 minutes on 2 cores, once", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q",
                        "--no-binary", "llama-cpp-python", f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                        "-w", str(work)], env=env, check=True)
        if not built_wheel(work):
            sys.exit(f"build_llamacpp: pip produced no wheel in {work}")
        (work / "build.json").write_text(json.dumps({"config": config, "cmake": options}, indent=1))
        os.replace(work, where)   # the cache entry appears whole or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return built_wheel(where)


def installed_from(python: str) -> str:
    """The file URL the environment's llama-cpp-python was installed from, or ''."""
    probe = ("import importlib.metadata as m, json\n"
             "try:\n d = m.distribution('llama-cpp-python')\n"
             " print(json.loads(d.read_text('direct_url.json') or '{}').get('url', ''))\n"
             "except m.PackageNotFoundError:\n print('')\n")
    return subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def install(python: str, wheel: Path) -> None:
    if installed_from(python) == wheel.resolve().as_uri():
        return
    subprocess.run([python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)], check=True)
    # Its own dependencies (numpy, typing-extensions, diskcache, jinja2), without touching the binary.
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("ci", "avx2"), default="ci")
    where_to = parser.add_mutually_exclusive_group()
    where_to.add_argument("--install", action="store_true", help="install into this Python's environment")
    where_to.add_argument("--venv", type=Path, help="create (or reuse) this venv and install into it")
    parser.add_argument("--print-wheel", action="store_true", help="print the cached wheel's path")
    args = parser.parse_args(argv)

    options = cmake_options(args.config, cpu_flags())
    wheel = build(args.config, options, cache_dir(args.config, options))
    if args.install:
        install(sys.executable, wheel)
    elif args.venv:
        python = args.venv / "bin" / "python"
        if not python.exists():
            venv.create(args.venv, with_pip=True)
        install(str(python), wheel)
    if args.print_wheel:
        print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
