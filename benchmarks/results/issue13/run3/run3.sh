#!/usr/bin/env bash
# GPU run 3: saturated S2 before (4075292: run 2's code) / after (this tree: LoRA groups the step's adapters
# target, one host-to-device copy per step, GC frozen after the adapters load), same benchmark script;
# the GPU tests of what changed.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
mkdir -p /tmp/prev && tar -xzf .device/prev.tar.gz -C /tmp/prev
sed '/engine.freeze_heap()/d' benchmarks/saturated.py > /tmp/prev/benchmarks/saturated.py  # it froze in Engine()
timeout 175 python benchmarks/saturated.py --out $OUT/sat_new --settings llama2-7b-qkvo --adapters 0 1 1000 --profile > $OUT/sat_new.log 2>&1; echo new rc=$?
grep -E "req/s" $OUT/sat_new.log | cut -c1-200; date
(cd /tmp/prev && timeout 140 python benchmarks/saturated.py --out $OUT/sat_old --settings llama2-7b-qkvo --adapters 0 1 1000 --profile > $OUT/sat_old.log 2>&1; echo old rc=$?)
grep -E "req/s" $OUT/sat_old.log | cut -c1-200; date
timeout 200 python -m pytest -q -m gpu tests/test_engine_gpu.py tests/test_async.py tests/test_kernels_gpu.py -k "not lora_cuda and not elementwise" > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -8; date
