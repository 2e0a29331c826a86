#!/usr/bin/env bash
# GPU run 1: structured-output benchmark (after the consume move) + the issue-11 flood on the GPU demo.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
git log --oneline -1 2>/dev/null || true
echo "== flood"; date
python benchmarks/trace.py --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --adapters 1 --out /tmp/flood300.jsonl
python benchmarks/trace.py --rate 1500 --duration 1 --input-range 8 64 --output-range 16 64 --adapters 1 --out /tmp/flood1500.jsonl
python -c "from ray.serve.scripts import cli; cli()" run deployments.builder:build_app ttft_slo_s=1.0 > $OUT/flood_serve.log 2>&1 &
SP=$!
for i in $(seq 1 100); do curl -sf localhost:8000/v1/models >/dev/null && break; kill -0 $SP 2>/dev/null || { echo serve died; tail -20 $OUT/flood_serve.log; break; }; sleep 2; done
date; curl -s localhost:8000/v1/models | head -c 300; echo
for n in 300 1500; do
  timeout 120 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/flood$n.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/flood_gpu_$n.json > $OUT/flood_load_$n.log 2>&1; echo rc=$?
  python -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: (round(v,3) if isinstance(v,float) else v) for k,v in d.items() if k in (\"requests\",\"ok\",\"rejected_429\",\"errors\",\"ttft_p50_s\",\"ttft_p90_s\",\"ttft_p99_s\",\"slo_attainment\")})" $OUT/flood_gpu_$n.json; tail -3 $OUT/flood_load_$n.log
done
curl -s localhost:8000/metrics | grep -E "^sloray_(requests_rejected|time_to_first)" | head -20 > $OUT/flood_metrics.txt
kill -INT $SP; sleep 5; ray stop --force >/dev/null 2>&1
date
