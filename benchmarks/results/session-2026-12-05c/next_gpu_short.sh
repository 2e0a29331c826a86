#!/usr/bin/env bash
# Session 2026-12-05c, one command when only one is possible: the GPU prefix-caching test (gqa), then saturated
# S2 Llama-2-7B q/k/v/o n = 0 / 1000 for this commit (A, prefix caching off as the benchmark sets it) and for
# 2122f25 (B; needs .device/old2122.tar, see next_gpu_saturated_ab.sh). Run from the repository root with the
# device README's bundle prefix: bash benchmarks/results/session-2026-12-05c/next_gpu_short.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
timeout -s TERM 150 python -m pytest -m gpu -q -x tests/test_engine_gpu.py -k "prefix_cached and gqa" > $OUT/gpu_test.log 2>&1
echo "gpu test rc=$?"; tail -3 $OUT/gpu_test.log
mkdir -p /tmp/old && tar -xf .device/old2122.tar -C /tmp/old || { echo "no .device/old2122.tar"; exit 1; }
for V in A B; do
  LEFT=$(( 575 - ($(date +%s) - T0) )); [ $LEFT -lt 100 ] && { echo "no time for $V"; break; }
  case $V in
    A) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_A --commit "$1 (A)" > $OUT/sat_A.log 2>&1;;
    B) (cd /tmp/old && PYTHONPATH=/tmp/old:$PYTHONPATH timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_B --commit "2122f25 (B)") > $OUT/sat_B.log 2>&1;;
  esac
  echo "sat $V rc=$?"; grep -ho "n=[0-9]* async=True[^:]*: [0-9.]* req/s\|(GPU {[^}]*})" $OUT/sat_$V.log
done
