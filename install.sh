#!/usr/bin/env bash
# Installs regode and its dependencies into the current Python environment.
# torch: the CPU build 2.13.0 when no torch is present (an installed torch, e.g. a CUDA build, is kept).
# Usage: bash install.sh [extras], e.g. bash install.sh test
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
extras=${1:-}
"$PY" -m pip install --quiet -e ".${extras:+[$extras]}"
