#!/usr/bin/env bash
# Session 06f run 3: issue 16's s-lora-table on the settings that never ran on a GPU: S1 (Llama-2-7B, rank 8) and
# S4 (Llama-2-13B, ranks 64 / 32 / 16), the base model and n = 1000, a short rate search (2 replays of 10 s), no
# PEFT; then llama3-8b-all the same way if time is left.
# bash benchmarks/results/session-2026-12-06f/run3.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
for s in "S1 S4" llama3-8b-all; do
  L=$(( 585 - ($(date +%s) - T0) )); [ $L -lt 150 ] && { echo "no time for $s"; continue; }
  n=$(echo $s | tr -d ' '); timeout -s TERM $L python -m benchmarks.suite s-lora-table --quick --settings $s \
    --adapters 0 1000 --points 2 --duration 10 --no-peft --out /tmp/$n --commit $1 > $OUT/$n.log 2>&1
  echo "$s rc=$? at $(( $(date +%s) - T0 )) s"; for f in /tmp/$n/*.json /tmp/$n/*.md; do [ -f "$f" ] && cp "$f" "$OUT/${n}_$(basename $f)"; done; tail -12 $OUT/$n.log
done
