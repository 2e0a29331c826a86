#!/usr/bin/env bash
# For the next GPU session (copy to .device/, run from the repository root with the device README's bundle
# prefix: `bash .device/next_gpu.sh COMMIT`; ~9 minutes). Issue 11's flood on the tree with 1, 2 and 3 ingress
# replicas, interleaved R1 R2 R3 R1 R2 R3, each a fresh serve run of the demo (admission_ttft_slo_s 1.0) and
# three floods of 295 streamed completions in 1 s; then, with what time is left, the same flood with one
# replica and ack_protocol_before.patch (the group's {"accepted": True} item, before 024042d) as K.
# Second command (~8 minutes): `python -m benchmarks.suite http --quick --ingress-replicas 1 1` on the tree
# and again with ack_protocol_before.patch applied (git apply), for the HTTP TTFT before / after 024042d.
cd "$(dirname "$0")/.."
T0=$(date +%s)
H=benchmarks/results/session-2026-12-04b; H2=benchmarks/results/session-2026-12-04c
nvidia-smi --query-gpu=name --format=csv,noheader; date
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
for V in R1 R2 R3 K1 R1b R2b R3b; do
  [ $(( $(date +%s) - T0 )) -gt 480 ] && { echo "no time for $V"; continue; }
  N=${V:1:1}; P=
  case $V in K*) N=1; P=$H2/ack_protocol_before_54acd94.patch;; esac
  if [ -n "$P" ]; then { git apply $P || patch -p1 < $P; } || { echo "$V patch does not apply"; continue; }; fi
  mkdir -p $OUT/$V
  sed "s/num_ingress_replicas: 2/num_ingress_replicas: $N/" $H/run22/flood2.yaml > /tmp/flood_$V.yaml
  grep args /tmp/flood_$V.yaml
  python -m ray.serve.scripts run /tmp/flood_$V.yaml > $OUT/$V/serve.log 2>&1 &
  SP=$!
  for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
  echo "$V up after $i s"; sleep 2
  for k in 1 2 3; do
    timeout 30 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/$V/flood_$k.json > $OUT/$V/load$k.log 2>&1
    python -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: d[k] for k in ('ok','errors','rejected_429','ttft_p50_s','ttft_p90_s','slo_attainment')})" $OUT/$V/flood_$k.json $V$k
    sleep 6
  done
  kill -INT $SP; sleep 3; kill -9 $SP 2>/dev/null; ray stop --force > /dev/null 2>&1
  for j in $(seq 1 30); do curl -s -o /dev/null localhost:8000/health || break; sleep 1; done
  if [ -n "$P" ]; then { git apply -R $P || patch -R -p1 < $P; }; fi
done
date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
