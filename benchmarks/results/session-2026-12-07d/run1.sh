#!/usr/bin/env bash
# Session 07d run 1: main's standing figures at COMMIT on whatever GPU comes (the goals are H200 figures):
# saturated S2 (Llama-2-7B q/k/v/o; n = 0, 1, 1000, 2000) and Llama-3-8B all-linear (n = 0, 1000), each setting
# in its own process. Files go into $OUT/run1.tar as each stage ends (a run clipped by the device budget keeps
# what finished).
#   bash benchmarks/results/session-2026-12-07d/run1.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run1out
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run1.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
sat() {  # sat NAME SETTING N...
  local name=$1 setting=$2; shift 2
  timeout -s TERM $(( 60 + 60 * $# )) python benchmarks/saturated.py --settings "$setting" --adapters "$@" \
    --out "$W/sat_$name" --commit "$C" > "$W/sat_$name.log" 2>&1
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$name.log" | cut -c1-220; keep
}
C=$1; shift
sat s2 llama2-7b-qkvo 0 1 1000 2000
sat 8b llama3-8b-all 0 1000
echo "done at $(( $(date +%s) - T0 )) s"
