#!/usr/bin/env bash
# Installs sloray, its test dependencies and the pinned linters into the current Python. On a machine without an NVIDIA GPU
# torch is pinned to the CPU build (2.13.0) first, so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v nvidia-smi >/dev/null 2>&1; then
  $PY -m pip install -q "torch==2.13.0"
fi
$PY -m pip install -q -e ".[test,lint]"
