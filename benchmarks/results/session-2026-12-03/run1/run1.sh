#!/usr/bin/env bash
# Session 2026-12-03 GPU run 1: host time per launch (hostprobe.py); saturated S2 7B baseline at the session start.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
python benchmarks/results/session-2026-12-03/hostprobe.py > $OUT/hostprobe.json 2> $OUT/hostprobe.err; echo probe rc=$?
cat $OUT/hostprobe.json; tail -5 $OUT/hostprobe.err; date
timeout 240 python benchmarks/saturated.py --out $OUT/sat7b --settings llama2-7b-qkvo --adapters 0 1 1000 --commit cd9fce5 > $OUT/sat7b.log 2>&1; echo sat rc=$?
grep -E "req/s" $OUT/sat7b.log | cut -c1-220; date
cp .device/run1.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
