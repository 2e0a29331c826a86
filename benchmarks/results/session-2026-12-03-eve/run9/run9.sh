#!/usr/bin/env bash
# Session 2026-12-03 (evening) GPU run 9: the prefetch-under-evictions GPU test, then issue 16's admission
# suite with 30 s traces (not --quick's 10 s) at cv 4 and 8, at 24 req/s (the saturated S2 n = 1000 capacity
# of runs 7-8), partial results saved if the time limit ends it.
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 100 python -m pytest -q -m gpu -x tests/test_engine_gpu.py -k "prefetch_under" > $OUT/tests.log 2>&1; echo tests rc=$?
tail -3 $OUT/tests.log
LEFT=$(( 415 - ($(date +%s) - T0) ))
echo "admission gets $LEFT s"; date
timeout -s TERM $LEFT python -m benchmarks.suite admission --rate 24 --cvs 4 8 --duration 30 --burst 160 --out $OUT/adm --commit $C > $OUT/adm.log 2>&1; echo adm rc=$?
grep -E "cv |saturated|terminated" $OUT/adm.log | cut -c1-250; date
cp .device/run9.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
