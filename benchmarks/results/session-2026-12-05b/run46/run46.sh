#!/usr/bin/env bash
# Session 2026-12-05b, run 46: the one-launch lora_apply (shrink and expand programs in one grid, expand
# waiting per tile on counters). (1) GPU tests of the LoRA kernels touched; (2) the decode / mixed kernel sweep
# with the one_launch variants; (3) saturated S2 Llama-2-7B q/k/v/o n = 0 / 1000: A = defaults, B = one_launch
# in both regimes, one process each, A B order.
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $C"
export TRITON_CACHE_DIR=/tmp/tc
timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py \
  -k "one_launch or (lora_cuda and bfloat16 and zipf) or cuda_graph_decode" > $OUT/test.log 2>&1
echo "test rc=$?"; grep -E "passed|failed|FAILED|Error" $OUT/test.log | cut -c1-300 | head -20; date
timeout 150 python benchmarks/kernels.py --lora-only --sweep --case "decode 24 req" --case "decode 64 req" \
  --case "decode 255 req" --case "mixed 250 decode" --out $OUT/kernels > $OUT/kernels.log 2>&1
echo "kernels rc=$?"; grep -E "one_launch|default|\{\}:|graph " $OUT/kernels.log | cut -c1-200; date
OL='{"decode": {"one_launch": true}, "mixed": {"one_launch": true}}'
for V in A B; do
  LEFT=$(( 580 - ($(date +%s) - T0) )); [ $LEFT -lt 100 ] && { echo "no time for $V"; break; }
  case $V in
    A) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_A --commit "$C (A: defaults)" > $OUT/sat_A.log 2>&1;;
    B) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --lora-kernels "$OL" --out $OUT/sat_B --commit "$C (B: one_launch)" > $OUT/sat_B.log 2>&1;;
  esac
  echo "sat $V rc=$?"; grep -E " n=" $OUT/sat_$V.log | grep -o "n=[0-9]* .*req/s" ; date
done
cp .device/run46.sh $OUT/
