#!/usr/bin/env bash
# Session 2026-12-03 (pm) GPU run 5 (commit C, argument 1): shrink_split_k (a long K split over programs).
# Its kernels' GPU test and each launch alone in the all-module decode/mixed steps (down: K = 11008); then
# saturated Llama-3-8B all-linear (n = 0, 1, 1000), C then 5daba83 (before, the same benchmark script).
C=$1
cd "$(dirname "$0")/.."
cp .device/run5.sh $OUT/
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 60 python benchmarks/kernels.py --out $OUT/kernels --lora-only --parts --case "decode 256 req, 64" --case "mixed 254" > $OUT/kernels.log 2>&1; echo kernels rc=$?
grep -E "graph|down" $OUT/kernels.log | cut -c1-200; date
timeout 120 python benchmarks/saturated.py --out $OUT/sat_new --settings llama3-8b-all --adapters 0 1 1000 --commit $C > $OUT/sat_new.log 2>&1; echo new rc=$?
grep -E "req/s" $OUT/sat_new.log | grep -v "^|" | cut -c1-300; date
mkdir -p /tmp/base && tar -xzf .device/base.tar.gz -C /tmp/base && cp benchmarks/saturated.py /tmp/base/benchmarks/
(cd /tmp/base && timeout 120 python benchmarks/saturated.py --out $OUT/sat_base --settings llama3-8b-all --adapters 0 1 1000 --commit 5daba83 > $OUT/sat_base.log 2>&1; echo base rc=$?)
grep -E "req/s" $OUT/sat_base.log | grep -v "^|" | cut -c1-300; date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
