#!/usr/bin/env bash
# Installs sloray, its test dependencies and the pinned linters into the current Python. On a machine without an NVIDIA GPU
# torch is pinned to the CPU build (2.13.0) first, so nothing pulls a multi-GB CUDA build.
# Prints one line per stage (pip's own output stays quiet; pip's errors still show).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { echo "[setup $(date +%H:%M:%S)] $*"; }
step "python: $($PY --version 2>&1) ($(command -v "$PY"))"
if ! command -v nvidia-smi >/dev/null 2>&1; then
  step "no NVIDIA GPU: installing torch 2.13.0 (CPU build) ..."
  $PY -m pip install -q "torch==2.13.0"
else
  step "NVIDIA GPU found: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); torch comes with sloray's dependencies"
fi
step "installing sloray, its test dependencies and the pinned linters (ray[serve], transformers, peft, triton, ruff, mypy, ...; minutes on a fresh machine) ..."
$PY -m pip install -q -e ".[test,lint]"
step "checking the imports ..."
$PY -c "import torch, ray, transformers, app, kernels, deployments; transformers.AutoConfig.for_model('llama'); print(f'torch {torch.__version__}, ray {ray.__version__}, transformers {transformers.__version__}, cuda {torch.cuda.is_available()}')"
step "done: 'serve run serve_config.yaml' serves the demo, 'bash scripts/test.sh' runs the CPU tests"
