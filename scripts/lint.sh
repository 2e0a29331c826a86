#!/usr/bin/env bash
# The linters CI runs before the tests: ruff (lint + format check) on the whole tree, mypy on app/, kernels/,
# deployments/ (the paths and settings are in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m ruff check .
$PY -m ruff format --check .
$PY -m mypy
