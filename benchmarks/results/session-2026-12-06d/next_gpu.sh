#!/usr/bin/env bash
# Prepared for the next device session (not run). (1) Issue 12's headline where it is defined, on an H200:
# saturated S2 n = 0, 1, 1000 in one process (no H200 came this session; the share there is 79-89% by cross-host
# arithmetic only); on an H100, n = 0, 1 twice in separate processes (run 7's 88.2% at one adapter, with the steps
# with prefill +1.13 s over base, against +0.25-0.35 s in runs 1, 4 and 5: host or noise?). (2) PART=2: the
# PEFT comparison on an H200 (s-lora-table's PEFT workload, ~210 s).
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06d/next_gpu.sh COMMIT [2]
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"; COMMIT=$1
if [ "$2" = 2 ]; then
  timeout -s TERM 560 python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 --points 1 --duration 10 \
    --burst 64 --out $OUT/peft --commit $1 > $OUT/peft.log 2>&1; echo "peft rc=$?"; grep -E "PEFT" $OUT/peft.log | tail -2
  exit 0
fi
sat() {  # name, adapters...
  local n=$1; shift; L=$(( 585 - ($(date +%s) - T0) )); [ $L -lt 60 ] && { echo "no time for $n"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters "$@" --out /tmp/$n --commit "$COMMIT ($n)" \
    > /tmp/$n.log 2>&1; echo "$n rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/$n/saturated.json $OUT/$n.json
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']:
    print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'share', r['share_of_base'] and round(r['share_of_base'], 4), 'gpu', r['gpu_s_by_kind'])" /tmp/$n/saturated.json $n
}
if [[ "$GPU" == *H200* ]]; then sat sat 0 1 1000; else sat sat1 0 1; sat sat2 0 1; fi
echo "done at $(( $(date +%s) - T0 )) s"
