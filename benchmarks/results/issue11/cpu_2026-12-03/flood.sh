#!/usr/bin/env bash
# usage: run.sh NAME CONFIG.yaml  -> /tmp/flood/NAME_{1,2}.json (two floods, 8 s apart)
set -u
cd "$(git rev-parse --show-toplevel)"; mkdir -p /tmp/flood
NAME=$1; CFG=$2
ray stop --force >/dev/null 2>&1
serve run "$CFG" > /tmp/flood/${NAME}_serve.log 2>&1 &
SP=$!
for i in $(seq 1 120); do curl -sf localhost:8000/health >/dev/null && break; sleep 2; done
[ -f /tmp/flood/trace.jsonl ] || python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/flood/trace.jsonl
for k in 1 2; do
  python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/flood/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out /tmp/flood/${NAME}_$k.json > /tmp/flood/${NAME}_load$k.log 2>&1
  sleep 8
done
kill -INT $SP; sleep 10; kill -9 $SP 2>/dev/null; ray stop --force >/dev/null 2>&1
python - "$NAME" <<'PY'
import json, sys
n = sys.argv[1]
for k in (1, 2):
    d = json.load(open(f"/tmp/flood/{n}_{k}.json"))
    keys = [k2 for k2 in d if any(s in k2 for s in ("ttft", "rejected", "429", "completed", "attain", "requests"))]
    print(n, k, {k2: (round(d[k2], 3) if isinstance(d[k2], float) else d[k2]) for k2 in keys})
PY
