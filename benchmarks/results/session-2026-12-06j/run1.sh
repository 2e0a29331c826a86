#!/usr/bin/env bash
# Session 06j run 1: saturated S2 at n = 0, 1, 1000 with the GPU profiled over steps 300-340 (no cProfile) and
# each run's Chrome trace kept, for trace_steps.py (the critical path of a decode step, stream by stream).
#   bash benchmarks/results/session-2026-12-06j/run1.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
timeout -s TERM 420 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 --profile \
  --no-profile-host --profile-steps 300 340 --profile-trace "$OUT/traces" --out /tmp/sat --commit "$1" \
  > "$OUT/sat.log" 2>&1
echo "sat rc=$? at $(( $(date +%s) - T0 )) s"
cp /tmp/sat/saturated.json /tmp/sat/saturated.md "$OUT/"
grep -E "^- llama|req/s" "$OUT/sat.log" | tail -5
python benchmarks/results/session-2026-12-06j/trace_steps.py "$OUT"/traces/*.json.gz > "$OUT/trace_steps.txt" 2>&1
cat "$OUT/trace_steps.txt"
echo "done at $(( $(date +%s) - T0 )) s"
