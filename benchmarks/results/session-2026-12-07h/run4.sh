#!/usr/bin/env bash
# Session 07h run 4: issue 16's n = 2000 against n = 100 as a paired check: S2, n = 100 and n = 2000 each replayed
# once at 17.85 req/s (0.95 x n = 100's maximum sustainable rate in run 3, 18.79) on the same 60-s trace
# (s-lora-table --rate). If both pass, n = 2000 sustains >= 95% of the rate n = 100 was found to sustain.
#   bash benchmarks/results/session-2026-12-07h/run4.sh COMMIT [SECONDS [TRACE_SECONDS]]   (engine only: carry .whl for pydantic)
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -m pip install -q --no-index --find-links .whl pydantic
export PYTHONPATH=.:$PYTHONPATH PYTHONUNBUFFERED=1
W=/tmp/run4out; mkdir -p "$W"
timeout -s TERM ${2:-300} python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 100 2000 \
  --rate 17.85 --duration ${3:-60} --no-peft --out "$W/table" --commit "$1" > "$W/table.log" 2>&1
echo "table rc=$? at $(( $(date +%s) - T0 )) s"
grep -v "^\s*$" "$W/table.log" | grep -E "^\[|req/s" | tail -8; grep -A4 "^Headline" "$W/table/"*.md 2>/dev/null
tar -cf "$OUT/run4.tar" -C "$W" --exclude="*.gz" .
echo "done at $(( $(date +%s) - T0 )) s"
