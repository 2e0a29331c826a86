#!/usr/bin/env bash
# Session 2026-12-05d: the CUDA-core decode expand (`expand_rows`, lora_expand_rows_kernel: no 16-row tl.dot padding
# of one-token tiles; 72 registers at expand_n 64, 7 CTAs per SM on sm_90 by ptxas, against the default expand's
# 105 and 4). (1) The GPU kernel tests of it (bf16), (2) the kernel sweep on the decode and mixed steps (the
# rows variants are in benchmarks/kernels.py's SWEEP, each output checked against the reference), (3) saturated S2
# n = 0 / 1000: A = defaults, B = expand_rows in decode steps (expand_n 64), A B while the time lasts.
# Run from the repository root with the device README's bundle prefix: bash <this> COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
timeout -s TERM 100 python -m pytest -m gpu -q -x tests/test_kernels_gpu.py -k "expand_rows" > $OUT/gpu_test.log 2>&1
echo "gpu test rc=$?"; tail -3 $OUT/gpu_test.log
timeout -s TERM 170 python benchmarks/kernels.py --lora-only --sweep --parts --case "decode 24 req" --case "decode 64 req" \
  --case "decode 255 req" --case "mixed 250 decode" --out $OUT/kernels > $OUT/kernels.log 2>&1
echo "kernels rc=$?"; grep -E "rows|\{\}:|graph " $OUT/kernels.log | cut -c1-200
for V in A B; do
  LEFT=$(( 575 - ($(date +%s) - T0) )); [ $LEFT -lt 100 ] && { echo "no time for $V"; break; }
  case $V in
    A) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_A --commit "$1 (A: defaults)" > $OUT/sat_A.log 2>&1;;
    B) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --lora-kernels '{"decode": {"expand_rows": true, "expand_n": 64}}' --out $OUT/sat_B --commit "$1 (B: decode expand_rows, expand_n 64)" > $OUT/sat_B.log 2>&1;;
  esac
  echo "sat $V rc=$?"; grep -ho "n=[0-9]* async=True[^:]*: [0-9.]* req/s\|(GPU {[^}]*})" $OUT/sat_$V.log
done
