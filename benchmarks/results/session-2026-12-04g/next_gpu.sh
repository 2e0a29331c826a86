#!/usr/bin/env bash
# Session 2026-12-04 (g): the next GPU run (not run: no device was lent in session g). Copy it to .device/ and run
# `bash .device/next_gpu.sh COMMIT` (5f28760 or later). In priority order, one 600 s device command:
# (1) the GPU tests of what sessions f and g changed and never ran on a GPU: bf16 elementwise kernels (RoPE with
#     Qwen3's q/k head norms and partial rotary, gated GELU), bf16 attention with sliding windows and soft caps
#     at head_dim 256, the engine tests on the qwen3, phi3 and gemma2 tiny models (float32 == torch ==
#     transformers + PEFT, bf16, CUDA graphs), warm-up (every kernel variant; the startup adapters' graph sets);
# (2) saturated S2, Llama-2-7B q/k/v/o, base and 1000 adapters, twice: main's LoRA plan tile kernel (two block
#     sizes, 71ac5f0) against d7c3e29's (a block per power of two of the step's tokens), A B A B, to keep or revert
#     71ac5f0's hot-path change (never measured end to end).
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $C"
export TRITON_CACHE_DIR=/tmp/tc_test
timeout 260 python -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py tests/test_engine_gpu.py \
  -k "elementwise or windowed or qwen3 or phi3 or gemma2 or no_kernel_compiles or warmup_captures" > $OUT/test.log 2>&1
echo "test rc=$?"; grep -E "passed|failed|FAILED|Error|built after|differ|no variant" $OUT/test.log | cut -c1-600 | head -20; date
cp benchmarks/results/session-2026-12-04g/lora_plan_d7c3e29.py.txt /tmp/lora_plan_before.py  # the device's .git may lag
cp kernels/lora_plan.py /tmp/lora_plan_main.py
for V in A B A2 B2; do
  LEFT=$(( 560 - ($(date +%s) - T0) )); [ $LEFT -lt 90 ] && { echo "no time for $V"; break; }
  case $V in A*) cp /tmp/lora_plan_main.py kernels/lora_plan.py;; B*) cp /tmp/lora_plan_before.py kernels/lora_plan.py;; esac
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_$V \
    --commit "$C ($V: $( [ ${V:0:1} = A ] && echo main || echo d7c3e29 ) lora_plan.py)" > $OUT/sat_$V.log 2>&1
  echo "sat $V rc=$?"; grep -E " n=" $OUT/sat_$V.log | grep -o "n=[0-9]* .*req/s" ; date
done
cp /tmp/lora_plan_main.py kernels/lora_plan.py
cp .device/next_gpu.sh $OUT/ 2>/dev/null
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
