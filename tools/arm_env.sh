#!/usr/bin/env bash
# An aarch64 Python to test the aarch64 wheel in, run on an x86 machine under qemu user-mode emulation:
# Debian bookworm arm64 (what Raspberry Pi OS 64-bit is built on), its python3 and a venv with pip.
#   bash tools/arm_env.sh        # builds it the first time (~2 min and ~40 MB download), prints its directory
#
# Made once and cached in $EDGESDK_HOME/arm64-bookworm (default ~/.cache/edgesdk). Run Python in it with
#   qemu-aarch64 -L DIR/rootfs -cpu cortex-a72 DIR/venv/bin/python ...
# Needs debootstrap and qemu-user (tools/test.sh installs them), root (debootstrap) and network access the
# first time.
#
# Why not a chroot: running the root file system's programs transparently needs binfmt_misc, a host-wide
# kernel setting that containers (CI's included) usually may not change. So nothing of the arm64 system is
# executed while it is made: debootstrap only downloads (--foreign), the packages are unpacked here, and the
# one thing run under qemu is Python itself. Hence also: a guest program cannot start another guest program
# (the host kernel cannot execute an aarch64 binary), so the venv is made without pip and pip is bootstrapped
# from Debian's pip wheel, which installs wheels in-process.
set -euo pipefail

HOME_DIR=${EDGESDK_HOME:-$HOME/.cache/edgesdk}
DIR="$HOME_DIR/arm64-bookworm"
MIRROR=${EDGESDK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Written last: a directory without it is a half-made environment and is made again.
STAMP="$DIR/complete"

if [ -f "$STAMP" ]; then
    echo "$DIR"
    exit 0
fi
for tool in debootstrap qemu-aarch64 dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "tools/arm_env.sh: needs $tool (Debian: apt-get install debootstrap qemu-user)" >&2; exit 1; }
done

rm -rf "$DIR"
mkdir -p "$DIR"
ROOT="$DIR/rootfs"
echo "tools/arm_env.sh: downloading Debian bookworm arm64 with python3 into $ROOT" >&2
debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-venv \
    bookworm "$ROOT" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$DIR/debootstrap.log" >&2; exit 1; }

# The first stage unpacked only the essential packages; unpack the rest (python3 and what it needs).
# --keep-directory-symlink: bookworm's /lib is a link to usr/lib and must stay one.
while read -r package deb; do
    dpkg-deb --fsys-tarfile "$ROOT/$deb" | tar -x --keep-directory-symlink -C "$ROOT"
done < "$ROOT/debootstrap/debpaths"
rm -f "$ROOT"/var/cache/apt/archives/*.deb

# qemu-aarch64 -L ROOT makes the guest's absolute paths resolve inside ROOT first, so the venv may live
# beside it. --copies: a symlink to /usr/bin/python3 would be followed by the host, to the host's python.
GUEST=(qemu-aarch64 -L "$ROOT")
"${GUEST[@]}" "$ROOT/usr/bin/python3" -m venv --copies --without-pip "$DIR/venv"
PIP_WHEEL=$(ls "$ROOT"/usr/share/python-wheels/pip-*.whl)
"${GUEST[@]}" "$DIR/venv/bin/python" "$PIP_WHEEL/pip" install -q --disable-pip-version-check --no-index "$PIP_WHEEL"
"${GUEST[@]}" "$DIR/venv/bin/python" -c "import platform, sys; assert platform.machine() == 'aarch64', platform.machine(); print(sys.version)" >&2

# Made with sudo (debootstrap wants root): the tests that install into the venv run as the user.
if [ -n "${SUDO_UID:-}" ]; then
    chown -R "$SUDO_UID:$SUDO_GID" "$DIR"
fi
touch "$STAMP"
echo "$DIR"
