#!/usr/bin/env bash
# Session 2026-12-03 (evening) GPU run 8: a step waits only for the prefetched adapter copies it reads or
# evicts. GPU tests of the change, then saturated Llama-2-7B q/k/v/o A/B interleaved: A = 6b8909f (every step
# waits for the last step's prefetches), B = this commit; each with the base alone and n = 1000.
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date
mkdir -p /tmp/base && tar -xzf .device/base.tar.gz -C /tmp/base
timeout 150 python -m pytest -q -m gpu -x tests/test_engine_gpu.py -k "prefetched_copies or tiny_pool or pageable" > $OUT/tests.log 2>&1; echo tests rc=$?
tail -3 $OUT/tests.log
for i in 1 2; do
  for v in A B; do
    LEFT=$(( 570 - ($(date +%s) - T0) ))
    [ $LEFT -lt 60 ] && { echo "no time for $v$i"; continue; }
    if [ $v = A ]; then D=/tmp/base; CM=6b8909f; else D=$PWD; CM=$C; fi
    (cd $D && timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/$v$i --commit $CM > $OUT/$v$i.log 2>&1); echo "$v$i rc=$?"
    grep -E "n=" $OUT/$v$i.log | cut -c1-330
  done
done
date
cp .device/run8.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
