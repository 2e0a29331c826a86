#!/usr/bin/env bash
# Prepared for the next GPU session (one ~9-minute device command: copy to .device/, run from the repository
# root with the bundle prefix of the device README, `bash .device/next_gpu.sh COMMIT`):
# (1) issue 11's flood, a same-run A/B of admission without / with the serving path's line
#     (A = admission_before.patch applied, 08dc61a's routing and ingress; B = the tree), interleaved A B A B,
#     each a fresh `serve run` of the demo (admission_ttft_slo_s 1.0) and three floods of 295 streamed
#     completions in 1 s, 6 s apart;
# (2) saturated Llama-3-8B all-linear at n = 0 and 1000, as time allows.
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
D=benchmarks/results/session-2026-12-04
nvidia-smi --query-gpu=name --format=csv,noheader; date
python benchmarks/trace.py --adapters 1 --rate 300 --duration 1 --input-range 8 64 --output-range 16 64 --out /tmp/trace.jsonl > /dev/null
for V in A1 B1 A2 B2; do
  [ $(( $(date +%s) - T0 )) -gt 380 ] && { echo "no time for $V"; continue; }
  case $V in A*) { git apply $D/admission_before.patch || patch -p1 < $D/admission_before.patch; } || { echo "A patch does not apply"; continue; };; esac
  mkdir -p $OUT/$V
  python -m ray.serve.scripts run benchmarks/results/session-2026-12-03/flood_cpu/base.yaml > $OUT/$V/serve.log 2>&1 &
  SP=$!
  for i in $(seq 1 80); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
  echo "$V up after $i s"
  for k in 1 2 3; do
    timeout 30 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out $OUT/$V/flood_$k.json > $OUT/$V/load$k.log 2>&1
    python -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: d[k] for k in ('rejected_429','ttft_p50_s','ttft_p90_s','ttft_p99_s')})" $OUT/$V/flood_$k.json $V$k
    sleep 6
  done
  kill -INT $SP; sleep 3; kill -9 $SP 2>/dev/null; ray stop --force > /dev/null 2>&1
  case $V in A*) { git apply -R $D/admission_before.patch || patch -R -p1 < $D/admission_before.patch; };; esac
done
LEFT=$(( 570 - ($(date +%s) - T0) ))
[ $LEFT -gt 100 ] && timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama3-8b-all --adapters 0 1000 --out $OUT/sat8b --commit $C > $OUT/sat8b.log 2>&1
grep -E " n=" $OUT/sat8b.log | grep -o "n=[0-9]* .*req/s\|GPU {[^}]*}"
date
cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
