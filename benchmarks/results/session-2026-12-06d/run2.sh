#!/usr/bin/env bash
# Session 2026-12-06d run 2. On an H200: (1) saturated S2 n = 0, 1, 1000 at the commit (issue 12's headline: the
# share of base in one process), (2) the PEFT comparison (s-lora-table's PEFT workload), (3) g_major.patch: the
# shrink grid with the target g fastest (a tile's x read for q, k and v by neighbouring programs: L2 hits in
# prefill-heavy steps) against the default, kernel benchmark mixed cases and saturated S2 n = 1000, one process
# each. On an H100 only (3), with a default n = 1000 run in the same command.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06d/run2.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
left() { echo $(( $1 - ($(date +%s) - T0) )); }
sat() {  # name, adapters...
  local n=$1; shift; L=$(left 585); [ $L -lt 70 ] && { echo "no time for sat $n"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters "$@" --out /tmp/sat_$n \
    --commit "$COMMIT ($n)" > /tmp/sat_$n.log 2>&1; echo "sat $n rc=$? at $(( $(date +%s) - T0 )) s"
  cp /tmp/sat_$n/saturated.json $OUT/sat_$n.json; grep -E "^\| llama" /tmp/sat_$n/saturated.md
}
kern() {  # name
  L=$(left 585); [ $L -lt 60 ] && { echo "no time for kernels $1"; return; }
  timeout -s TERM 100 python benchmarks/kernels.py --lora-only --case mixed --case prefill --out /tmp/k_$1 > /tmp/k_$1.log 2>&1
  echo "kernels $1 rc=$?"; cp /tmp/k_$1/kernels.md $OUT/kernels_$1.md; grep -E "^\| (mixed|prefill)" /tmp/k_$1/kernels.md
}
COMMIT=$1
if [[ "$GPU" == *H200* ]]; then
  sat D 0 1 1000
  L=$(left 420); if [ $L -gt 200 ]; then
    timeout -s TERM $L python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 --points 1 --duration 10 \
      --burst 64 --out /tmp/peft --commit $1 > /tmp/peft.log 2>&1; echo "peft rc=$?"; grep -E "PEFT" /tmp/peft.log | tail -2
    cp /tmp/peft/*.json /tmp/peft/*.md $OUT/ 2>/dev/null
  fi
else
  sat D 1000
fi
kern D
git apply benchmarks/results/session-2026-12-06d/g_major.patch && git diff --stat
kern G
sat G 1000
git checkout kernels/
echo "done at $(( $(date +%s) - T0 )) s"
