#!/usr/bin/env bash
# Session 2026-12-06e run 3: the mixed regime's tile size. Run 2's profile: one adapter of rank 64 costs ~9 ms of
# LoRA kernels per 4096-token step with prefill (~2.4x its bound), in 16-token tiles. (1) benchmarks/kernels.py
# --sweep over tile_m 16 / 32 / 64 / 128 on the S2 steps with prefill (1 adapter of rank 64; 120 adapters) and
# issue 12's prefill and mixed cases; (2) saturated S2 n = 0, 1, 1000 with the default and with mixed tile_m 64
# (EngineConfig.lora.kernels), each in its own process, profiled over steps 5-45 (prefill-heavy) so that the
# LoRA kernels' time is read apart from the run-to-run spread of the steps with prefill.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06e/run3.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"; COMMIT=$1
timeout -s TERM 170 python benchmarks/kernels.py --lora-only --sweep --sweep-match tile_m --case "1 adapter of rank 64" \
  --case "120 adapters" --case "mixed 254" --case "prefill 16 x 128" --out $OUT/kern > $OUT/kern.log 2>&1
echo "kernels rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "^\| (mixed|prefill)" $OUT/kern.log | cut -c1-220
summary() {
  python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']:
    p = r['profile'] or {}
    print(sys.argv[2], r['adapters'], round(r['req_s'], 2), 'elapsed', round(r['elapsed_s'], 4), 'steps', r['steps'],
          'gpu', r['gpu_s_by_kind'], 'share', r['share_of_base'] and round(r['share_of_base'], 4), 'window', p.get('kinds_ms'), p.get('window'))" "$1" "$2"
}
run() {  # name, saturated.py args...
  local n=$1; shift; L=$(( 590 - ($(date +%s) - T0) )); [ $L -lt 100 ] && { echo "no time for $n"; return; }
  timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo --profile --no-profile-host --profile-steps 5 45 \
    "$@" --out /tmp/$n --commit "$COMMIT ($n)" > /tmp/$n.log 2>&1; echo "$n rc=$? at $(( $(date +%s) - T0 )) s"
  cp /tmp/$n/saturated.json $OUT/$n.json; summary /tmp/$n/saturated.json $n
}
run sat_t16 --adapters 0 1 1000
run sat_t64 --adapters 0 1 1000 --lora-kernels '{"mixed": {"tile_m": 64}}'
run sat_t64n128 --adapters 1 --lora-kernels '{"mixed": {"tile_m": 64, "expand_n": 128}}'
echo "done at $(( $(date +%s) - T0 )) s"
