#!/usr/bin/env bash
# Session 2026-12-05e, run 2 (issue 16), on the machine run 1 left warm: the HTTP suite (S2 shape, 100 adapters,
# 8 req/s, in-process vs `serve run` over HTTP, one ingress replica) in Ray Serve's default mode, then with
# RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (session b's next_gpu_http_tput.sh, once each); then, while time is left,
# saturated S2 with a 1024-token system prompt per adapter, prefix caching off / on (session c's next_gpu_prefix.sh,
# n = 1000 only). `bash .../run2.sh COMMIT` from the repository root with the device README's bundle prefix.
cd "$(dirname "$0")/../../.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -m compileall -q /tmp/raysite /tmp/site > /dev/null 2>&1
T0=$(date +%s)
for V in default tput; do
  LEFT=$(( 570 - ($(date +%s) - T0) )); [ $LEFT -lt 130 ] && { echo "no time for $V"; break; }
  ENV=(); [ $V = tput ] && ENV=(--serve-env RAY_SERVE_THROUGHPUT_OPTIMIZED=1)
  timeout $(( LEFT < 200 ? LEFT : 200 )) python -m benchmarks.suite http --quick --ingress-replicas 1 "${ENV[@]}" \
    --commit "$1 ($V)" --out /tmp/http8_$V > $OUT/http8_$V.log 2>&1
  echo "http $V rc=$?"; cp /tmp/http8_$V/http.md $OUT/http8_$V.md 2>/dev/null; grep -A6 "^| path" /tmp/http8_$V/http.md | head -8
  ray stop --force > /dev/null 2>&1; sleep 2; date
done
LEFT=$(( 575 - ($(date +%s) - T0) ))
if [ $LEFT -gt 150 ]; then
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 1000 --system-prompt 1024 \
    --prefix-caching off on --out /tmp/sat_prefix --commit "$1" > $OUT/sat_prefix.log 2>&1
  echo "sat rc=$?"; cp /tmp/sat_prefix/saturated.json $OUT/sat_prefix.json 2>/dev/null
  grep -ho "n=[0-9]* async=[A-Za-z]* prefix_caching=[A-Za-z]* (hits [0-9]* tokens): [0-9.]* req/s" $OUT/sat_prefix.log
fi
date
