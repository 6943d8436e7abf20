#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
#   bash tools/test.sh [pytest args...]
#
# Needs: Python >= 3.9 with venv and pip, a C compiler, network access to PyPI
# the first time, and (for the ARM kernel tests) root or sudo to install
# Debian's aarch64 cross compiler, qemu-user and debootstrap the first time.
#
# Everything Python goes into ./.venv (created with --system-site-packages, so
# packages the machine already has are reused, not rebuilt); nothing is
# installed into the system Python. Set EDGESDK_TEST_VENV to use another venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${EDGESDK_TEST_VENV:-.venv}

# 1. Debian packages for the aarch64 tests (cross compiler + user-mode emulation; debootstrap
#    downloads the arm64 Python environment the aarch64 wheel is tested in).
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null \
        || ! command -v debootstrap >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "tools/test.sh: need root or sudo to install gcc-aarch64-linux-gnu, qemu-user and debootstrap" >&2; exit 1; }
        SUDO="sudo"
    fi
    echo "tools/test.sh: installing gcc-aarch64-linux-gnu, qemu-user and debootstrap"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user \
        debootstrap
fi

# 1b. The CUDA compiler: tests/test_cuda.py compiles native/cuda for sm_87 and sm_90 on every machine
#    (no GPU needed). nvcc from PATH, $CUDA_HOME or /usr/local/cuda (tools/build_cuda.py looks there);
#    else Debian/Ubuntu's nvidia-cuda-toolkit. NVIDIA's pip wheels are no substitute:
#    nvidia-cuda-nvcc-cu12 (12.9) holds ptxas, libnvvm and the crt headers but not the nvcc driver,
#    cicc or cudafe++, so it cannot compile a .cu file.
if ! "$PY" -c "import sys; sys.path.insert(0, 'tools'); import build_cuda; sys.exit(build_cuda.find_nvcc() is None)"
then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "tools/test.sh: no nvcc found; installing nvidia-cuda-toolkit"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q nvidia-cuda-toolkit || {
        echo "tools/test.sh: could not install nvidia-cuda-toolkit: install the CUDA toolkit (nvcc) from NVIDIA" >&2
        exit 1; }
fi

# 2. A virtual environment with the package (native build included; the CUDA library too, nvcc being
#    there) and its
#    test extra: pytest, llama-cpp-python (the reference), gguf (test-file writer).
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
fi
VPY="$VENV/bin/python"
# llama.cpp as the suite uses it (reference, second backend, RPC engine): built once without
# its AMX buffers (they crash on AMX CPUs) and with GGML_RPC, cached under $EDGESDK_HOME.
"$VPY" tools/build_llamacpp.py --config ci --install
"$VPY" -m pip install --disable-pip-version-check -q -e ".[test]"

# 3. onnxruntime-openvino ships its own `onnxruntime` module: its own venv under $EDGESDK_HOME/venvs
#    for the OpenVINO provider's tests (`tools/onnx_envs.sh genai` adds the ONNX benchmark's reference).
bash tools/onnx_envs.sh openvino

# 4. The real models (no network when already cached in $EDGESDK_HOME).
"$VPY" -m edgesdk.cli pull smollm2-135m-instruct
"$VPY" -m edgesdk.cli pull gemma3-270m

# 5. The Debian arm64 Python the aarch64 wheel is tested in (made once, ~3 min; then cached in
#    $EDGESDK_HOME/arm64-bookworm). debootstrap runs as root; arm_env.sh gives the result to the sudo user.
if [ "$(id -u)" -eq 0 ]; then
    bash tools/arm_env.sh >/dev/null
else
    sudo env EDGESDK_HOME="${EDGESDK_HOME:-$HOME/.cache/edgesdk}" bash tools/arm_env.sh >/dev/null
fi

# 6. Everything. Exit status 5 (no tests collected) means a broken test tree or
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
