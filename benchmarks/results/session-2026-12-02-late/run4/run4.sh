#!/usr/bin/env bash
# GPU run 4: saturated S2 Llama-2-7B q/k/v/o on the session's final engine code (ecd5f28); the LoRA and
# elementwise GPU kernel tests that the last session's runs did not reach.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 170 python benchmarks/saturated.py --out $OUT/sat7b --settings llama2-7b-qkvo --adapters 0 1 1000 --profile --commit ecd5f28 > $OUT/sat7b.log 2>&1; echo sat rc=$?
grep -E "req/s" $OUT/sat7b.log | cut -c1-200; date
timeout 180 python -m pytest -q -m gpu tests/test_kernels_gpu.py -k "lora_cuda or elementwise" > $OUT/kernel_tests.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/kernel_tests.log | tail -8; date
cp .device/run4.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
