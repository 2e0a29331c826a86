#!/usr/bin/env bash
# Session 06f run 1: session 06e's next_gpu.sh (expand_into_residual.patch: its GPU tests, the small burst
# main / patch twice, saturated S2 n = 0, 1, 1000 main / patch), then main's side-stream GPU test if time is left.
# bash benchmarks/results/session-2026-12-06f/run1.sh COMMIT [2]   (2: the PEFT comparison only)
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"; COMMIT=$1
P=benchmarks/results/session-2026-12-06e/expand_into_residual.patch
if [ "$2" = 2 ]; then
  timeout -s TERM 560 python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 --points 1 --duration 10 \
    --burst 64 --out $OUT/peft --commit $1 > $OUT/peft.log 2>&1; echo "peft rc=$?"; grep -E "PEFT" $OUT/peft.log | tail -2
  exit 0
fi
summary() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']:
    print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'elapsed', round(r['elapsed_s'], 4), 'steps', r['steps'],
          'gpu', r['gpu_s_by_kind'], 'share', r['share_of_base'] and round(r['share_of_base'], 4))" "$1" "$2"
}
run() {  # name, saturated.py args...
  local n=$1; shift; L=$(( 590 - ($(date +%s) - T0) )); [ $L -lt 40 ] && { echo "no time for $n"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo "$@" --out /tmp/$n --commit "$COMMIT ($n)" \
    > /tmp/$n.log 2>&1; echo "$n rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/$n/saturated.json $OUT/$n.json; summary /tmp/$n/saturated.json $n
}
git apply $P && echo "patch applied"
timeout -s TERM 150 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "(gqa or gemma2) and (side_stream or cuda_graphs_equal_eager)" \
  > $OUT/gpu_tests.log 2>&1; echo "tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -2 $OUT/gpu_tests.log
git apply -R $P
for i in 1 2; do
  run small_main$i --adapters 0 8 --requests 32 --max-len 128
  git apply $P; run small_patch$i --adapters 0 8 --requests 32 --max-len 128; git apply -R $P
done
run sat_main --adapters 0 1 1000
git apply $P; run sat_patch --adapters 0 1 1000; git apply -R $P
L=$(( 590 - ($(date +%s) - T0) )); [ $L -gt 60 ] && { timeout -s TERM $L python -m pytest -q -m gpu tests/test_engine_gpu.py -k "gqa and side_stream" > $OUT/gpu_tests_main.log 2>&1; echo "main tests rc=$?"; tail -2 $OUT/gpu_tests_main.log; }
echo "done at $(( $(date +%s) - T0 )) s"
