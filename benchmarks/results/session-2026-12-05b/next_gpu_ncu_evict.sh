#!/usr/bin/env bash
# Session 2026-12-05b, the next GPU run (not run: no device was lent after run 46). (1) Nsight Compute on the
# decode LoRA kernels of the loaded S2 step (255 requests, 230 adapters, q/k/v/o, one Llama-2-7B layer): where a
# launch at ~1.9x its bytes spends its time (stalls, occupancy, DRAM throughput); if the image has ncu.
# (2) The kernel sweep with the weights_evict experiment (weights_evict.patch, from 7445a61, reverted in b728936
# until measured: `eviction_policy="evict_first"` on the adapter-weight loads). Run from the repository root:
# `bash benchmarks/results/session-2026-12-05b/next_gpu_ncu_evict.sh COMMIT` (with PYTHONPATH=. and the Ray bundle's
# /tmp/raysite on it for pydantic). (3) below: a saturated A/B of expand_n 128.
cd "$(dirname "$0")/../../.."
git apply benchmarks/results/session-2026-12-05b/weights_evict.patch || { echo "patch does not apply"; exit 1; }
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/nsight-compute*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"; [ -z "$NCU" ] && ls /usr/local/ /usr/local/cuda/bin 2>&1 | head -60
export TRITON_CACHE_DIR=/tmp/tc
[ -n "$NCU" ] && timeout 200 $NCU --target-processes all --kernel-name regex:"lora_(shrink|expand)_kernel" --launch-count 4 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section SchedulerStats \
  python benchmarks/kernels.py --lora-only --case "decode 255 req" --out $OUT/k > $OUT/ncu.txt 2>&1
echo "ncu rc=$?"; grep -E "lora_|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Grid Size|Waves Per SM|Stall|ERR|Error" $OUT/ncu.txt | cut -c1-160 | head -120

timeout 120 python benchmarks/kernels.py --lora-only --sweep --parts --case "decode 24 req" --case "decode 64 req" \
  --case "decode 255 req" --case "mixed 250 decode" --out $OUT/kernels > $OUT/kernels.log 2>&1
echo "kernels rc=$?"; grep -E "evict|default|\{\}:|graph | shrink: | expand: " $OUT/kernels.log | cut -c1-200

# (3) expand_n 128 in decode steps end to end: run 44's sweep had it 2.4-3.8% faster than the default (256) in
# all three decode cases (8 CTAs per SM instead of 4 on sm_90, half the columns each); saturated S2, A = defaults,
# B = that override, one process each, while the time lasts.
T0=${T0:-$(date +%s)}
for V in A B; do
  LEFT=$(( 570 - ($(date +%s) - T0) )); [ $LEFT -lt 100 ] && { echo "no time for $V"; break; }
  case $V in
    A) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_A --commit "$1 (A: defaults)" > $OUT/sat_A.log 2>&1;;
    B) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --lora-kernels '{"decode": {"expand_n": 128}}' --out $OUT/sat_B --commit "$1 (B: decode expand_n 128)" > $OUT/sat_B.log 2>&1;;
  esac
  echo "sat $V rc=$?"; grep -ho "n=[0-9]* async=True: [0-9.]* req/s\|(GPU {[^}]*})" $OUT/sat_$V.log
done
