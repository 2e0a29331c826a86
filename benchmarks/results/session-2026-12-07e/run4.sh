#!/usr/bin/env bash
# Session 07e run 4 (PREPARED, NOT RUN: too little device time was left to start a machine): the prefetch in
# admission order under LCFS (e3197f4). Saturated S2, n = 1000, queue_order
# lcfs (400 requests at once, admitted newest first): B = COMMIT, A = COMMIT with admission_order.patch reversed
# (the read-ahead takes the queue oldest first), each in its own process, B first.
#   bash benchmarks/results/session-2026-12-07e/run4.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run4out
R=benchmarks/results/session-2026-12-07e
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run4.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
rm -rf /tmp/A && cp -r . /tmp/A && (cd /tmp/A && patch -R -p1 -s < $R/admission_order.patch) || { echo "patch failed"; exit 1; }
C=$1
sat() {  # sat NAME DIR LABEL
  local name=$1 dir=$2 label=$3
  (cd "$dir" && timeout -s TERM 90 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 1000 \
    --scheduler '{"queue_order": "lcfs"}' --out "$W/sat_$name" --commit "$C$label" > "$W/sat_$name.log" 2>&1)
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$name.log" | cut -c1-200; keep
}
sat lcfs_B . ""
sat lcfs_A /tmp/A " without admission_order.patch"
echo "done at $(( $(date +%s) - T0 )) s"
