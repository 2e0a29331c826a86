#!/usr/bin/env bash
# Session 07f run 1: (1) 07e's prepared run4.sh (the prefetch in admission order under LCFS, saturated S2 n = 1000,
# A/B of 07e's admission_order.patch); (2) the standing S2 figures at COMMIT (n = 0, 1, 1000, 2000; one process),
# the first GPU run of saturated.py's eighth trace column (KV pages held after each step).
#   bash benchmarks/results/session-2026-12-07f/run1.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
bash benchmarks/results/session-2026-12-07e/run4.sh "$1"
W=/tmp/run1out
mkdir -p "$W"
timeout -s TERM 300 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 2000 \
  --out "$W/sat_std_s2" --commit "$1" > "$W/sat_std_s2.log" 2>&1
echo "std_s2 rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_std_s2.log" | cut -c1-200
tar -rf "$OUT/run1.tar" -C "$W" .
echo "done at $(( $(date +%s) - T0 )) s"
