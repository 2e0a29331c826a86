#!/usr/bin/env bash
# Prepared for the next device session (not run). From the repository root, with the device README's bundle prefix:
#   bash benchmarks/results/session-2026-12-06i/next_gpu.sh COMMIT
#        On an H200: issue 12's headline (saturated S2 n = 0, 1, 1000; Llama-3-8B all-linear n = 0, 1000).
#        On an H100: where one adapter's ~1.3 ms a decode step goes (run 6): saturated S2 n = 0 and 1 with the GPU
#        profiled over decode steps 300-340 without cProfile (kernel time and GPU busy share; the memsets of the
#        shrink's split K show as "Memset"), then S2's rate search with 5 points (run 5's brackets bisected).
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
case "$GPU" in
  *H200*) bash benchmarks/results/session-2026-12-06i/run2.sh "$1"; exit 0 ;;
esac
timeout -s TERM 200 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 --profile --no-profile-host \
  --profile-steps 300 340 --out /tmp/prof1 --commit "$1" > "$OUT/profile_n1.log" 2>&1
echo "profile rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/prof1/saturated.json "$OUT/profile_n1.json"
grep -E "^- llama" /tmp/prof1/saturated.md
L=$(( 575 - ($(date +%s) - T0) ))
timeout -s TERM "$L" python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 0 1000 --points 5 \
  --duration 30 --no-peft --out /tmp/S2 --commit "$1" > "$OUT/S2.log" 2>&1
echo "S2 rc=$? at $(( $(date +%s) - T0 )) s"
for f in /tmp/S2/*.json /tmp/S2/*.md; do [ -f "$f" ] && cp "$f" "$OUT/S2_$(basename "$f")"; done
grep -E "rate |^\| S2|^- S2" "$OUT/S2.log" | tail -14
