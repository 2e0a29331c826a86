#!/usr/bin/env bash
# GPU run 1: mixed-step attention (split + unmasked blocks + launch sweep), attention GPU tests,
# saturated S2 before (383d2e9, in /tmp/base) and after (this tree), n = 0 / 1 / 1000, with profiles.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
mkdir -p /tmp/base && tar -xzf .device/base.tar.gz -C /tmp/base
timeout 130 python benchmarks/kernels.py --attention-only --sweep --out $OUT/kattn > $OUT/kattn.log 2>&1; echo kattn rc=$?
grep -E "^mixed attn|flash" $OUT/kattn.log | cut -c1-220; date
timeout 90 python -m pytest -q -m gpu tests/test_kernels_gpu.py -k attention tests/test_async.py -x > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
tail -3 $OUT/gpu_tests.log; date
timeout 190 python benchmarks/saturated.py --out $OUT/sat_new --settings llama2-7b-qkvo --adapters 0 1 1000 --profile > $OUT/sat_new.log 2>&1; echo new rc=$?
grep -E "req/s" $OUT/sat_new.log | cut -c1-260; date
cd /tmp/base && timeout 170 python benchmarks/saturated.py --out $OUT/sat_old --settings llama2-7b-qkvo --adapters 0 1 1000 --profile > $OUT/sat_old.log 2>&1; echo old rc=$?
grep -E "req/s" $OUT/sat_old.log | cut -c1-200; date
