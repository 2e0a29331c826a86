#!/usr/bin/env bash
# GPU run 2: pinned-memory probe; serve startup with 1,000 adapter directories after the faster read/pack
# (3c4085a); the http suite with three serving variants; the issue-11 flood with the candidate defaults.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 40 python .device/pinprobe.py 2>&1 | tee $OUT/pinprobe.log
timeout 130 python benchmarks/startup.py --serve --out $OUT/startup --adapters 1000 --rank 16 --distinct 8 --timeout-s 120 > $OUT/startup.log 2>&1; echo startup rc=$?
grep -E "first_answer|_s\"" $OUT/startup.log | tail -12; date
timeout -s TERM 340 python -m benchmarks.suite http --quick --commit a8c3583 --ingress-replicas 1 1 2 --stream-interval-s 0 0.05 0.05 --out $OUT/http > $OUT/suite.log 2>&1; echo suite rc=$?
grep -E "^\[http|HTTP|in-process" $OUT/suite.log | cut -c1-220 | tail -12; date
python benchmarks/trace.py --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --adapters 1 --out /tmp/flood300.jsonl > /dev/null
python -c "from ray.serve.scripts import cli; cli()" run deployments.builder:build_app admission_ttft_slo_s=1.0 stream_interval_s=0.05 num_ingress_replicas=2 > $OUT/flood_serve.log 2>&1 &
SP=$!
for i in $(seq 1 60); do curl -sf localhost:8000/v1/models >/dev/null && break; sleep 2; done
for k in 1 2; do
  timeout 40 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/flood300.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/flood_$k.json > $OUT/flood_load_$k.log 2>&1; echo flood rc=$?
  python -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: (round(v,3) if isinstance(v,float) else v) for k,v in d.items() if k in ('requests','ok','rejected_429','errors','ttft_p50_s','ttft_p90_s','ttft_p99_s','slo_attainment')})" $OUT/flood_$k.json
  sleep 3
done
kill -INT $SP; sleep 3; ray stop --force >/dev/null 2>&1; date
