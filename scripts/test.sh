#!/usr/bin/env bash
# The test suite: CPU tests by default (Triton kernels under the interpreter, real Ray on the CPU).
# On a GPU machine: scripts/test.sh -m gpu
set -euo pipefail
cd "$(dirname "$0")/.."
exec ${PYTHON:-python3} -m pytest -q "$@"
