#!/usr/bin/env bash
# Session 08 run 4: the pool's share of free GPU memory (PoolConfig.gpu_memory_fraction, default 0.85) on an 80 GB
# card. On an H100, saturated S2 leaves ~8 GiB of the GPU unused (peak reserved 69.8 of 79.2 GiB, 07f/07h) while
# benchmarks/schedule_sim.py finds the workload memory-bound at the 6,909 pages 0.85 gives: base 768 steps, n = 1000
# 832; at 0.92 (~7,480 pages) 701 and 807. A/B, one process each: A 0.85, B 0.92 (S2 n = 0, 1000), then Llama-3-8B
# all-linear (vocabulary 128k, the larger logits buffers) at 0.92, n = 0 and 1000: does it run, with what peak.
#   bash benchmarks/results/session-2026-12-08/run4.sh COMMIT [SECONDS]   (engine only: carry .whl, or .device with the
#   bundle's prefix). Results go straight to $OUT/run4 (a run cut at the device's limit still brings back its parts).
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -c "import pydantic" 2>/dev/null || python -m pip install -q --no-index --find-links .whl pydantic
export PYTHONPATH=.:$PYTHONPATH PYTHONUNBUFFERED=1
W="$OUT/run4"; mkdir -p "$W"; END=${2:-585}
for V in A:0.85:llama2-7b-qkvo B:0.92:llama2-7b-qkvo C:0.92:llama3-8b-all; do
  IFS=: read -r N F S <<< "$V"
  LEFT=$(( END - ($(date +%s) - T0) )); [ $LEFT -lt 120 ] && { echo "no time for $N"; break; }
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings "$S" --adapters 0 1000 \
    --pool "{\"gpu_memory_fraction\": $F}" --out "$W/sat_$N" --commit "$1" > "$W/sat_$N.log" 2>&1
  echo "$N ($S, fraction $F) rc=$? at $(( $(date +%s) - T0 )) s"
  grep -h "req/s" "$W/sat_$N.log" | cut -c1-250 | head -4
  python -c "import json; s=json.load(open('$W/sat_$N/saturated.json'))['settings'][0]; print(s['pool'], [(r['adapters'], round(r['req_s'], 2), r['steps']) for r in s['runs']])" 2>&1 | tail -1
done
rm -f "$W"/*/*.gz
echo "done at $(( $(date +%s) - T0 )) s"
