#!/usr/bin/env bash
# Prepared for the next GPU session (one ~8-minute device command; copy to .device/ and run with the commit):
# the GEMV variant of the decode LoRA kernels (patches/gemv_decode.patch: a tile's tokens one at a time, no
# tl.dot tile; expand 54 registers instead of 105 on sm_90, so ~9 programs per SM instead of 4): the decode
# kernel sweep (every output checked against the torch reference in bf16), then saturated Llama-2-7B q/k/v/o
# A/B interleaved: A = defaults, B = decode expand_gemv (change B to the sweep's best before running).
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
git apply benchmarks/results/session-2026-12-03-night/patches/gemv_decode.patch || { echo "patch does not apply"; exit 1; }
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 150 python benchmarks/kernels.py --lora-only --sweep --case "decode 250 req" --case "decode 256 req, 256" --out $OUT/kernels > $OUT/kernels.log 2>&1; echo kernels rc=$?
grep -E "gemv|\| default \|" $OUT/kernels/kernels.md | cut -c1-160
for i in 1 2; do
  for v in A B; do
    LEFT=$(( 570 - ($(date +%s) - T0) ))
    [ $LEFT -lt 80 ] && { echo "no time for $v$i"; continue; }
    if [ $v = A ]; then K='{}'; else K='{"decode": {"expand_gemv": true}}'; fi
    timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --lora-kernels "$K" --out $OUT/$v$i --commit $C > $OUT/$v$i.log 2>&1; echo "$v$i rc=$?"
    grep -E "n=" $OUT/$v$i.log | grep -o "n=[0-9]* .*req/s\|GPU {[^}]*}"
  done
done
date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
