#!/usr/bin/env bash
# Session 2026-12-03 (pm) GPU run 2 (commit C, argument 1): C = 2e9e487 + staged adapter loads (H2D on the
# copy stream) + plain-int launch helpers. GPU tests of the loads; saturated S2 7B q/k/v/o (n = 0, 1, 1000),
# C then 2e9e487 (before, .device/base.tar.gz, the same benchmark script); the decode/mixed LoRA launch sweep
# on the q/k/v/o cases.
C=$1
cd "$(dirname "$0")/.."
cp .device/run2.sh $OUT/
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 150 python -m pytest -q -m gpu -x tests/test_engine_gpu.py -k "tiny_pool or equals_torch or pageable or targeted" > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -4; date
timeout 110 python benchmarks/saturated.py --out $OUT/sat_new --settings llama2-7b-qkvo --adapters 0 1 1000 --commit $C > $OUT/sat_new.log 2>&1; echo new rc=$?
grep -E "req/s" $OUT/sat_new.log | grep -v "^|" | cut -c1-300; date
mkdir -p /tmp/base && tar -xzf .device/base.tar.gz -C /tmp/base && cp benchmarks/saturated.py /tmp/base/benchmarks/
(cd /tmp/base && timeout 110 python benchmarks/saturated.py --out $OUT/sat_base --settings llama2-7b-qkvo --adapters 0 1 1000 --commit 2e9e487 > $OUT/sat_base.log 2>&1; echo base rc=$?)
grep -E "req/s" $OUT/sat_base.log | grep -v "^|" | cut -c1-300; date
timeout 200 python benchmarks/kernels.py --out $OUT/kernels --lora-only --sweep --case "q/k/v/o" > $OUT/kernels.log 2>&1; echo kernels rc=$?
grep -E "graph|variant|decode \{|mixed \{" $OUT/kernels.log | cut -c1-200; date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
