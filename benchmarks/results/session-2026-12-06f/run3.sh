#!/usr/bin/env bash
# Session 06f run 3 (run 2 never started: no machine came). On an H200 first issue 12's headline (saturated S2
# n = 0, 1, 1000 in one process) and issue 16's PEFT comparison. Then issue 16's s-lora-table on the settings that
# never ran on a GPU, one process each: S4 (Llama-2-13B, ranks 64 / 32 / 16), S1 (Llama-2-7B, rank 8), llama3-8b-all, each
# with the base model and n = 1000 and a short rate search (2 replays of 10 s), no PEFT, while time is left.
# bash benchmarks/results/session-2026-12-06f/run3.sh COMMIT [SECONDS]
cd "$(dirname "$0")/../../.."
T0=$(date +%s); B=${2:-585}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
left() { echo $(( B - ($(date +%s) - T0) )); }
case "$GPU" in
  *H200*)
    timeout -s TERM 200 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 --out /tmp/sat \
      --commit "$1" > /tmp/sat.log 2>&1; echo "sat rc=$?"; cp /tmp/sat/saturated.json $OUT/sat_h200.json
    python3 -c "
import json; d = json.load(open('$OUT/sat_h200.json'))['settings'][0]
for r in d['runs']: print(r['adapters'], round(r['req_s'], 2), r['steps'], r['gpu_s_by_kind'], r['share_of_base'])"
    timeout -s TERM 200 python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 --points 1 \
      --duration 10 --burst 64 --out /tmp/peft --commit $1 > $OUT/peft.log 2>&1; echo "peft rc=$?"
    cp /tmp/peft/s-lora-table.json $OUT/peft_s-lora-table.json; grep -E "PEFT" $OUT/peft.log | tail -2 ;;
esac
for s in S4 S1 llama3-8b-all; do
  L=$(left); [ $L -lt 150 ] && { echo "no time for $s"; continue; }
  n=$(echo $s | tr -d ' '); timeout -s TERM $L python -m benchmarks.suite s-lora-table --quick --settings $s \
    --adapters 0 1000 --points 2 --duration 10 --no-peft --out /tmp/$n --commit $1 > $OUT/$n.log 2>&1
  echo "$s rc=$? at $(( $(date +%s) - T0 )) s"
  for f in /tmp/$n/*.json /tmp/$n/*.md; do [ -f "$f" ] && cp "$f" "$OUT/${n}_$(basename $f)"; done
  grep -E "^\| (S1|S4|llama3)" $OUT/$n.log | tail -6
done
echo "done at $(( $(date +%s) - T0 )) s"
