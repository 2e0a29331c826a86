#!/usr/bin/env bash
# Prepared for the next device session (not run). PART 1 (~470 s): expand_into_residual.patch, an experiment off
# main: at TP = 1 for models that add the o / down output to the residual stream unchanged (Llama, Qwen, Mistral,
# Phi-3; not Gemma, OLMo or Granite's multiplier), the LoRA expand of o and down adds its delta into the residual
# stream h instead of into the matmul's output, so in a decode graph the whole LoRA of those groups (shrink and
# expand) is a side-stream branch beside the matmul, joined before add_rms_norm; at small batches the expand is
# the LoRA launch left on the critical path (~7 us x 32 per step at q/k/v/o). CPU: tests/test_equivalence.py,
# test_engine.py, test_prefix_cache.py and test_tp.py pass with it (float32 tokens equal to PEFT; TP = 2, which
# keeps the old path, equal to TP = 1). Here: the GPU tests with the patch, then the 32-request burst over 8
# adapters main / patch / main / patch, then saturated S2 n = 0, 1, 1000 main / patch, each in its own process.
# On an H200 main's S2 process is also issue 12's headline (n = 0, 1, 1000 in one process).
# PART 2: the PEFT comparison (s-lora-table's PEFT workload, ~180 s), for an H200 figure.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06e/next_gpu.sh COMMIT [2]
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"; COMMIT=$1
P=benchmarks/results/session-2026-12-06e/expand_into_residual.patch
if [ "$2" = 2 ]; then
  timeout -s TERM 560 python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 --points 1 --duration 10 \
    --burst 64 --out $OUT/peft --commit $1 > $OUT/peft.log 2>&1; echo "peft rc=$?"; grep -E "PEFT" $OUT/peft.log | tail -2
  exit 0
fi
summary() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']:
    print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'elapsed', round(r['elapsed_s'], 4), 'steps', r['steps'],
          'gpu', r['gpu_s_by_kind'], 'share', r['share_of_base'] and round(r['share_of_base'], 4))" "$1" "$2"
}
run() {  # name, saturated.py args...
  local n=$1; shift; L=$(( 590 - ($(date +%s) - T0) )); [ $L -lt 40 ] && { echo "no time for $n"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo "$@" --out /tmp/$n --commit "$COMMIT ($n)" \
    > /tmp/$n.log 2>&1; echo "$n rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/$n/saturated.json $OUT/$n.json; summary /tmp/$n/saturated.json $n
}
git apply $P && echo "patch applied"
timeout -s TERM 150 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "(gqa or gemma2) and (side_stream or cuda_graphs_equal_eager)" \
  > $OUT/gpu_tests.log 2>&1; echo "tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -2 $OUT/gpu_tests.log
git apply -R $P
for i in 1 2; do
  run small_main$i --adapters 0 8 --requests 32 --max-len 128
  git apply $P; run small_patch$i --adapters 0 8 --requests 32 --max-len 128; git apply -R $P
done
run sat_main --adapters 0 1 1000
git apply $P; run sat_patch --adapters 0 1 1000; git apply -R $P
echo "done at $(( $(date +%s) - T0 )) s"
