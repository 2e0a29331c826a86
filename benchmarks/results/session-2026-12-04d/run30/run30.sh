#!/usr/bin/env bash
# Run 30: (1) the GPU test of prefetched and deferred adapter copies under evictions (float32, tokens equal to
# the engine without prefetch); (2) ab_defer.py: defer_loads off / on at n = 2000, 27 and 30 req/s, twice.
cd "$(dirname "$0")/.."
C=$1
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $C"
timeout 200 python -m pytest -q -m gpu tests/test_engine_gpu.py -k prefetch -p no:cacheprovider 2>&1 | tail -3
date
timeout -s TERM 420 python benchmarks/results/session-2026-12-04d/run30/ab_defer.py $OUT 27,30 2000 2>&1 | grep -v Warning | tail -12
date
