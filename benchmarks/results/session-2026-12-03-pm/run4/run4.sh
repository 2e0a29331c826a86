#!/usr/bin/env bash
# Session 2026-12-03 (pm) GPU run 4 (commit C, argument 1): each LoRA launch alone (--parts) in the S2 decode
# and mixed q/k/v/o steps and the all-module decode steps, against its bytes.
C=$1
cd "$(dirname "$0")/.."
cp .device/run4.sh $OUT/
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 200 python benchmarks/kernels.py --out $OUT/kernels --lora-only --parts --case "q/k/v/o" --case "decode 256" > $OUT/kernels.log 2>&1; echo kernels rc=$?
grep -E "graph|shrink|expand" $OUT/kernels.log | cut -c1-200; date
