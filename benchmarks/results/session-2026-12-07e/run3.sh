#!/usr/bin/env bash
# Session 07e run 3: the one-step read-ahead online (what a user feels below and near saturation): S2 with 2000
# adapters (most requests' adapters not resident), S-LoRA's Poisson trace for 30 s at RATE req/s in real time
# (`saturated.py --online`: TTFT p50/p90/p99, req/s), A = COMMIT with prefetch_one_step.patch reversed, B = COMMIT,
# each (side, rate) in its own process, B first. A 64-request saturated round precedes each online run (the
# script's warm-up and compiles).
#   bash benchmarks/results/session-2026-12-07e/run3.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run3out
R=benchmarks/results/session-2026-12-07e
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run3.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
rm -rf /tmp/A && cp -r . /tmp/A && (cd /tmp/A && patch -R -p1 -s < $R/prefetch_one_step.patch) || { echo "patch failed"; exit 1; }
C=$1
on() {  # on NAME DIR LABEL RATE
  local name=$1 dir=$2 label=$3 rate=$4
  (cd "$dir" && timeout -s TERM 130 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 2000 --requests 64 \
    --online "$rate" --online-duration 30 --out "$W/on_$name" --commit "$C$label" > "$W/on_$name.log" 2>&1)
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "online" "$W/on_$name.log" | cut -c1-400; keep
}
for rate in 19 14; do
  on B_r$rate . "" $rate
  on A_r$rate /tmp/A " without prefetch_one_step.patch" $rate
done
echo "done at $(( $(date +%s) - T0 )) s"
