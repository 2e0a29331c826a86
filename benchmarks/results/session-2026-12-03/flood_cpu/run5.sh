#!/usr/bin/env bash
# Issue 11's flood: `serve run` of base.yaml (the ingress's max_ongoing_requests at its default, 1024) and of
# mor32.yaml (32), each flooded twice, 8 s apart, with 295 streamed requests arriving within 1 s.
# usage: OUT=DIR bash benchmarks/results/session-2026-12-03/flood_cpu/run5.sh  -> DIR/{base,mor32}_{1,2}.json
# (run as .device/run5.sh on the GPU host and here, with the configs then under .device/flood/)
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$(git -C "$HERE" rev-parse --show-toplevel)"
mkdir -p "$OUT"
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
for NAME in base mor32; do
  date
  serve run "$HERE/$NAME.yaml" > "$OUT/${NAME}_serve.log" 2>&1 &
  SP=$!
  for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 2; done
  echo "$NAME up after $((i*2)) s"
  for k in 1 2; do
    python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out "$OUT/${NAME}_$k.json" > "$OUT/${NAME}_load$k.log" 2>&1
    sleep 8
  done
  kill -INT $SP; sleep 8; kill -9 $SP 2>/dev/null
  ray stop --force > /dev/null 2>&1; sleep 2
done
python - <<'PY'
import json, os
for n in ("base", "mor32"):
    for k in (1, 2):
        f = os.path.join(os.environ["OUT"], f"{n}_{k}.json")
        if not os.path.exists(f):
            print(n, k, "missing")
            continue
        d = json.load(open(f))
        keys = [k2 for k2 in d if any(s in k2 for s in ("ttft", "rejected", "429", "completed", "attain", "requests"))]
        print(n, k, {k2: (round(d[k2], 3) if isinstance(d[k2], float) else d[k2]) for k2 in keys})
PY
