#!/usr/bin/env bash
# Session 2026-12-04 (d), run 29: issue 16's n = 2000 against n = 100 (S2) with the rate search of 2e16f35
# (steps of 1.25x from the saturated capacity, then bisection): five points, 20 s traces, no PEFT.
cd "$(dirname "$0")/.."
C=$1
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $C"
timeout -s TERM 570 python -m benchmarks.suite s-lora-table --settings S2 --adapters 100 2000 --points 5 --duration 20 --no-peft --out $OUT/table --commit $C > $OUT/table.log 2>&1; echo table rc=$?
tail -14 $OUT/table.log
grep "^|" $OUT/table/s-lora-table.md
date
