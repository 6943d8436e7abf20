#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
#   bash tools/test.sh [pytest args...]
#
# Needs: Python >= 3.9 with venv and pip, a C compiler, network access to PyPI
# the first time, and (for the ARM kernel tests) root or sudo to install
# Debian's aarch64 cross compiler and qemu-user the first time.
#
# Everything Python goes into ./.venv (created with --system-site-packages, so
# packages the machine already has are reused, not rebuilt); nothing is
# installed into the system Python. Set EDGESDK_TEST_VENV to use another venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${EDGESDK_TEST_VENV:-.venv}

# 1. Debian packages for the aarch64 kernel tests (cross compiler + user-mode emulation).
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "tools/test.sh: need root or sudo to install gcc-aarch64-linux-gnu and qemu-user" >&2; exit 1; }
        SUDO="sudo"
    fi
    echo "tools/test.sh: installing gcc-aarch64-linux-gnu and qemu-user"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi

# 2. A virtual environment with the package (native build included) and its
#    test extra: pytest, llama-cpp-python (the reference), gguf (test-file writer).
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install --disable-pip-version-check -q -e ".[test]"

# 3. onnxruntime builds that ship their own `onnxruntime` module, each in its own venv under
#    $EDGESDK_HOME/venvs (the OpenVINO provider's tests, the ONNX benchmark's genai reference).
bash tools/onnx_envs.sh

# 4. The real models (no network when already cached in $EDGESDK_HOME).
"$VPY" -m edgesdk.cli pull smollm2-135m-instruct
"$VPY" -m edgesdk.cli pull gemma3-270m

# 5. Everything. Exit status 5 (no tests collected) means a broken test tree or
#    a filter that matched nothing: report it as the failure it is.
set +e
"$VPY" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "tools/test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
