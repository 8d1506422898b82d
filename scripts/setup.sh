#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine (as root) for overcast.
#
#   bash scripts/setup.sh run    # what `make run` needs
#   bash scripts/setup.sh test   # what `make test` / `make bench` need
#
# A second run does no network work: apt is touched only when a package is
# missing, pip only when pyproject.toml is newer than its stamp in .stamps/.
set -euo pipefail

usage() {
    echo "usage: $0 run|test" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
mode=$1
case "$mode" in
    run | test) ;;
    *) usage ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- Debian packages --------------------------------------------------------

RUN_PACKAGES=(qemu-system-x86 qemu-utils python3-venv)
TEST_PACKAGES=(postgresql wrk etcd-server iproute2)
# Packages needed to build guest images (for both run and test).
GUEST_IMAGE_PACKAGES=(linux-image-amd64 busybox-static syslinux syslinux-common mtools dosfstools
    fdisk cpio)

packages=("${RUN_PACKAGES[@]}" "${GUEST_IMAGE_PACKAGES[@]}")
if [[ $mode == test ]]; then
    packages+=("${TEST_PACKAGES[@]}")
fi

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ $status != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}"
fi

# --- Python virtualenv --------------------------------------------------------

venv=.venv
stamps=.stamps

if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: creating virtualenv $venv"
    rm -rf "$venv" "$stamps"
    python3 -m venv "$venv"
fi

mkdir -p "$stamps"
if [[ $mode == test ]]; then
    spec='.[test]'
    stamp=$stamps/pip-test
else
    spec='.'
    stamp=$stamps/pip-run
fi

# An up-to-date test install also satisfies `run` (it is a superset).
if [[ $mode == run && ! pyproject.toml -nt $stamps/pip-test ]]; then
    :
elif [[ pyproject.toml -nt $stamp ]]; then
    echo "setup: pip install -e '$spec'"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
    touch "$stamp"
fi

# --- Test guest image -----------------------------------------------------------

# `make run` registers it as a library drive and the tests boot it; the script
# returns at once when its outputs are up to date.
bash scripts/build-guest.sh
