#!/usr/bin/env bash
# Session 2026-12-03 GPU run 5 (commit 234fe28): issue 11's flood on the GPU host, the ingress's
# max_ongoing_requests at its default (1024) vs 32 (the demo on the GPU, admission_ttft_slo_s 1.0).
cd "$(dirname "$0")/.."
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
for NAME in base mor32; do
  date
  python -c "from ray.serve.scripts import cli; cli()" run .device/flood/$NAME.yaml > $OUT/${NAME}_serve.log 2>&1 &
  SP=$!
  for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 2; done
  echo "$NAME up after $((i*2)) s"
  for k in 1 2; do
    python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/${NAME}_$k.json > $OUT/${NAME}_load$k.log 2>&1
    sleep 8
  done
  kill -INT $SP; sleep 8; kill -9 $SP 2>/dev/null
  python -c "from ray.scripts.scripts import main; main()" stop --force > /dev/null 2>&1; sleep 2
done
python - <<'PY'
import json, os
for n in ("base", "mor32"):
    for k in (1, 2):
        f = os.path.join(os.environ["OUT"], f"{n}_{k}.json")
        if not os.path.exists(f):
            print(n, k, "missing"); continue
        d = json.load(open(f))
        keys = [k2 for k2 in d if any(s in k2 for s in ("ttft", "rejected", "429", "completed", "attain", "requests"))]
        print(n, k, {k2: (round(d[k2], 3) if isinstance(d[k2], float) else d[k2]) for k2 in keys})
PY
cp .device/run5.sh .device/flood/*.yaml $OUT/
