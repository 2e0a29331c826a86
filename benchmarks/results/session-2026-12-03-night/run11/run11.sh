#!/usr/bin/env bash
# Session 2026-12-03 (night) GPU run 11: (1) the http suite (--quick) with the group's GIL switch interval
# default (5 ms) vs 1 ms, logging the group's delivery lag (step end -> event loop); (2) the admission suite's
# rate search (FCFS, cv 1, 30 s traces, 3 points) then cv 1 and 2 for FCFS / LCFS / early abort at that rate.
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s TERM 270 python -m benchmarks.suite http --quick --ingress-replicas 1 1 --switch-interval-s 0 0.001 --out $OUT/http --commit $C > $OUT/http.log 2>&1; echo http rc=$?
grep -E "EXPERIMENT|^\[http" $OUT/http.log | sed 's/.*EXPERIMENT/EXP/' | cut -c1-200
LEFT=$(( 560 - ($(date +%s) - T0) ))
echo "admission gets $LEFT s"; date
timeout -s TERM $LEFT python -m benchmarks.suite admission --cvs 1 2 --duration 30 --points 3 --out $OUT/adm --commit $C > $OUT/adm.log 2>&1; echo adm rc=$?
grep -E "^\[admission" $OUT/adm.log | cut -c1-250; date
cp .device/run11.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
