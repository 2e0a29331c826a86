#!/usr/bin/env bash
# GPU run B: the s-lora-table suite (quick), the async GPU tests, the flood again (calibration fix).
cd "$(dirname "$0")/.."
C="$1"
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s TERM 400 python -m benchmarks.suite s-lora-table --quick --out $OUT/s-lora-table --commit "$C" > $OUT/suite.log 2>&1; echo rc=$?
tail -25 $OUT/suite.log | cut -c1-250; date
timeout 70 python -m pytest -q -m gpu tests/test_async.py > $OUT/gpu_tests.log 2>&1; echo rc=$?; tail -2 $OUT/gpu_tests.log; date
python benchmarks/trace.py --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --adapters 1 --out /tmp/flood300.jsonl
python -c "from ray.serve.scripts import cli; cli()" run deployments.builder:build_app ttft_slo_s=1.0 num_ingress_replicas=2 > $OUT/flood_serve.log 2>&1 &
SP=$!
for i in $(seq 1 60); do curl -sf localhost:8000/v1/models >/dev/null && break; kill -0 $SP 2>/dev/null || { echo serve died; tail -20 $OUT/flood_serve.log; break; }; sleep 2; done
for k in 1 2; do
  timeout 45 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/flood300.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/flood_gpu_300_$k.json > $OUT/flood_load_$k.log 2>&1; echo rc=$?
  python -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: (round(v,3) if isinstance(v,float) else v) for k,v in d.items() if k in ('requests','ok','rejected_429','errors','ttft_p50_s','ttft_p90_s','ttft_p99_s','slo_attainment')})" $OUT/flood_gpu_300_$k.json
  sleep 8
done
kill -INT $SP; sleep 4; ray stop --force >/dev/null 2>&1; date
