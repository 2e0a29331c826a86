#!/usr/bin/env bash
# Session 2026-12-03 (noon) GPU run 2: piecewise CUDA graphs for steps with a prefill chunk (130a886): the GPU tests
# that cover them, then saturated S2 7B q/k/v/o (n = 0, 1, 1000), 130a886 vs 235c752 (before), one command.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 170 python -m pytest -q -m gpu -x tests/test_engine_gpu.py tests/test_async.py -k "cuda_graphs or warmup_captures or triton_equals_torch or async_on_the_gpu" > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -8; date
timeout 190 python benchmarks/saturated.py --out $OUT/sat_new --settings llama2-7b-qkvo --adapters 0 1 1000 --commit 130a886 > $OUT/sat_new.log 2>&1; echo new rc=$?
grep -E "req/s|warmup" $OUT/sat_new.log | cut -c1-220; date
mkdir -p /tmp/base && tar -xzf .device/base.tar.gz -C /tmp/base
(cd /tmp/base && timeout 190 python benchmarks/saturated.py --out $OUT/sat_base --settings llama2-7b-qkvo --adapters 0 1 1000 --commit 235c752 > $OUT/sat_base.log 2>&1; echo base rc=$?)
grep -E "req/s" $OUT/sat_base.log | cut -c1-220; date
cp .device/run2.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
