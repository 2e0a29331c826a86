#!/usr/bin/env bash
# Session 2026-12-03 (noon) GPU run 4 (commit C, argument 1): decode graphs that run only the targeted LoRA
# groups: their GPU test, then saturated S2 7B q/k/v/o (n = 0, 1, 1000), C vs b8efa0e (before; the same
# benchmark script, 8f2f3da's: every n the same request lengths), in what was left of the device time.
C=$1
cd "$(dirname "$0")/.."
cp .device/run4.sh $OUT/
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 70 python -m pytest -q -m gpu -x tests/test_engine_gpu.py -k "targeted_lora_groups" > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -4; date
timeout 100 python benchmarks/saturated.py --out /tmp/sat_new --settings llama2-7b-qkvo --adapters 0 1 1000 --commit $C > $OUT/sat_new.log 2>&1; echo new rc=$?
cp /tmp/sat_new/saturated.json $OUT/sat_new.json; grep -E "req/s" $OUT/sat_new.log | grep -v "^|" | cut -c1-300; date
mkdir -p /tmp/base && tar -xzf .device/base.tar.gz -C /tmp/base && cp benchmarks/saturated.py /tmp/base/benchmarks/
(cd /tmp/base && timeout 100 python benchmarks/saturated.py --out /tmp/sat_base --settings llama2-7b-qkvo --adapters 0 1 1000 --commit b8efa0e > $OUT/sat_base.log 2>&1; echo base rc=$?)
cp /tmp/sat_base/saturated.json $OUT/sat_base.json; grep -E "req/s" $OUT/sat_base.log | grep -v "^|" | cut -c1-300; date
