#!/usr/bin/env bash
# Virtual environments for the ONNX Runtime builds that ship their own `onnxruntime` module and so
# cannot share the test venv: onnxruntime-openvino (OpenVINO's CPU device here, Intel NPUs and
# GPUs on a Core Ultra) and onnxruntime-genai (the benchmark's reference). Each is made once under
# $EDGESDK_HOME/venvs and reused while its stamp names the same packages.
#   bash tools/onnx_envs.sh [openvino] [genai]      (default: both)
# Prints nothing when the environments are already there.
set -euo pipefail
HOME_DIR=${EDGESDK_HOME:-$HOME/.cache/edgesdk}
PY=${PYTHON:-python3}
OPENVINO_PACKAGES="onnxruntime-openvino==1.24.1 numpy"
GENAI_PACKAGES="onnxruntime-genai==0.18.0 numpy"

make_env() {  # name, packages
    local dir="$HOME_DIR/venvs/$1" stamp="$HOME_DIR/venvs/$1/edgesdk-packages"
    if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$2" ]; then
        return 0
    fi
    echo "tools/onnx_envs.sh: creating $dir ($2)"
    rm -rf "$dir.partial"
    "$PY" -m venv "$dir.partial"        # no system site packages: its onnxruntime must be the only one
    # shellcheck disable=SC2086
    "$dir.partial/bin/python" -m pip install --disable-pip-version-check -q $2
    echo "$2" > "$dir.partial/edgesdk-packages"
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
}

mkdir -p "$HOME_DIR/venvs"
for which in "${@:-openvino genai}"; do
    for name in $which; do
        case "$name" in
            openvino) make_env ort-openvino "$OPENVINO_PACKAGES" ;;
            genai) make_env ort-genai "$GENAI_PACKAGES" ;;
            *) echo "tools/onnx_envs.sh: unknown environment $name (openvino, genai)" >&2; exit 2 ;;
        esac
    done
done
