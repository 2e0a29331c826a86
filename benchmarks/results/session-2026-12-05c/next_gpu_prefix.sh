#!/usr/bin/env bash
# Session 2026-12-05c, for the next device session (no device was lent in this one): prefix caching on the GPU.
# 1. The GPU test of prefix-cached requests (Triton kernels, CUDA graphs, asynchronous scheduling; gqa and phi3)
#    against the torch backend without caching, float32.
# 2. Saturated S2 Llama-2-7B q/k/v/o with a 1024-token system prompt per adapter before every input, n = 0 /
#    1000, prefix caching off then on (the cache emptied before each run), one command: the throughput a
#    shared-prefix workload gains, and the cost of caching where nothing matches (n = 1000's prompts share only
#    their adapter's system prompt; each adapter has ~0.4 requests per run).
# Run from the repository root with the device README's bundle prefix:
#   bash benchmarks/results/session-2026-12-05c/next_gpu_prefix.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
timeout -s TERM 240 python -m pytest -m gpu -q -x tests/test_engine_gpu.py -k "prefix_cached and (gqa or phi3)" > $OUT/gpu_test.log 2>&1
echo "gpu test rc=$?"; tail -3 $OUT/gpu_test.log
LEFT=$(( 570 - ($(date +%s) - T0) ))
timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --system-prompt 1024 \
  --prefix-caching off on --out $OUT/sat_prefix --commit "$1" > $OUT/sat_prefix.log 2>&1
echo "sat rc=$?"; grep -ho "n=[0-9]* async=[A-Za-z]* prefix_caching=[A-Za-z]* (hits [0-9]* tokens): [0-9.]* req/s" $OUT/sat_prefix.log
