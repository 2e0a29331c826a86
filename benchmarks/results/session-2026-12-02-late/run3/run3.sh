#!/usr/bin/env bash
# GPU run 3: the GPU tests of what changed (adapters pageable at start then pinned beside the steps,
# thread_local graph capture, base-only decode graphs); serve startup with 1,000 adapter directories
# (pinning deferred); saturated Llama-3-8B all-linear (issue 12's 80% goal) on this tree.
cd "$(dirname "$0")/.."
C=$1
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 110 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "pageable or graphs or warmup" > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -8; date
timeout 120 python benchmarks/startup.py --serve --out $OUT/startup --adapters 1000 --rank 16 --distinct 8 --timeout-s 110 > $OUT/startup.log 2>&1; echo startup rc=$?
grep -E "first_answer|_s\"|pinned in" $OUT/startup.log | cut -c1-200 | tail -12; date
timeout 190 python benchmarks/saturated.py --out $OUT/sat8b --settings llama3-8b-all --adapters 0 1000 --commit $C > $OUT/sat8b.log 2>&1; echo sat rc=$?
grep -E "req/s" $OUT/sat8b.log | cut -c1-200; date
timeout 120 python benchmarks/saturated.py --out $OUT/online --settings llama2-7b-qkvo --adapters 1000 --online 8 --online-duration 30 --commit $C > $OUT/online.log 2>&1; echo online rc=$?
grep -E "req/s|TTFT|ttft" $OUT/online.log | cut -c1-250 | tail -6; date
cp .device/run3.sh $OUT/; cd $OUT && tar -czf all.tgz --exclude all.tgz . ; ls
