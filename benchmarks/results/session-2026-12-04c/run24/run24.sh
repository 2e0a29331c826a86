#!/usr/bin/env bash
# (1) issue 16's http suite on the tree (group pinning waited for, the first-tokens protocol, the step
#     wall / CPU figures of 29faccb): one in-process replay and the Serve app twice on the same trace;
# (2) with what time is left, s-lora-table S2 at n = 100 and 2000 (issue 16's n = 2000 >= 95% of n = 100).
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s TERM 300 python -m benchmarks.suite http --quick --ingress-replicas 1 1 --out $OUT/http --commit $C > $OUT/http.log 2>&1; echo http rc=$?
grep -E "in-process|HTTP" $OUT/http.log | tail -4
cat $OUT/http/http.md | grep "^|"
LEFT=$(( 575 - ($(date +%s) - T0) ))
echo "table with $LEFT s left"
[ $LEFT -gt 120 ] && timeout -s TERM $LEFT python -m benchmarks.suite s-lora-table --settings S2 --adapters 100 2000 --points 4 --duration 20 --no-peft --out $OUT/table --commit $C > $OUT/table.log 2>&1; echo table rc=$?
tail -12 $OUT/table.log
date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
