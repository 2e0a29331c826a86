#!/usr/bin/env bash
# Session 2026-12-06c run 1: (1) saturated S2 (n = 0, 1000) with the landed admission headroom (the default, 1
# page per running request) against the old admission (0), each in its own process; (2) where a small burst's
# time goes: the PEFT comparison's shape (32 requests, 8 adapters, lengths < 128), base and LoRA, with a GPU
# kernel breakdown; (3) the GPU engine tests that exercise admission under a small pool.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06c/run1.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
summary() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']: print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'steps', r['steps'], 'batch', round(r['mean_batch'], 1),
                          'distinct', round(r['mean_distinct_adapters'], 1), 'preempt', r['preemptions'], 'elapsed', round(r['elapsed_s'], 3),
                          'step_s', r['step_s_by_kind'], 'gpu', r['gpu_s_by_kind'], 'share', round(r['share_of_base'], 4),
                          'slowest', r['slowest_steps'], 'profile', r['profile'])" "$1" "$2"
}
for V in H1 H0; do
  case $V in H1) SCH='{}';; H0) SCH='{"admission_headroom_pages": 0}';; esac
  LEFT=$(( 330 - ($(date +%s) - T0) )); [ $LEFT -lt 90 ] && { echo "no time for $V"; break; }
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out /tmp/sat_$V \
    --scheduler "$SCH" --commit "$1 ($V)" > /tmp/sat_$V.log 2>&1
  echo "sat $V rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/sat_$V/saturated.json $OUT/sat_$V.json
  summary /tmp/sat_$V/saturated.json $V
done
LEFT=$(( 450 - ($(date +%s) - T0) )); echo "small burst with $LEFT s left"
timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 8 --requests 32 --max-len 128 \
  --profile --no-profile-host --profile-steps 20 60 --out /tmp/small --commit "$1" > /tmp/small.log 2>&1
echo "small rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/small/saturated.json $OUT/small.json
summary /tmp/small/saturated.json small
LEFT=$(( 585 - ($(date +%s) - T0) )); echo "gpu tests with $LEFT s left"
timeout -s TERM $LEFT python -m pytest -q -m gpu tests/test_engine_gpu.py -k "tiny_pool or prefetch_under" 2>&1 | tail -5
echo "done at $(( $(date +%s) - T0 )) s"
