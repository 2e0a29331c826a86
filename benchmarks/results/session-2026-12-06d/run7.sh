#!/usr/bin/env bash
# Session 2026-12-06d run 7 (run 6 cut to the device time left): on an H200 saturated S2 n = 0, 1, 1000 first
# (issue 12's headline in one command), then the slot-bound graphs' GPU tests with the time left; on an H100
# the tests, then saturated n = 0, 1.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06d/run7.sh COMMIT LIMIT_S
cd "$(dirname "$0")/../../.."
T0=$(date +%s); END=${2:-300}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
tests() {
  L=$(( END - 5 - ($(date +%s) - T0) )); [ $L -lt 45 ] && { echo "no time for the tests"; return; }
  timeout -s TERM $L python -m pytest -q -m gpu tests/test_engine_gpu.py -k "gqa and (cuda_graph or warmup_captures)" \
    "tests/test_engine_gpu.py::test_no_kernel_compiles_after_warmup[demo]" > $OUT/gpu_tests.log 2>&1
  echo "gpu tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -2 $OUT/gpu_tests.log
}
sat() {
  L=$(( END - 5 - ($(date +%s) - T0) )); [ $L -lt 45 ] && { echo "no time for sat"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters "$@" --out /tmp/sat --commit "$COMMIT" \
    > /tmp/sat.log 2>&1; echo "sat rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/sat/saturated.json /tmp/sat/saturated.md $OUT/
  grep -E "^\| llama" /tmp/sat/saturated.md
}
COMMIT=$1
if [[ "$GPU" == *H200* ]]; then sat 0 1 1000; tests; else tests; sat 0 1; fi
echo "done at $(( $(date +%s) - T0 )) s"
