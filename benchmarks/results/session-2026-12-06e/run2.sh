#!/usr/bin/env bash
# Session 2026-12-06e run 2: LoRAConfig.overlap_shrink in the decode graphs only (run 1 found the overlap in eager
# steps with prefill slower), now the default, against off, each side in its own process on one GPU: (1) the
# side-stream GPU test; (2) the 32-request burst over 8 adapters, off / on; (3) saturated S2 n = 0, 1, 1000, off
# then on; (4) n = 0, 1 again with --profile over steps 5-45 (prefill-heavy), kernels and host: where one
# adapter's steps with prefill lose 1.3 s (run 1) against the base.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06e/run2.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"; COMMIT=$1
timeout -s TERM 150 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "gqa and side_stream" \
  > $OUT/gpu_tests.log 2>&1; echo "tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -3 $OUT/gpu_tests.log
summary() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']:
    print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'elapsed', round(r['elapsed_s'], 4), 'steps', r['steps'],
          'gpu', r['gpu_s_by_kind'], 'wall', r['step_s_by_kind'], 'share', r['share_of_base'] and round(r['share_of_base'], 4))
    if r['profile']: print(json.dumps(r['profile']))" "$1" "$2"
}
run() {  # name, overlap (true/false), saturated.py args...
  local n=$1 ov=$2; shift 2; L=$(( 590 - ($(date +%s) - T0) )); [ $L -lt 40 ] && { echo "no time for $n"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo --lora "{\"overlap_shrink\": $ov}" "$@" \
    --out /tmp/$n --commit "$COMMIT ($n)" > /tmp/$n.log 2>&1; echo "$n rc=$? at $(( $(date +%s) - T0 )) s"
  cp /tmp/$n/saturated.json $OUT/$n.json; summary /tmp/$n/saturated.json $n
}
run small_off false --adapters 0 8 --requests 32 --max-len 128
run small_on true --adapters 0 8 --requests 32 --max-len 128
run sat_off false --adapters 0 1 1000
run sat_on true --adapters 0 1 1000
run prof true --adapters 0 1 --profile --profile-host --profile-steps 5 45
echo "done at $(( $(date +%s) - T0 )) s"
