#!/usr/bin/env bash
# Session 2026-12-04 (d), run 32: run 28 again on 8c3b0b9 (the path term at its 90th percentile).
# Issue 11's flood against the default serve_config.yaml (two ingress replicas, max_num_seqs 64) with only
# admission_ttft_slo_s set to 1.0: six floods of 295 streamed completions within 1 s, 6 s apart.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
sed 's/admission_ttft_slo_s: null /admission_ttft_slo_s: 1.0  /' serve_config.yaml > /tmp/flood.yaml
grep -E "admission_ttft_slo_s|num_ingress_replicas|max_num_seqs" /tmp/flood.yaml
python -m ray.serve.scripts run /tmp/flood.yaml > $OUT/serve.log 2>&1 &
for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
echo "up after $i s"; sleep 2
for k in 1 2 3 4 5 6; do
  timeout 30 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/flood_$k.json > $OUT/load$k.log 2>&1
  python -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: d[k] for k in ('ok','errors','rejected_429','ttft_p50_s','ttft_p90_s','slo_attainment')})" $OUT/flood_$k.json F$k
  sleep 6
done
date
curl -s localhost:8000/metrics | grep -E "^sloray_(admission|requests_rejected|ttft)" | head -40 > $OUT/metrics.txt
python -m ray.serve.scripts shutdown -y > /dev/null 2>&1
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
