#!/usr/bin/env bash
# Session 08 run 1: issue 16's "n = 2000 >= 95% of n = 100 (maximum sustainable rate)" as a paired check, S2:
# `s-lora-table --adapters 100 2000 --paired-share 0.95`: n = 100 gets the rate search (4 points, 45-s traces, where
# 07h's 20-s traces had ramp ceilings below the 90% pass line), n = 2000 one replay at 0.95 x its maximum.
# Carry .device and begin with the Ray bundle's prefix (the bundle holds pydantic), or carry .whl:
#   bash benchmarks/results/session-2026-12-08/run1.sh COMMIT [DURATION]
cd "$(dirname "$0")/../../.."
T0=$(date +%s); D=${2:-45}
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -c "import pydantic" 2>/dev/null || python -m pip install -q --no-index --find-links .whl pydantic
export PYTHONPATH=.:$PYTHONPATH PYTHONUNBUFFERED=1
W=/tmp/run1out; mkdir -p "$W"
timeout -s TERM 580 python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 100 2000 --points 4 \
  --paired-share 0.95 --duration "$D" --no-peft --out "$W/table" --commit "$1" > "$W/table.log" 2>&1
echo "table rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "^\[" "$W/table.log" | tail -8
grep -A6 "^Headline" "$W/table/s-lora-table.md" 2>/dev/null
tar -cf "$OUT/run1.tar" -C "$W" --exclude="*.gz" .
echo "done at $(( $(date +%s) - T0 )) s"
