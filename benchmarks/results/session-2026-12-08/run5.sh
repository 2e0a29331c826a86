#!/usr/bin/env bash
# Session 08 run 5: issue 16's early abort in the paper's regime, an overload: `admission --rate R` (no rate search)
# at R = 40 req/s, ~1.6x the H100's S2 n = 1000 maximum sustainable rate (25.5 req/s, 06i run 5), cv 4 and 8 (the
# issue's cv >= 4), 30-s traces, FCFS / LCFS / early abort (predicted), n = 1000. The paper's margin over FCFS at
# cv >= 4: +28 to +59 points (its result files; README of this folder). Results go straight to $OUT/run5.
#   bash benchmarks/results/session-2026-12-08/run5.sh COMMIT [RATE [DURATION]]   (carry .whl, or .device + the bundle's prefix)
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -c "import pydantic" 2>/dev/null || python -m pip install -q --no-index --find-links .whl pydantic
export PYTHONPATH=.:$PYTHONPATH PYTHONUNBUFFERED=1
W="$OUT/run5"; mkdir -p "$W"
timeout -s TERM 570 python -m benchmarks.suite admission --quick --adapters 1000 --rate "${2:-40}" --cvs 4 8 \
  --duration "${3:-30}" --out "$W/admission" --commit "$1" > "$W/admission.log" 2>&1
echo "admission rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "^\[" "$W/admission.log" | tail -8
rm -f "$W"/*/*.gz
echo "done at $(( $(date +%s) - T0 )) s"
