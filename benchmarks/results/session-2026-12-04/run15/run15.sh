#!/usr/bin/env bash
# Session 2026-12-04 GPU run 15: (1) issue 11's flood on the GPU host (16 cores), traced per request
# (flood_cpu instrumentation), f3c0a6d+'s ingress vs small bodies tokenized inline (three floods each);
# (2) the admission suite at run 13's maximum sustainable S2 n = 1000 rate, cv 1 2 4 8.
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
for V in trace_only trace_inline; do
  git apply .device/$V.patch || { echo "$V does not apply"; continue; }
  rm -f /tmp/flood_trace.log /tmp/flood_client.log
  mkdir -p $OUT/$V
  serve run benchmarks/results/session-2026-12-03/flood_cpu/base.yaml > $OUT/$V/serve.log 2>&1 &
  SP=$!
  for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 2; done
  echo "$V up after $((i*2)) s"
  curl -s localhost:8000/v1/completions -H 'content-type: application/json' -d '{"model":"sloray-demo","prompt":[5,6,7],"max_tokens":4}' | head -c 200; echo
  for k in 1 2 3; do
    python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/$V/flood_$k.json > $OUT/$V/load$k.log 2>&1
    sleep 5
  done
  kill -INT $SP; sleep 6; kill -9 $SP 2>/dev/null; ray stop --force > /dev/null 2>&1; sleep 2
  cp /tmp/flood_trace.log /tmp/flood_client.log $OUT/$V/ 2>/dev/null
  echo "== $V"; python benchmarks/results/session-2026-12-03-night/flood_cpu/analyze.py
  python - $OUT/$V <<'PY'
import json, os, sys
for k in (1, 2, 3):
    f = os.path.join(sys.argv[1], f"flood_{k}.json")
    if not os.path.exists(f):
        print(k, "missing"); continue
    d = json.load(open(f))
    keys = [k2 for k2 in d if any(s in k2 for s in ("ttft", "rejected", "429", "completed", "attain", "requests"))]
    print(k, {k2: (round(d[k2], 3) if isinstance(d[k2], float) else d[k2]) for k2 in keys})
PY
  git apply -R .device/$V.patch
done
LEFT=$(( 575 - ($(date +%s) - T0) ))
echo "admission gets $LEFT s"; date
timeout -s TERM $LEFT python -m benchmarks.suite admission --rate 29.65 --cvs 1 2 4 8 --duration 20 --out $OUT/adm --commit $C > $OUT/adm.log 2>&1; echo adm rc=$?
grep -E "^\[admission" $OUT/adm.log | cut -c1-250; grep -A20 "^| cv" $OUT/adm/*.md | head -24; date
cp .device/run15.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
