#!/usr/bin/env bash
# Prepared for the next device session (not run). From the repository root, with the device README's bundle prefix:
#   bash benchmarks/results/session-2026-12-06f/next_gpu.sh COMMIT          run2.sh: on an H200 issue 12's headline
#        (saturated S2 n = 0, 1, 1000) and issue 16's PEFT comparison; on an H100 the GPU test suite, part A then B
#   bash benchmarks/results/session-2026-12-06f/next_gpu.sh COMMIT B        the GPU suite's part B alone
#   bash benchmarks/results/session-2026-12-06f/next_gpu.sh COMMIT table    s-lora-table S4 and S1 (base, n = 1000)
#        on 30 s traces, with the points' ramp ceiling (run 3 used 10 s traces: every point ramp-limited)
#   bash benchmarks/results/session-2026-12-06f/next_gpu.sh COMMIT table8b  the same for llama3-8b-all
# Each mode fits one 600 s command (~550 s); on a fresh machine add ~100-200 s of start.
cd "$(dirname "$0")/../../.."
D=benchmarks/results/session-2026-12-06f
case "$2" in
  table|table8b)
    T0=$(date +%s); nvidia-smi --query-gpu=name --format=csv,noheader; echo "commit $1"
    [ "$2" = table ] && S="S4 S1" || S="llama3-8b-all"
    for s in $S; do
      L=$(( 560 - ($(date +%s) - T0) )); [ $L -lt 200 ] && { echo "no time for $s"; continue; }
      timeout -s TERM $L python -m benchmarks.suite s-lora-table --quick --settings $s --adapters 0 1000 --points 2 \
        --duration 30 --no-peft --out /tmp/$s --commit $1 > $OUT/$s.log 2>&1; echo "$s rc=$? at $(( $(date +%s) - T0 )) s"
      for f in /tmp/$s/*.json /tmp/$s/*.md; do [ -f "$f" ] && cp "$f" "$OUT/${s}_$(basename $f)"; done
      grep -E "rate |^\| (S1|S4|llama3)" $OUT/$s.log | tail -8
    done ;;
  *) bash $D/run2.sh "$1" "$2" ;;
esac
