#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
#   bash tools/test.sh [pytest args...]
# Needs: Python >= 3.9 with pip, a C compiler, and (for the ARM tests) root or
# sudo to install Debian's aarch64 cross compiler and qemu-user the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# 1. Debian packages for the aarch64 kernel tests (cross compiler + user-mode emulation).
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "tools/test.sh: installing gcc-aarch64-linux-gnu and qemu-user"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi

# 2. The package (native build included) with its test extra: llama-cpp-python, gguf, pytest.
"$PY" -m pip install --disable-pip-version-check -q -e ".[test]"

# 3. The real models (no network when already cached in $EDGESDK_HOME).
"$PY" -m edgesdk.cli pull smollm2-135m-instruct
"$PY" -m edgesdk.cli pull gemma3-270m

# 4. Everything.
exec "$PY" -m pytest "$@"
