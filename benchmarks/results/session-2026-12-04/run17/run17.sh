#!/usr/bin/env bash
# Session 2026-12-04 GPU run 17: (1) the admission suite at run 13's maximum sustainable S2 n = 1000 rate,
# cv 4 and 8 (run 15 did cv 1 and 2); (2) saturated Llama-2-7B q/k/v/o with 1 adapter (issue 12's 92% goal);
# (3) issue 11's flood on the GPU host, traced per request (flood_cpu instrumentation), as time allows.
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s TERM 250 python -m benchmarks.suite admission --rate 29.65 --cvs 4 8 --duration 20 --out $OUT/adm --commit $C > $OUT/adm.log 2>&1; echo adm rc=$?
grep -E "^\[admission" $OUT/adm.log | cut -c1-250; grep -A12 "^| cv" $OUT/adm/*.md | head -14; date
LEFT=$(( 440 - ($(date +%s) - T0) ))
timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 --out $OUT/sat --commit $C > $OUT/sat.log 2>&1; echo "sat rc=$?"
grep -E " n=" $OUT/sat.log | grep -o "n=[0-9]* .*req/s\|GPU {[^}]*}"; date
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
V=trace_only
git apply .device/$V.patch && mkdir -p $OUT/$V && rm -f /tmp/flood_trace.log /tmp/flood_client.log
python -m ray.serve.scripts run benchmarks/results/session-2026-12-03/flood_cpu/base.yaml > $OUT/$V/serve.log 2>&1 &
SP=$!
for i in $(seq 1 60); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
echo "$V up after $i s"
curl -s localhost:8000/v1/completions -H 'content-type: application/json' -d '{"model":"sloray-demo","prompt":[5,6,7],"max_tokens":4}' | head -c 200; echo
for k in 1 2 3; do
  [ $(( $(date +%s) - T0 )) -gt 560 ] && break
  python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/$V/flood_$k.json > $OUT/$V/load$k.log 2>&1
  sleep 3
done
kill -INT $SP; sleep 3; kill -9 $SP 2>/dev/null
cp /tmp/flood_trace.log /tmp/flood_client.log $OUT/$V/ 2>/dev/null
echo "== $V"; python benchmarks/results/session-2026-12-03-night/flood_cpu/analyze.py
for k in 1 2 3; do python -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ('requests','rejected_429','ttft_p50_s','ttft_p90_s','ttft_p99_s','slo_attainment')})" $OUT/$V/flood_$k.json; done
git apply -R .device/$V.patch; date
cp .device/run17.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
