#!/usr/bin/env bash
# GPU time of a decode step at the http workload's batch (gpu_steps.py beside this script).
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
PYTHONPATH=.:$PYTHONPATH timeout -s TERM ${2:-240} python benchmarks/results/session-2026-12-04c/run26/gpu_steps.py 2>&1 | grep -v Warning | tail -90
date
