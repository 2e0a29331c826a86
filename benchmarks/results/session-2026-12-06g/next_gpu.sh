#!/usr/bin/env bash
# Prepared for the next device session (not run). From the repository root, with the device README's bundle prefix:
#   bash benchmarks/results/session-2026-12-06g/next_gpu.sh COMMIT [SECONDS]
# On an H200: session 06f's run2.sh (issue 12's headline: saturated S2 n = 0, 1, 1000 in one process; issue 16's
# PEFT comparison; then the LoRA kernel GPU tests). On an H100: the GPU tests this session's run 1 did not reach
# (tests/test_engine_gpu.py's [mha] ones, the one-copy host-to-device test, no compiles after warm-up), then
# s-lora-table S1 (base, n = 1000) on 30 s traces with the points' ramp ceiling while time is left.
# SECONDS: the command's budget (default 585; give less when the session's device time is short).
cd "$(dirname "$0")/../../.."
T0=$(date +%s); B=${2:-585}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
left() { echo $(( B - ($(date +%s) - T0) )); }
case "$GPU" in
  *H200*) exec bash benchmarks/results/session-2026-12-06f/run2.sh "$1" ;;
esac
L=$(left)
timeout -s TERM "$L" python -m pytest -q -m gpu -p no:cacheprovider --durations=10 tests/test_engine_gpu.py \
  -k "mha or h2d_many or no_kernel_compiles" > "$OUT/engine_rest.log" 2>&1
echo "engine_rest rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "passed|failed|error" "$OUT/engine_rest.log" | tail -3
L=$(left); [ "$L" -lt 200 ] && { echo "no time for S1"; exit 0; }
timeout -s TERM "$L" python -m benchmarks.suite s-lora-table --quick --settings S1 --adapters 0 1000 --points 2 \
  --duration 30 --no-peft --out /tmp/S1 --commit "$1" > "$OUT/S1.log" 2>&1
echo "S1 rc=$? at $(( $(date +%s) - T0 )) s"
for f in /tmp/S1/*.json /tmp/S1/*.md; do [ -f "$f" ] && cp "$f" "$OUT/S1_$(basename "$f")"; done
grep -E "rate |^\| S1" "$OUT/S1.log" | tail -8
