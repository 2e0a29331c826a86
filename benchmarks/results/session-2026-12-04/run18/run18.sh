#!/usr/bin/env bash
# Session 2026-12-04 GPU run 18: issue 11's flood on the GPU host with admission learning the serving path's
# line (Router.path_delay_s, uncommitted tree on top of 08dc61a): three floods of 295 streamed completions in 1 s.
cd "$(dirname "$0")/.."
T0=$(date +%s)
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
mkdir -p $OUT/flood
python -m ray.serve.scripts run benchmarks/results/session-2026-12-03/flood_cpu/base.yaml > $OUT/flood/serve.log 2>&1 &
SP=$!
for i in $(seq 1 80); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
echo "up after $i s"
for k in 1 2 3; do
  [ $(( $(date +%s) - T0 )) -gt 125 ] && break
  timeout 20 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/flood/flood_$k.json > $OUT/flood/load$k.log 2>&1
  python -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ('requests','rejected_429','ttft_p50_s','ttft_p90_s','ttft_p99_s','slo_attainment')})" $OUT/flood/flood_$k.json
  sleep 6
done
kill -INT $SP; sleep 2; kill -9 $SP 2>/dev/null
cp .device/run18.sh $OUT/
