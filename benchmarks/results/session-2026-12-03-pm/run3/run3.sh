#!/usr/bin/env bash
# Session 2026-12-03 (pm) GPU run 3 (commit C, argument 1): saturated S2 on the Llama-3-8B shape with LoRA on
# all seven linear layers (n = 0, 1, 1000; equal workloads), then the admission suite (FCFS / LCFS / early
# abort at cv 1, 4, 8, at FCFS's max sustainable rate found by the rate search), 10 s traces.
C=$1
cd "$(dirname "$0")/.."
cp .device/run3.sh $OUT/
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 130 python benchmarks/saturated.py --out $OUT/sat_8b --settings llama3-8b-all --adapters 0 1 1000 --commit $C > $OUT/sat_8b.log 2>&1; echo 8b rc=$?
grep -E "req/s" $OUT/sat_8b.log | grep -v "^|" | cut -c1-300; date
timeout 420 python -m benchmarks.suite admission --quick --duration 10 --cvs 1 4 8 --commit $C --out $OUT/admission --work /tmp/admw > $OUT/admission.log 2>&1; echo admission rc=$?
grep -E "^\| [0-9]|rate|saturated" $OUT/admission/*.md | cut -c1-250 | head -30; date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
