#!/usr/bin/env bash
# Run 31: run 28's flood (shipped serve_config.yaml, admission_ttft_slo_s 1.0) with admission_trace.patch applied
# on the device only: every admission decision (prediction, the group state it used) and every first token
# (the actual TTFT) logged by the ingress replicas; three floods. Everything comes back in all.tgz.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1 + admission_trace.patch"
git apply benchmarks/results/session-2026-12-04d/admission_trace.patch || exit 1
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
sed 's/admission_ttft_slo_s: null /admission_ttft_slo_s: 1.0  /' serve_config.yaml > /tmp/flood.yaml
python -m ray.serve.scripts run /tmp/flood.yaml > $OUT/serve.log 2>&1 &
for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
echo "up after $i s"; sleep 2
for k in 1 2 3; do
  timeout 30 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/flood_$k.json > $OUT/load$k.log 2>&1
  python -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: d[k] for k in ('ok','errors','rejected_429','ttft_p50_s','ttft_p90_s','tpot_mean_s','slo_attainment')})" $OUT/flood_$k.json F$k
  sleep 6
done
date
mkdir -p $OUT/logs && cp /tmp/ray/session_latest/logs/serve/*.log $OUT/logs/ 2>/dev/null
python -m ray.serve.scripts shutdown -y > /dev/null 2>&1
git checkout deployments/ingress.py
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
