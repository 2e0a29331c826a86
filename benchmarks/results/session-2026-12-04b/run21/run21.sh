#!/usr/bin/env bash
# (1) issue 16's http suite: one in-process replay and the Serve app twice (its noise) on the same trace;
# (2) the Hugging Face PEFT baseline of s-lora-table (S2 shape, 32 requests, 8 adapters, lengths < 128) against
#     our engine on the same requests, with what time is left (the rate part reduced to one short point).
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s TERM 330 python -m benchmarks.suite http --quick --ingress-replicas 1 1 --out $OUT/http --commit $C > $OUT/http.log 2>&1; echo http rc=$?
grep -E "in-process|HTTP" $OUT/http.log | tail -4
LEFT=$(( 570 - ($(date +%s) - T0) ))
echo "peft with $LEFT s left"
[ $LEFT -gt 120 ] && timeout -s TERM $LEFT python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 --points 1 --duration 10 --burst 64 --out $OUT/peft --commit $C > $OUT/peft.log 2>&1; echo peft rc=$?
grep -E "PEFT|saturated" $OUT/peft.log | tail -4
date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
