#!/usr/bin/env bash
# GPU run A: async scheduling A/B on the saturated S2 workload (helper G's branch, archived in .device/g)
cd "$(dirname "$0")/g"
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 400 python benchmarks/saturated.py --out $OUT/sat --settings llama2-7b-qkvo --adapters 0 1 1000 --async-scheduling off on --profile --commit "$1" > $OUT/sat.log 2>&1; echo rc=$?
grep -E "req/s" $OUT/sat.log | cut -c1-200
date
timeout 150 python -m pytest -q -m gpu tests/test_async.py -x > $OUT/gpu_tests.log 2>&1; echo rc=$?
tail -5 $OUT/gpu_tests.log; date
