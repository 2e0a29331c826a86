#!/usr/bin/env bash
# Session 2026-12-06d run 5: the A/B run 4 could not do, on one machine: the decode graphs per LoRA plan slot
# bound (d2ee209, "after") against the same tree with slot_bounds.patch reversed ("before": every plan for
# max_loras_per_batch slots). Saturated S2 n = 0, 1 and the 32-request burst over 8 adapters, each side in its
# own process, after / before / after / before.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06d/run5.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
P=benchmarks/results/session-2026-12-06d/slot_bounds.patch
summary() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']:
    print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'elapsed', round(r['elapsed_s'], 4), 'steps', r['steps'],
          'gpu', r['gpu_s_by_kind'], 'share', r['share_of_base'] and round(r['share_of_base'], 4))" "$1" "$2"
}
run() {  # name, saturated.py args...
  local n=$1; shift; L=$(( 585 - ($(date +%s) - T0) )); [ $L -lt 40 ] && { echo "no time for $n"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo "$@" --out /tmp/$n --commit "$COMMIT ($n)" \
    > /tmp/$n.log 2>&1; echo "$n rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/$n/saturated.json $OUT/$n.json; summary /tmp/$n/saturated.json $n
}
COMMIT=$1
for i in 1 2; do
  run sat_after$i --adapters 0 1
  git apply -R $P && grep -c "plan_slot_bound" app/cuda_graphs.py
  run sat_before$i --adapters 0 1
  git apply $P && grep -c "plan_slot_bound" app/cuda_graphs.py
done
run small_after --adapters 0 8 --requests 32 --max-len 128 --async-scheduling on on
git apply -R $P
run small_before --adapters 0 8 --requests 32 --max-len 128 --async-scheduling on on
git apply $P
echo "done at $(( $(date +%s) - T0 )) s"
