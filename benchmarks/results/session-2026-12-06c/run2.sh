#!/usr/bin/env bash
# Session 2026-12-06c run 2: the decode shrink's K split at small batches. (1) The PEFT comparison's shape as a
# burst (32 requests, 8 adapters, lengths < 128; base and LoRA, each timed twice on one engine, GPU kernels by
# kind over steps 20-60) with the decode launch configuration's default (shrink_split 2) against more K ranges
# per program tile (8, 16) and auto_split.patch (K ranges chosen so the grid has >= 2048 programs: more at small
# batches), one process each; (2) saturated S2 n = 1000 (no base run) with the patch against the default.
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
small() {  # variant, lora kernel overrides
  LEFT=$(( 520 - ($(date +%s) - T0) )); [ $LEFT -lt 40 ] && { echo "no time for $1"; return; }
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 8 --requests 32 --max-len 128 \
    --async-scheduling on on --profile --no-profile-host --profile-steps 20 60 --lora-kernels "$2" \
    --out /tmp/small_$1 --commit "$COMMIT ($1)" > /tmp/small_$1.log 2>&1
  echo "small $1 rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/small_$1/saturated.json $OUT/small_$1.json
  summary /tmp/small_$1/saturated.json $1
}
sat() {  # variant
  LEFT=$(( 580 - ($(date +%s) - T0) )); [ $LEFT -lt 90 ] && { echo "no time for sat $1"; return; }
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 1000 \
    --out /tmp/sat_$1 --commit "$COMMIT ($1)" > /tmp/sat_$1.log 2>&1
  echo "sat $1 rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/sat_$1/saturated.json $OUT/sat_$1.json
  summary /tmp/sat_$1/saturated.json sat_$1
}
COMMIT=$1
small D '{}'
small S8 '{"decode": {"shrink_split": 8}}'
small S16 '{"decode": {"shrink_split": 16}}'
sat D
git apply benchmarks/results/session-2026-12-06c/auto_split.patch || exit 1
small AUTO '{}'
sat AUTO
git apply -R benchmarks/results/session-2026-12-06c/auto_split.patch
echo "done at $(( $(date +%s) - T0 )) s"
