#!/usr/bin/env bash
# Session 2026-12-06d run 3: what the decode CUDA graphs' dead LoRA programs cost when a step holds few
# adapters. The graphs build each step's plan for max_loras_per_batch (256) slots, so the kernels launch
# programs for min(T, (T + 256 x 15) / 16) tiles whatever the step holds: at 1 adapter and 255 tokens 255 tiles
# for 16 with work. benchmarks/kernels.py's decode cases with few adapters, the plan for the case's own adapters
# (default) against --plan-slots 256 (the engine's grid), one process each. On an H200 also saturated S2
# n = 0, 1, 1000 at the commit (issue 12's headline in one process).
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06d/run3.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
for V in own 256; do
  A=""; [ $V = 256 ] && A="--plan-slots 256"
  timeout -s TERM 120 python benchmarks/kernels.py --lora-only --case "1 adapter," --case "24 req" --case "64 req, 64 adapters, q" \
    --case "250 req" $A --out /tmp/k_$V > /tmp/k_$V.log 2>&1
  echo "kernels plan slots $V rc=$?"; cp /tmp/k_$V/kernels.md $OUT/kernels_slots_$V.md; grep -E "^\| decode" /tmp/k_$V/kernels.md
done
if [[ "$GPU" == *H200* ]]; then
  L=$(( 585 - ($(date +%s) - T0) ))
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 --out /tmp/sat \
    --commit "$1" > /tmp/sat.log 2>&1; echo "sat rc=$?"; cp /tmp/sat/saturated.json /tmp/sat/saturated.md $OUT/
  grep -E "^\| llama" /tmp/sat/saturated.md
fi
echo "done at $(( $(date +%s) - T0 )) s"
