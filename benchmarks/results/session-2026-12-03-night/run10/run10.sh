#!/usr/bin/env bash
# Prepared for the next GPU session (one ~9-minute device command; copy to .device/ and run with the commit):
# the GPU tests of expand_n_iters, the decode kernel sweep with each launch alone, the same step with the
# plan of the engine's decode graphs (256 adapter slots: programs for 256 tiles), then saturated Llama-2-7B
# q/k/v/o A/B interleaved: A = the defaults, B = decode expand_n_iters 4 (change B to the sweep's best), each with
# GPU time per step kind (gpu_s_by_kind).
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
# expand_n_iters is not on main (not measured end to end): this session's patch adds it to the copy here
git apply benchmarks/results/session-2026-12-03-eve/patches/expand_n_iters.patch || { echo "patch does not apply"; exit 1; }
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 150 python -m pytest -q -m gpu -x tests/test_kernels_gpu.py -k "expand_blocks" > $OUT/tests.log 2>&1; echo tests rc=$?
tail -2 $OUT/tests.log
timeout 120 python benchmarks/kernels.py --lora-only --sweep --parts --case "decode 250 req, 125 adapters" --out $OUT/kernels > $OUT/kernels.log 2>&1; echo kernels rc=$?
grep -E "expand_n_iters|\{\} " $OUT/kernels/kernels.md | head -12
# the same step with its plan built for 256 adapter slots, as the engine's decode graphs build it: the dead programs' cost
timeout 90 python benchmarks/kernels.py --lora-only --parts --case "decode 250 req, 125 adapters" --plan-slots 256 --out $OUT/kernels256 > $OUT/kernels256.log 2>&1; echo kernels256 rc=$?
grep -E "^\| decode 250" $OUT/kernels/kernels.md $OUT/kernels256/kernels.md | cut -c1-200 | head -12
for i in 1 2; do
  for v in A B; do
    LEFT=$(( 570 - ($(date +%s) - T0) ))
    [ $LEFT -lt 60 ] && { echo "no time for $v$i"; continue; }
    if [ $v = A ]; then K='{}'; else K='{"decode": {"expand_n_iters": 4}}'; fi
    timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --lora-kernels "$K" --out $OUT/$v$i --commit $C > $OUT/$v$i.log 2>&1; echo "$v$i rc=$?"
    grep -E "n=" $OUT/$v$i.log | grep -o "n=[0-9]* .*req/s\|GPU {[^}]*}"
  done
done
date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
