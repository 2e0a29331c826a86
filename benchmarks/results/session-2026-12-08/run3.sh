#!/usr/bin/env bash
# Session 08 run 3: on an H200, issue 12's headline on its goal GPU (session 07g's run2.sh: saturated S2 n = 0, 1,
# 1000, 2000; Llama-3-8B all-linear n = 0, 1000); on any other GPU, this session's run 5 (early abort under overload).
# Carry .device and .whl, begin with the Ray bundle's prefix:  bash benchmarks/results/session-2026-12-08/run3.sh COMMIT
cd "$(dirname "$0")/../../.."
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  bash benchmarks/results/session-2026-12-07g/run2.sh "$1"
else
  bash benchmarks/results/session-2026-12-08/run5.sh "$1"
fi
