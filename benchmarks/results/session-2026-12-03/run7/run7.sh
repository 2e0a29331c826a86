#!/usr/bin/env bash
# Session 2026-12-03 GPU run 7 (commit e8c43ce): issue 16's ablations suite (--quick), alpha 1 and 0.3.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s TERM 290 python -m benchmarks.suite ablations --quick --out $OUT/ablations --commit e8c43ce > $OUT/ablations.log 2>&1; echo ablations rc=$?
grep -E "alpha|n=|kernels|terminated" $OUT/ablations.log | cut -c1-300; date
cp .device/run7.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
