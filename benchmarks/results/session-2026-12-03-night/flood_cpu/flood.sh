#!/usr/bin/env bash
# usage: OUT=DIR bash benchmarks/results/session-2026-12-03-eve/flood_cpu/flood.sh   (from the repo root; the demo, admission_ttft_slo_s 1.0)
HERE=benchmarks/results/session-2026-12-03/flood_cpu
mkdir -p "$OUT"
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
serve run "$HERE/base.yaml" > "$OUT/serve.log" 2>&1 &
SP=$!
for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 2; done
echo "up after $((i*2)) s"
for k in 1 2 3; do
  python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out "$OUT/flood_$k.json" > "$OUT/load$k.log" 2>&1
  sleep 8
done
kill -INT $SP; sleep 8; kill -9 $SP 2>/dev/null
ray stop --force > /dev/null 2>&1; sleep 2
python - <<'PY'
import json, os
for k in (1, 2, 3):
    f = os.path.join(os.environ["OUT"], f"flood_{k}.json")
    if not os.path.exists(f):
        print(k, "missing"); continue
    d = json.load(open(f))
    keys = [k2 for k2 in d if any(s in k2 for s in ("ttft", "rejected", "429", "completed", "attain", "requests"))]
    print(k, {k2: (round(d[k2], 3) if isinstance(d[k2], float) else d[k2]) for k2 in keys})
PY
