#!/usr/bin/env bash
# Session 06i run 2. On an H200: issue 12's headline (saturated S2 n = 0, 1, 1000; Llama-3-8B all-linear n = 0, 1000).
# On an H100: session 06h's `next_gpu.sh COMMIT sat` (saturated 7B and 13B at n = 0, 1000, with the pool sizes).
# bash benchmarks/results/session-2026-12-06i/run2.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
case "$GPU" in
  *H200*)
    timeout -s TERM 300 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 --out /tmp/sat \
      --commit "$1" > $OUT/sat_h200.log 2>&1; echo "sat rc=$? at $(( $(date +%s) - T0 )) s"
    cp /tmp/sat/saturated.json $OUT/sat_h200.json; cp /tmp/sat/saturated.md $OUT/sat_h200.md
    L=$(( 580 - ($(date +%s) - T0) ))
    timeout -s TERM $L python benchmarks/saturated.py --settings llama3-8b-all --adapters 0 1000 --out /tmp/sat8 \
      --commit "$1" > $OUT/sat8_h200.log 2>&1; echo "sat8 rc=$? at $(( $(date +%s) - T0 )) s"
    cp /tmp/sat8/saturated.json $OUT/sat8_h200.json
    python3 -c "
import json
for f in ['$OUT/sat_h200.json', '$OUT/sat8_h200.json']:
    try: d = json.load(open(f))
    except Exception as e: print(f, e); continue
    for s in d['settings']:
        for r in s['runs']: print(s['setting'], s['pool'], r['adapters'], round(r['req_s'], 2), r['steps'], r['share_of_base'])" ;;
  *)
    bash benchmarks/results/session-2026-12-06h/next_gpu.sh "$1" sat 580 ;;
esac
echo "done at $(( $(date +%s) - T0 )) s"
