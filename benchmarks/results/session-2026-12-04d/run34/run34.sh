#!/usr/bin/env bash
# Session 2026-12-04 (d), run 34: does the group's per-item stream traffic set the flood's TTFT? run 28's flood
# (shipped serve_config.yaml, admission_ttft_slo_s 1.0) with stream_interval_s 0.05 (shipped) and 0.2 (a
# quarter of the stream items), one server after the other in one command, five floods each.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
sed 's/admission_ttft_slo_s: null /admission_ttft_slo_s: 1.0  /' serve_config.yaml > /tmp/flood.yaml
for Z in 0.05 0.2; do
  sed "s/stream_interval_s: 0.05 /stream_interval_s: $Z /" /tmp/flood.yaml > /tmp/flood_$Z.yaml
  grep "stream_interval_s" /tmp/flood_$Z.yaml
  python -m ray.serve.scripts run /tmp/flood_$Z.yaml > $OUT/serve_z$Z.log 2>&1 &
  SP=$!
  for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
  echo "up after $i s"; sleep 2
  for k in 1 2 3 4 5; do
    timeout 30 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/z${Z}_flood_$k.json > $OUT/z${Z}_load$k.log 2>&1
    python -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: d[k] for k in ('ok','errors','rejected_429','ttft_p50_s','ttft_p90_s','slo_attainment')})" $OUT/z${Z}_flood_$k.json "I$Z F$k"
    sleep 6
  done
  kill -INT $SP; sleep 5; kill -9 $SP 2>/dev/null
  ray stop --force > /dev/null 2>&1; sleep 2
done
date
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
