#!/usr/bin/env bash
# GPU run 1 (session 2026-12-02 late): base-only decode graphs (fdceb8f) validated by the GPU engine tests;
# saturated S2 before (b88ba12) / after (0aacc98); serve startup with 1,000 adapter directories.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 170 python -m pytest -q -m gpu tests/test_engine_gpu.py > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -8; date
timeout 130 python benchmarks/saturated.py --out $OUT/sat_new --settings llama2-7b-qkvo --adapters 0 1000 --commit 0aacc98 > $OUT/sat_new.log 2>&1; echo new rc=$?
grep -E "req/s" $OUT/sat_new.log | cut -c1-200; date
mkdir -p /tmp/base && tar -xzf .device/base.tar.gz -C /tmp/base && cp benchmarks/saturated.py /tmp/base/benchmarks/
(cd /tmp/base && timeout 110 python benchmarks/saturated.py --out $OUT/sat_old --settings llama2-7b-qkvo --adapters 0 1000 --commit b88ba12 > $OUT/sat_old.log 2>&1; echo old rc=$?)
grep -E "req/s" $OUT/sat_old.log | cut -c1-200; date
timeout 150 python benchmarks/startup.py --serve --out $OUT/startup --adapters 1000 --rank 16 --distinct 8 --timeout-s 140 > $OUT/startup.log 2>&1; echo startup rc=$?
grep -v "^\s*$" $OUT/startup.log | grep -E "first_answer|_s\"|adapters:|Error|error" | tail -20; date
