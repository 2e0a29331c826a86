#!/usr/bin/env bash
# Session 06i run 5: run 4 (steps 40-60 of saturated S2 profiled without cProfile), then issue 16's S2 table
# (base and n = 1000, 30 s traces, --points 4) with the time left, partial results kept if cut.
# bash benchmarks/results/session-2026-12-06i/run5.sh COMMIT [SECONDS]
cd "$(dirname "$0")/../../.."
T0=$(date +%s); B=${2:-575}
bash benchmarks/results/session-2026-12-06i/run4.sh "$1"
L=$(( B - ($(date +%s) - T0) ))
timeout -s TERM "$L" python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 0 1000 --points 4 \
  --duration 30 --no-peft --out /tmp/S2 --commit "$1" > "$OUT/S2.log" 2>&1
echo "S2 rc=$? at $(( $(date +%s) - T0 )) s"
for f in /tmp/S2/*.json /tmp/S2/*.md; do [ -f "$f" ] && cp "$f" "$OUT/S2_$(basename "$f")"; done
grep -E "rate |^\| S2|^- S2" "$OUT/S2.log" | tail -14
