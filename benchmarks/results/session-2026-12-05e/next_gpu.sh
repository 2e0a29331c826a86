#!/usr/bin/env bash
# Session 2026-12-05e, for the next device session (this one's time was spent on runs 1 and 2): the GPU tests that
# cover the decode expand's new default (expand_n 128, e6c0c66: run 1 checked its outputs against the reference in
# the sweep and ran S2 with it, the GPU test suite did not run), then saturated S2 at n = 0 / 1000 with it and with
# the old default (256) in one command, on whatever card comes (run 1 was an H100), then prefix caching's gain where
# prompts are shared (n = 10: ~40 requests per adapter's system prompt). Run from the repository root with the device
# README's bundle prefix: `bash benchmarks/results/session-2026-12-05e/next_gpu.sh COMMIT`.
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
timeout -s TERM 200 python -m pytest -m gpu -q -x tests/test_kernels_gpu.py tests/test_engine_gpu.py \
  -k "(lora_cuda and decode) or cuda_graph_decode_step or ((triton_equals or cuda_graphs_equal_eager) and gqa) or no_kernel_compiles" \
  > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc=$?"; tail -3 $OUT/gpu_tests.log
for V in A B; do
  LEFT=$(( 560 - ($(date +%s) - T0) )); [ $LEFT -lt 90 ] && { echo "no time for $V"; break; }
  case $V in
    A) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out /tmp/sat_A --commit "$1 (A: defaults)" > $OUT/sat_A.log 2>&1;;
    B) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 1000 --lora-kernels '{"decode": {"expand_n": 256}}' --out /tmp/sat_B --commit "$1 (B: decode expand_n 256)" > $OUT/sat_B.log 2>&1;;
  esac
  echo "sat $V rc=$?"; grep -ho "n=[0-9]* async=True[^:]*: [0-9.]* req/s\|(GPU {[^}]*})" $OUT/sat_$V.log
done
LEFT=$(( 575 - ($(date +%s) - T0) ))
if [ $LEFT -gt 120 ]; then
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 10 --system-prompt 1024 \
    --prefix-caching off on --out /tmp/sat_prefix --commit "$1" > $OUT/sat_prefix.log 2>&1
  echo "prefix rc=$?"; grep -ho "n=[0-9]* async=[A-Za-z]* prefix_caching=[A-Za-z]* (hits [0-9]* tokens): [0-9.]* req/s" $OUT/sat_prefix.log
fi
