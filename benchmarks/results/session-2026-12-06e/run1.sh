#!/usr/bin/env bash
# Session 2026-12-06e run 1: LoRAConfig.overlap_shrink (each LoRA shrink on a second CUDA stream beside its
# group's base matmul) off against on, each side in its own process on one GPU: (1) the GPU tests of the change
# and of the slot-bound graphs (3d0adc3 was not GPU-run); (2) the PEFT comparison's shape as a burst (32
# requests, U[8, 128), 8 adapters), off / on / off / on; (3) saturated S2 n = 0, 1, 1000, off then on.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06e/run1.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"; COMMIT=$1
timeout -s TERM 200 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "gqa and (side_stream or plan_slot_bounds)" \
  > $OUT/gpu_tests.log 2>&1; echo "tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -3 $OUT/gpu_tests.log
summary() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']:
    print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'elapsed', round(r['elapsed_s'], 4), 'steps', r['steps'],
          'gpu', r['gpu_s_by_kind'], 'share', r['share_of_base'] and round(r['share_of_base'], 4))" "$1" "$2"
}
run() {  # name, overlap (true/false), saturated.py args...
  local n=$1 ov=$2; shift 2; L=$(( 590 - ($(date +%s) - T0) )); [ $L -lt 40 ] && { echo "no time for $n"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo --lora "{\"overlap_shrink\": $ov}" "$@" \
    --out /tmp/$n --commit "$COMMIT ($n)" > /tmp/$n.log 2>&1; echo "$n rc=$? at $(( $(date +%s) - T0 )) s"
  cp /tmp/$n/saturated.json $OUT/$n.json; summary /tmp/$n/saturated.json $n
}
for i in 1 2; do
  run small_off$i false --adapters 0 8 --requests 32 --max-len 128
  run small_on$i true --adapters 0 8 --requests 32 --max-len 128
done
run sat_off false --adapters 0 1 1000
run sat_on true --adapters 0 1 1000
echo "done at $(( $(date +%s) - T0 )) s"
