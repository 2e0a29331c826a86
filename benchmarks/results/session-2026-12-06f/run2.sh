#!/usr/bin/env bash
# Session 06f run 2. On an H200: issue 12's headline (saturated S2 n = 0, 1, 1000 in one process) and issue 16's
# PEFT comparison, then GPU tests with the time left. On an H100 (the S2 / PEFT figures exist for this card):
# the GPU test suite at this commit, tests/test_kernels_gpu.py, then tests/test_engine_gpu.py's gqa / mha / model-free tests (A),
# then its qwen3 / phi3 / gemma2 ones (B) while time is left; `run2.sh COMMIT B` runs B alone.
# bash benchmarks/results/session-2026-12-06f/run2.sh COMMIT [B]
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
left() { echo $(( 585 - ($(date +%s) - T0) )); }
tests() {  # name, pytest args...
  local n=$1; shift; local L; L=$(left); [ "$L" -lt 30 ] && { echo "no time for $n"; return; }
  timeout -s TERM "$L" python -m pytest -q -m gpu -p no:cacheprovider --durations=10 "$@" > "$OUT/$n.log" 2>&1
  echo "$n rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "passed|failed|error" "$OUT/$n.log" | tail -3
}
if [ "$2" = B ]; then
  tests engine_b tests/test_engine_gpu.py -k "qwen3 or phi3 or gemma2"; exit 0
fi
case "$GPU" in
  *H200*)
    timeout -s TERM 200 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 --out /tmp/sat \
      --commit "$1" > /tmp/sat.log 2>&1; echo "sat rc=$?"; cp /tmp/sat/saturated.json $OUT/sat_h200.json
    python3 -c "
import json; d = json.load(open('$OUT/sat_h200.json'))['settings'][0]
for r in d['runs']: print(r['adapters'], round(r['req_s'], 2), r['steps'], r['gpu_s_by_kind'], r['share_of_base'])"
    timeout -s TERM 230 python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 --points 1 \
      --duration 10 --burst 64 --out $OUT/peft --commit $1 > $OUT/peft.log 2>&1; echo "peft rc=$?"
    grep -E "PEFT" $OUT/peft.log | tail -2
    tests kernels tests/test_kernels_gpu.py -k "test_lora_cuda or cuda_graph_decode_step" ;;
  *)
    tests kernels tests/test_kernels_gpu.py
    tests engine_a tests/test_engine_gpu.py -k "not (qwen3 or phi3 or gemma2)"
    tests engine_b tests/test_engine_gpu.py -k "qwen3 or phi3 or gemma2" ;;
esac
echo "done at $(( $(date +%s) - T0 )) s"
