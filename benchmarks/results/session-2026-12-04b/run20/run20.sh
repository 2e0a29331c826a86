#!/usr/bin/env bash
# Issue 11's flood, same-run A/B/I: A = admission_before.patch (08dc61a's admission, no serving-path line),
# B = the tree, I = the tree + inline_small_tokenize.patch; interleaved A B I A B I, each a fresh serve run of
# the demo (admission_ttft_slo_s 1.0) and three floods of 295 streamed completions in 1 s, 6 s apart. Between
# two variants it waits until nothing answers on port 8000 (run 19's B variants met the previous variant's
# dying proxy there).
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
PA=benchmarks/results/session-2026-12-04/admission_before.patch
PI=benchmarks/results/session-2026-12-04b/inline_small_tokenize.patch
nvidia-smi --query-gpu=name --format=csv,noheader; date
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
for V in A1 B1 I1 A2 B2 I2; do
  [ $(( $(date +%s) - T0 )) -gt 470 ] && { echo "no time for $V"; continue; }
  case $V in A*) P=$PA;; I*) P=$PI;; *) P=;; esac
  if [ -n "$P" ]; then { git apply $P || patch -p1 < $P; } || { echo "$V patch does not apply"; continue; }; fi
  mkdir -p $OUT/$V
  python -m ray.serve.scripts run benchmarks/results/session-2026-12-03/flood_cpu/base.yaml > $OUT/$V/serve.log 2>&1 &
  SP=$!
  for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
  echo "$V up after $i s ($(grep -c 'Deployed app\|RUNNING' $OUT/$V/serve.log) ready lines)"
  for k in 1 2 3; do
    timeout 30 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/$V/flood_$k.json > $OUT/$V/load$k.log 2>&1
    python -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: d[k] for k in ('ok','errors','rejected_429','ttft_p50_s','ttft_p90_s','ttft_p99_s')})" $OUT/$V/flood_$k.json $V$k
    sleep 6
  done
  kill -INT $SP; sleep 3; kill -9 $SP 2>/dev/null; ray stop --force > /dev/null 2>&1
  for j in $(seq 1 30); do curl -s -o /dev/null localhost:8000/health || break; sleep 1; done
  echo "port free after $j s"
  if [ -n "$P" ]; then { git apply -R $P || patch -R -p1 < $P; }; fi
done
date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
