"""Build edgesdk's wheels for linux x86_64 and linux aarch64 (the aarch64 one cross-compiled here).

    python tools/build_wheels.py --out DIR [--arch x86_64] [--arch aarch64]

Each wheel holds the pure-Python package and native/ built as one plain shared library, loaded with
ctypes (no Python C API), so it is tagged py3-none-<platform>: one wheel per architecture serves every
Python 3 and, through the run-time ISA dispatch, every CPU of that architecture (a Pi 4's Cortex-A72
without dot product, a Pi 5 or a Jetson with it).

The platform tag is the manylinux tag auditwheel finds the library consistent with (it reads the
glibc symbol versions and the libraries it links, and refuses any other library). That tag is then
checked against the systems each wheel must install on (ARCHES, "must_install_on"): the build fails
rather than ship a wheel one of them would refuse.

Needs: a C compiler for the host; for aarch64, Debian's gcc-aarch64-linux-gnu and
libc6-dev-arm64-cross (tools/test.sh installs them); auditwheel (the test extra) and wheel.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# What setup.py needs to build the wheel; nothing else of the checkout goes in.
SOURCE_PARTS = ("setup.py", "pyproject.toml", "README.md", "edgesdk", "models", "native/src", "native/include")
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.o", "build")

# Per architecture: the compiler that builds for it, and the glibc of each system its wheel must
# install on (pip there accepts manylinux_2_N for every N up to that glibc's minor version).
ARCHES = {
    "x86_64": {"cc": None, "must_install_on": {"Ubuntu 22.04": (2, 35), "Debian 12": (2, 36)}},
    "aarch64": {"cc": "aarch64-linux-gnu-gcc",
                "must_install_on": {"Raspberry Pi OS 64-bit bookworm": (2, 36), "JetPack 6 (Ubuntu 22.04)": (2, 35)}},
}
BUILD_TIMEOUT_S = 1200   # a clean native build takes ~2 min on 2 busy cores; the limit turns a hang into an error


class WheelBuildError(RuntimeError):
    pass


def host_arch() -> str:
    return os.uname().machine


def _copy_sources(dest: Path) -> None:
    for part in SOURCE_PARTS:
        src = REPO_ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=COPY_IGNORE)
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)


def _build_env(arch: str) -> dict:
    # The wheels are the CPU package: the CUDA library is built from source on the machine with the GPU
    # (README "NVIDIA GPUs"), where nvcc and the driver match it.
    env = dict(os.environ, EDGESDK_CUDA="0")
    if arch == host_arch():
        return env
    cc = ARCHES[arch]["cc"]
    if cc is None or shutil.which(cc) is None:
        raise WheelBuildError(f"cannot build for {arch} on {host_arch()}: no cross compiler {cc!r} "
                              "(Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)")
    # distutils swaps CC into LDSHARED as well, so the link runs the cross compiler too.
    env["CC"] = cc
    env.pop("LDSHARED", None)
    return env


def _run(cmd: list, **kwargs) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, **kwargs)
    if out.returncode != 0:
        raise WheelBuildError(f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{(out.stdout + out.stderr)[-6000:]}")
    return out.stdout


def build_linux_wheel(arch: str, work: Path) -> Path:
    """pip builds the wheel from a fresh copy of the sources, tagged py3-none-linux_<arch>."""
    src = work / "src"
    _copy_sources(src)
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
          "-q", "-w", str(dist), f"--config-settings=--build-option=--plat-name=linux_{arch}", str(src)],
         env=_build_env(arch))
    wheels = list(dist.glob("*.whl"))
    if len(wheels) != 1 or not wheels[0].name.endswith(f"-py3-none-linux_{arch}.whl"):
        raise WheelBuildError(f"expected one py3-none-linux_{arch} wheel, pip wrote {[w.name for w in wheels]}")
    return wheels[0]


def manylinux_tag(wheel: Path) -> str:
    """The oldest manylinux_2_N_<arch> tag auditwheel finds the wheel consistent with."""
    report = _run([sys.executable, "-m", "auditwheel", "show", str(wheel)])
    tags = re.findall(r'"(manylinux_\d+_\d+_\w+)"', report)
    if not tags:
        raise WheelBuildError(f"auditwheel found no manylinux tag the wheel is consistent with:\n{report}")
    return tags[0]


def tag_glibc(tag: str) -> tuple:
    major, minor = re.match(r"manylinux_(\d+)_(\d+)_", tag).groups()
    return int(major), int(minor)


def retag(wheel: Path, arch: str, tag: str, out: Path) -> Path:
    """The same wheel under the manylinux tag (wheel's `tags` command rewrites WHEEL and RECORD). Nothing
    needs grafting in, as auditwheel repair would: the library links only libc and libm."""
    _run([sys.executable, "-m", "wheel", "tags", "--platform-tag", tag, str(wheel)])
    tagged = wheel.with_name(wheel.name.replace(f"-linux_{arch}.whl", f"-{tag}.whl"))
    if not tagged.is_file():
        raise WheelBuildError(f"wheel tags wrote {[w.name for w in wheel.parent.glob('*.whl')]}, expected {tagged.name}")
    return Path(shutil.move(str(tagged), str(out / tagged.name)))


def build(arch: str, out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix=f"edgesdk-wheel-{arch}-") as tmp:
        linux_wheel = build_linux_wheel(arch, Path(tmp))
        tag = manylinux_tag(linux_wheel)
        glibc = tag_glibc(tag)
        refused_by = [name for name, have in ARCHES[arch]["must_install_on"].items() if glibc > have]
        if refused_by:
            raise WheelBuildError(f"the {arch} library needs glibc {glibc[0]}.{glibc[1]} ({tag}); "
                                  f"{', '.join(refused_by)} would refuse the wheel")
        return retag(linux_wheel, arch, tag, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="directory the wheels are written to")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHES),
                        help="build only this architecture (repeatable; default: all)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    built = {}
    try:
        for arch in args.arch or sorted(ARCHES):
            built[arch] = str(build(arch, args.out))
    except WheelBuildError as exc:
        print(f"build_wheels: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(built, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
