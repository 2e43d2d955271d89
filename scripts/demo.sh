#!/usr/bin/env bash
# Set everything up, then run the local stack: SeaweedFS + a cache node, a demo model read back.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
