#!/usr/bin/env bash
# Session 2026-12-05, run 44: (1) gemma2's first tokens: ours (GPU triton / torch, CPU torch) against transformers
# + PEFT; (2) saturated S2 Llama-2-7B q/k/v/o, n = 0 / 1000, the GPU profiled without cProfile over steps 40-60
# (W1) and 200-260 (W2): the GPU's busy share with and without LoRA; (3) the decode LoRA sweep at 24, 64 and 255
# requests (q/k/v/o).
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $C"
export TRITON_CACHE_DIR=/tmp/tc_test
timeout 150 python .device/g2dbg.py > $OUT/g2dbg.log 2>&1; echo "g2dbg rc=$?"
grep -v "Loading\|Warn\|deprec\|output = " $OUT/g2dbg.log | grep "worst\|Error\|error\|tf32\|attention" | tail -5; date
for V in W1 W2; do
  LEFT=$(( 560 - ($(date +%s) - T0) )); [ $LEFT -lt 90 ] && { echo "no time for $V"; break; }
  case $V in W1) S="40 60";; W2) S="200 260";; esac
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --profile --no-profile-host \
    --profile-steps $S --out $OUT/sat_$V --commit "$C ($V: GPU profile, steps $S)" > $OUT/sat_$V.log 2>&1
  echo "sat $V rc=$?"; grep -A3 "^## Steps" $OUT/sat_$V/saturated.md | cut -c1-400; date
done
LEFT=$(( 585 - ($(date +%s) - T0) ))
timeout -s TERM $LEFT python benchmarks/kernels.py --lora-only --sweep --case "decode 24 req" --case "decode 64 req" \
  --case "decode 255 req" --out $OUT/kernels > $OUT/kernels.log 2>&1; echo "kernels rc=$?"; date
cp .device/run44.sh .device/g2dbg.py $OUT/
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
