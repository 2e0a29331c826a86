#!/usr/bin/env bash
# Session 2026-12-06d run 4: the decode graphs per LoRA plan slot bound (d2ee209) against the commit before
# (127b191: every plan built for max_loras_per_batch slots). (1) GPU tests of the change; (2) saturated S2
# n = 0, 1, 1000 with the change; (3) the 32-request burst over 8 adapters (the PEFT comparison's shape) with
# it; (4) app/cuda_graphs.py of 127b191: saturated n = 1 and the burst again. One process each.
# (The device's copy has no history: step (4) failed there, "invalid object name"; run 5 does the A/B.)
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06d/run4.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
summary() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
print(sys.argv[2], 'setup_s', round(d['setup_s'], 1))
for r in d['runs']:
    print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'elapsed', round(r['elapsed_s'], 4), 'steps', r['steps'], 'batch', round(r['mean_batch'], 1),
          'gpu', r['gpu_s_by_kind'], 'share', r['share_of_base'] and round(r['share_of_base'], 4))" "$1" "$2"
}
timeout -s TERM 230 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "gqa and (cuda_graph or warmup_captures)" \
  "tests/test_engine_gpu.py::test_no_kernel_compiles_after_warmup[demo]" > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -3 $OUT/gpu_tests.log
run() {  # name, saturated.py args...
  local n=$1; shift; L=$(( 585 - ($(date +%s) - T0) )); [ $L -lt 40 ] && { echo "no time for $n"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo "$@" --out /tmp/$n --commit "$COMMIT ($n)" \
    > /tmp/$n.log 2>&1; echo "$n rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/$n/saturated.json $OUT/$n.json; summary /tmp/$n/saturated.json $n
}
COMMIT=$1
run sat_after --adapters 0 1 1000
run small_after --adapters 0 8 --requests 32 --max-len 128 --async-scheduling on on
git show 127b191:app/cuda_graphs.py > app/cuda_graphs.py && git diff --stat
run sat_before --adapters 1
run small_before --adapters 0 8 --requests 32 --max-len 128 --async-scheduling on on
git checkout app/cuda_graphs.py
echo "done at $(( $(date +%s) - T0 )) s"
