#!/usr/bin/env bash
# Session 2026-12-06c run 2: the decode shrink's K split at small batches. (1) The PEFT comparison's shape as a
# burst (32 requests, 8 adapters, lengths < 128; base and LoRA, each timed twice on one engine, GPU kernels by
# kind over steps 20-60) with the decode launch configuration's default (shrink_split 2) against more K ranges
# per program tile (8, 16) and narrower rank blocks (shrink_r 16, split 4), one process each; (2) saturated S2
# n = 1000 with split 8 against the default, for the full batches.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06c/run2.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
summary() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']:
    p = r['profile'] or {}
    print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'elapsed', round(r['elapsed_s'], 4), 'steps', r['steps'], 'batch', round(r['mean_batch'], 1),
          'distinct', round(r['mean_distinct_adapters'], 1), 'preempt', r['preemptions'], 'step_s', r['step_s_by_kind'],
          'gpu', r['gpu_s_by_kind'], 'share', round(r['share_of_base'], 4), 'kinds_ms', p.get('kinds_ms'),
          'lora_top', [(t['kernel'][:20], t['ms'], t['calls']) for t in p.get('top', []) if 'lora' in t['kernel']])" "$1" "$2"
}
for V in D S8 S16 R16S4; do
  case $V in D) K='{}';; S8) K='{"decode": {"shrink_split": 8}}';; S16) K='{"decode": {"shrink_split": 16}}';;
             R16S4) K='{"decode": {"shrink_r": 16, "shrink_split": 4}}';; esac
  LEFT=$(( 250 - ($(date +%s) - T0) )); [ $LEFT -lt 40 ] && { echo "no time for $V"; break; }
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 8 --requests 32 --max-len 128 \
    --async-scheduling on on --profile --no-profile-host --profile-steps 20 60 --lora-kernels "$K" \
    --out /tmp/small_$V --commit "$1 ($V)" > /tmp/small_$V.log 2>&1
  echo "small $V rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/small_$V/saturated.json $OUT/small_$V.json
  summary /tmp/small_$V/saturated.json $V
done
for V in D S8; do
  case $V in D) K='{}';; S8) K='{"decode": {"shrink_split": 8}}';; esac
  LEFT=$(( 560 - ($(date +%s) - T0) )); [ $LEFT -lt 90 ] && { echo "no time for sat $V"; break; }
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 1000 --lora-kernels "$K" \
    --out /tmp/sat_$V --commit "$1 ($V)" > /tmp/sat_$V.log 2>&1
  echo "sat $V rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/sat_$V/saturated.json $OUT/sat_$V.json
  summary /tmp/sat_$V/saturated.json sat_$V
done
echo "done at $(( $(date +%s) - T0 )) s"
