#!/usr/bin/env bash
# Session 2026-12-05d, one command for one device call: (1) the GPU tests of what sessions c and d built and never
# ran on a GPU: prefix caching (Triton, CUDA graphs, asynchronous scheduling vs the torch backend without caching,
# gqa) and the CUDA-core shrink and expand paths (bf16); (2) saturated S2 Llama-2-7B q/k/v/o n = 0 / 1000 at this commit, A =
# defaults (prefix caching off, as the benchmark sets it: compare with run 46's 30.92 / 24.73 req/s on the H200 at
# 2122f25's serving path), B = the CUDA-core paths for few-token tiles: the expand's in both regimes (expand_n 64),
# the shrink's in decode steps (shrink_k 128); (3) with the time left, the kernel sweep
# (defaults and the rows variants only) on the decode and mixed steps. Run from the repository root with the
# device README's bundle prefix: bash benchmarks/results/session-2026-12-05d/next_gpu_combined.sh COMMIT [SECONDS]
cd "$(dirname "$0")/../../.."
T0=$(date +%s); TOTAL=${2:-585}  # seconds this call may run (the device limit, less a margin)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
timeout -s TERM 170 python -m pytest -m gpu -q -p no:cacheprovider tests/test_engine_gpu.py tests/test_kernels_gpu.py \
  -k "(prefix_cached and gqa) or rows_paths" > $OUT/gpu_test.log 2>&1
echo "gpu tests rc=$? ($(( $(date +%s) - T0 )) s)"; grep -E "passed|failed|FAILED|Error" $OUT/gpu_test.log | cut -c1-300 | head -12
for V in A B; do
  LEFT=$(( TOTAL - 85 - ($(date +%s) - T0) )); [ $LEFT -lt 120 ] && { echo "no time for $V"; break; }
  case $V in
    A) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_A --commit "$1 (A: defaults)" > $OUT/sat_A.log 2>&1;;
    B) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --lora-kernels '{"decode": {"expand_rows": true, "expand_n": 64, "shrink_rows_below": 4, "shrink_k": 128}, "mixed": {"expand_rows": true, "expand_n": 64}}' --out $OUT/sat_B --commit "$1 (B: rows expand both regimes, rows shrink decode)" > $OUT/sat_B.log 2>&1;;
  esac
  echo "sat $V rc=$? ($(( $(date +%s) - T0 )) s)"; grep -ho "n=[0-9]* async=True[^:]*: [0-9.]* req/s\|(GPU {[^}]*})" $OUT/sat_$V.log
done
LEFT=$(( TOTAL - ($(date +%s) - T0) ))
if [ $LEFT -ge 40 ]; then
  timeout -s TERM $LEFT python benchmarks/kernels.py --lora-only --sweep --sweep-match rows --case "decode 255 req" \
    --case "decode 64 req" --case "mixed 250 decode" --out $OUT/kernels > $OUT/kernels.log 2>&1
  echo "kernels rc=$? ($(( $(date +%s) - T0 )) s)"; grep -E "^  (decode|mixed)|graph " $OUT/kernels.log | cut -c1-200
fi
