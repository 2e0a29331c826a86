#!/usr/bin/env bash
# Session 2026-12-03 (noon) GPU run 1 (commit 235c752): issue 16's ablations (--quick, 10 s traces) and admission
# (--quick, 10 s traces, cv 4 and 8 first) suites, each under a time limit (partial results saved).
cd "$(dirname "$0")/.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s TERM 285 python -m benchmarks.suite ablations --quick --duration 10 --out $OUT/ablations --commit 235c752 > $OUT/ablations.log 2>&1; echo ablations rc=$?
grep -E "alpha|n=|kernels|terminated" $OUT/ablations.log | cut -c1-300; date
LEFT=$(( 565 - ($(date +%s) - T0) ))
echo "admission gets $LEFT s"
timeout -s TERM $LEFT python -m benchmarks.suite admission --quick --duration 10 --cvs 4 8 1 2 --out $OUT/admission --commit 235c752 > $OUT/admission.log 2>&1; echo admission rc=$?
grep -E "cv |n=|terminated" $OUT/admission.log | cut -c1-300; date
cp .device/run1.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
