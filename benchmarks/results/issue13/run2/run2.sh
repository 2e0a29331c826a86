#!/usr/bin/env bash
# GPU run 2: saturated S2 before (383d2e9) / after (this tree) with the same benchmark script, n = 0/1/1000;
# mixed-step attention; GPU engine tests.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
mkdir -p /tmp/base && tar -xzf .device/base.tar.gz -C /tmp/base && cp benchmarks/saturated.py /tmp/base/benchmarks/
timeout 175 python benchmarks/saturated.py --out $OUT/sat_new --settings llama2-7b-qkvo --adapters 0 1 1000 --profile > $OUT/sat_new.log 2>&1; echo new rc=$?
grep -E "req/s" $OUT/sat_new.log | cut -c1-200; date
(cd /tmp/base && timeout 175 python benchmarks/saturated.py --out $OUT/sat_old --settings llama2-7b-qkvo --adapters 0 1 1000 --profile > $OUT/sat_old.log 2>&1; echo old rc=$?)
grep -E "req/s" $OUT/sat_old.log | cut -c1-200; date
timeout 60 python benchmarks/kernels.py --attention-only --out $OUT/kattn > $OUT/kattn.log 2>&1; echo kattn rc=$?
grep -E "^mixed attn|flash" $OUT/kattn.log | cut -c1-220; date
timeout 140 python -m pytest -q -m gpu tests/test_engine_gpu.py -x > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
tail -3 $OUT/gpu_tests.log; date
