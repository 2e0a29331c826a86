#!/usr/bin/env bash
# Session 2026-12-03 GPU run 3: per-call host time of never-seen GEMM shapes (hostprobe.py); saturated S2 7B,
# cd9fce5 (session start) vs 30a073b (eager steps padded to 64 tokens, cuBLAS primed); GPU engine tests.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
python benchmarks/results/session-2026-12-03/hostprobe.py > $OUT/hostprobe2.json 2> $OUT/hostprobe2.err; echo probe rc=$?
cat $OUT/hostprobe2.json; tail -3 $OUT/hostprobe2.err; date
mkdir -p /tmp/base && tar -xzf .device/base.tar.gz -C /tmp/base
(cd /tmp/base && timeout 200 python benchmarks/saturated.py --out $OUT/sat_base --settings llama2-7b-qkvo --adapters 0 1 1000 --commit cd9fce5 > $OUT/sat_base.log 2>&1; echo base rc=$?)
grep -E "req/s" $OUT/sat_base.log | cut -c1-200; date
timeout 200 python benchmarks/saturated.py --out $OUT/sat_new --settings llama2-7b-qkvo --adapters 0 1 1000 --commit 30a073b > $OUT/sat_new.log 2>&1; echo new rc=$?
grep -E "req/s|primed" $OUT/sat_new.log | cut -c1-200; date
timeout 200 python -m pytest -q -m gpu tests/test_engine_gpu.py -x > $OUT/engine_gpu.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/engine_gpu.log | tail -8; date
cp .device/run3.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
