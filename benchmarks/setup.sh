#!/usr/bin/env bash
# Installs the classical compressors that benchmarks/compare.py measures lmzip against.
# Idempotent: only what is missing gets installed. Never fails the whole run because one tool
# cannot be had: compare.py skips a missing compressor and reports it as missing.
# Usage: bash benchmarks/setup.sh
set -u

installed=()
missing=()

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
    # $1 = Debian package, rest = binaries any one of which proves it is present.
    local pkg=$1
    shift
    local bin
    for bin in "$@"; do
        if have "$bin"; then
            echo "setup: $pkg already present ($bin)" >&2
            return 0
        fi
    done
    if ! have apt-get; then
        missing+=("$pkg (no apt-get)")
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if have sudo; then sudo="sudo -n"; else missing+=("$pkg (not root)"); return 0; fi
    fi
    # The package lists may be absent on a fresh machine; update them once per run.
    if [ -z "${APT_UPDATED:-}" ]; then
        $sudo apt-get update -qq >/dev/null 2>&1 || true
        APT_UPDATED=1
    fi
    if DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "$pkg" >/dev/null 2>&1; then
        installed+=("$pkg")
    else
        missing+=("$pkg")
    fi
}

# GNU time measures each compressor's peak memory; `command -v time` finds the shell keyword.
if [ -x /usr/bin/time ]; then
    echo "setup: time already present (/usr/bin/time)" >&2
else
    apt_install time /usr/bin/time
fi
apt_install zstd zstd
apt_install xz-utils xz
apt_install brotli brotli
apt_install bzip2 bzip2
apt_install zpaq zpaq
# PPMd: the 7zip package (7zz) is the current 7-Zip; p7zip-full (7z) is the older wrapper.
# Try 7zip first and fall back to p7zip-full; pyppmd below covers the case where neither exists.
apt_install 7zip 7zz 7z
if ! have 7zz && ! have 7z; then
    apt_install p7zip-full 7z
fi

if python3 -c 'import pyppmd' >/dev/null 2>&1; then
    echo "setup: pyppmd already present" >&2
elif python3 -m pip install -q pyppmd >/dev/null 2>&1; then
    installed+=("pyppmd (pip)")
else
    missing+=("pyppmd (pip)")
fi

if python3 -c 'import matplotlib' >/dev/null 2>&1; then
    echo "setup: matplotlib already present" >&2
elif python3 -m pip install -q matplotlib >/dev/null 2>&1; then
    installed+=("matplotlib (pip)")
else
    missing+=("matplotlib (pip)")
fi

echo "setup: installed: ${installed[*]:-nothing}"
echo "setup: could not install: ${missing[*]:-nothing}"
exit 0
