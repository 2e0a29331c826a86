#!/usr/bin/env bash
# Issue 11's flood with two ingress replicas (the tree: admission with the serving path's line, small bodies
# tokenized inline): one serve run, three floods of 295 streamed completions in 1 s, 6 s apart.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
V=R2; mkdir -p $OUT/$V
python -m ray.serve.scripts run benchmarks/results/session-2026-12-04b/run22/flood2.yaml > $OUT/$V/serve.log 2>&1 &
SP=$!
for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
echo "$V up after $i s"; sleep 3
for k in 1 2 3; do
  timeout 30 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/$V/flood_$k.json > $OUT/$V/load$k.log 2>&1
  python -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: d[k] for k in ('ok','errors','rejected_429','ttft_p50_s','ttft_p90_s','ttft_p99_s','slo_attainment')})" $OUT/$V/flood_$k.json $V$k
  sleep 6
done
kill -INT $SP; sleep 2; kill -9 $SP 2>/dev/null
date
