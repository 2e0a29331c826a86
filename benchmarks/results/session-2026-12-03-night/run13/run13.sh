#!/usr/bin/env bash
# Session 2026-12-03 (night) GPU run 13: the s-lora-table rate search with the keeping-up criterion (49bf07f):
# S2, base and n = 1000, 4 points of 20 s traces each, no PEFT (time).
cd "$(dirname "$0")/.."
C=$1
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s TERM 380 python -m benchmarks.suite s-lora-table --settings S2 --adapters 0 1000 --points 4 --duration 20 --burst 160 --no-peft --out $OUT/table --commit $C > $OUT/table.log 2>&1; echo table rc=$?
grep -E "^\[s-lora" $OUT/table.log | cut -c1-250; grep -A12 "^| setting" $OUT/table/s-lora-table.md | head -12; grep -E "^- S2" $OUT/table/s-lora-table.md
date
cp .device/run13.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
