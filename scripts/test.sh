#!/usr/bin/env bash
# The test suite: CPU tests by default (Triton kernels under the interpreter, real Ray on the CPU).
# On a GPU machine: scripts/test.sh -m gpu. The 15 slowest tests are listed at the end (CI keeps to 15 min).
set -euo pipefail
cd "$(dirname "$0")/.."
exec ${PYTHON:-python3} -m pytest -q --durations=15 "$@"
