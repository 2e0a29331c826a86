#!/usr/bin/env bash
# Session 07g run 3: issue 16's n = 2000 against n = 100 at the maximum sustainable rate, with main's code
# (the figure in the README, 75%, is from fb8bd78, before the read-ahead of adapters): `s-lora-table` on S2,
# n = 100 and 2000, three-point rate searches on 20 s traces, no PEFT (each search starts at the n's burst
# capacity and steps up 1.25x, so three points bracket the maximum within ~1.25-1.5x: a coarse figure).
#   bash benchmarks/results/session-2026-12-07g/run3.sh COMMIT [SECONDS]   (engine only: carry .whl for pydantic)
# SECONDS: the limit of the suite run (560), below the device time left so that the files still come back
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -m pip install -q --no-index --find-links .whl pydantic
export PYTHONPATH=.:$PYTHONPATH PYTHONUNBUFFERED=1
W=/tmp/run3out; mkdir -p "$W"
timeout -s TERM ${2:-560} python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 100 2000 --points 3 \
  --duration 20 --no-peft --out "$W/table" --commit "$1" > "$W/table.log" 2>&1
echo "table rc=$? at $(( $(date +%s) - T0 )) s"
grep -v "^\s*$" "$W/table.log" | grep -E "^\[|req/s" | tail -20; cat "$W/table/"*.md 2>/dev/null | head -30
tar -cf "$OUT/run3.tar" -C "$W" --exclude="*.gz" .
echo "done at $(( $(date +%s) - T0 )) s"
