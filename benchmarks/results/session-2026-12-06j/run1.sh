#!/usr/bin/env bash
# Session 06j run 1: saturated S2 at n = 0, 1, 1000 with the GPU profiled over steps 300-340 (no cProfile) and
# each run's Chrome trace kept, for trace_steps.py (the critical path of a decode step, stream by stream); the
# same for a variant given as a patch (applied to a copy of the tree), in the same command on the same GPU.
#   bash benchmarks/results/session-2026-12-06j/run1.sh COMMIT [PATCH]
# COMMIT's tree is the one copied to the device; with PATCH, "A" is that tree with PATCH reversed (when the tree
# holds it) and "B" the tree with it.
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1 patch ${2:-none}"
run() {  # run NAME DIR
  (cd "$2" && timeout -s TERM 270 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 \
    --profile --no-profile-host --profile-steps 300 340 --profile-trace "$OUT/$1/traces" --out "$OUT/$1" \
    --commit "$3" > "$OUT/$1/sat.log" 2>&1)
  echo "$1 rc=$? at $(( $(date +%s) - T0 )) s"
  grep -E "req/s" "$OUT/$1/sat.log" | tail -4
  python benchmarks/results/session-2026-12-06j/trace_steps.py "$OUT/$1"/traces/*.json.gz > "$OUT/$1/trace_steps.txt" 2>&1
}
if [ -n "$2" ]; then
  rm -rf /tmp/A && cp -r . /tmp/A && (cd /tmp/A && patch -R -p1 -s < "$2") && mkdir -p "$OUT/A" "$OUT/B"
  run A /tmp/A "$1 without $(basename "$2")"
  run B . "$1"
else
  mkdir -p "$OUT/A"; run A . "$1"
fi
for d in "$OUT"/A "$OUT"/B; do [ -f "$d/trace_steps.txt" ] && { echo "== $d"; cat "$d/trace_steps.txt"; }; done
echo "done at $(( $(date +%s) - T0 )) s"
