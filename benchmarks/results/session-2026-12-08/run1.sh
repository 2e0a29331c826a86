#!/usr/bin/env bash
# Session 08 run 1: issue 16's "n = 2000 >= 95% of n = 100 (maximum sustainable rate)" as a two-stage check, S2.
# (1) n = 100: the suite's rate search (4 points, 45-s traces, no base run) gives its maximum M.
# (2) n = 2000: one replay at 0.95 M (s-lora-table --rate). If it passes (SLO attainment and keeping up), n = 2000
#     sustains >= 95% of n = 100's maximum; if not, it does not at this rate.
# Carry .device and begin with the Ray bundle's prefix (the bundle holds pydantic), from the repository root:
#   bash benchmarks/results/session-2026-12-08/run1.sh COMMIT [DURATION]
cd "$(dirname "$0")/../../.."
T0=$(date +%s); D=${2:-45}
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
export PYTHONPATH=.:$PYTHONPATH PYTHONUNBUFFERED=1
W=/tmp/run1out; mkdir -p "$W"
timeout -s TERM 330 python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 100 --points 4 \
  --duration "$D" --no-peft --out "$W/n100" --commit "$1" > "$W/n100.log" 2>&1
echo "n100 rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "^\[" "$W/n100.log" | tail -6
M=$(python -c "import json,sys; r=json.load(open('$W/n100/s-lora-table.json'))['settings'][0]['rows'][0]; print(r['max_rate'] or '')" 2>/dev/null)
echo "n=100 max sustainable: ${M:-none}"
if [ -n "$M" ]; then
  R=$(python -c "print(round(0.95 * $M, 3))")
  LEFT=$(( 590 - ($(date +%s) - T0) ))
  timeout -s TERM $LEFT python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 2000 --rate "$R" \
    --duration "$D" --no-peft --out "$W/n2000" --commit "$1" > "$W/n2000.log" 2>&1
  echo "n2000 at $R rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "^\[" "$W/n2000.log" | tail -3
fi
tar -cf "$OUT/run1.tar" -C "$W" --exclude="*.gz" .
echo "done at $(( $(date +%s) - T0 )) s"
