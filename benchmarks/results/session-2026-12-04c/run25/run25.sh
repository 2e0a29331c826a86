#!/usr/bin/env bash
# cProfile of the in-process replay of issue 16's http workload (profile_steps.py beside this script).
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
timeout -s TERM ${2:-360} python benchmarks/results/session-2026-12-04c/run25/profile_steps.py 2>&1 | tail -150
date
