#!/usr/bin/env bash
# (1) cProfile of the in-process replay of issue 16's http workload (profile_steps.py beside this script);
# (2) with what time is left, the http suite with 2 ingress replicas (does a second replica cost TTFT at 8 req/s?).
cd "$(dirname "$0")/.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
PYTHONPATH=.:$PYTHONPATH timeout -s TERM 300 python benchmarks/results/session-2026-12-04c/run25/profile_steps.py > $OUT/profile.log 2>&1; echo profile rc=$?
grep -E "unprofiled|profiled:" $OUT/profile.log
LEFT=$(( ${2:-440} - ($(date +%s) - T0) ))
echo "http with $LEFT s left"
[ $LEFT -gt 150 ] && timeout -s TERM $LEFT python -m benchmarks.suite http --quick --ingress-replicas 2 --out $OUT/http2 --commit $1 > $OUT/http2.log 2>&1; echo http rc=$?
grep "^|" $OUT/http2/http.md
date
