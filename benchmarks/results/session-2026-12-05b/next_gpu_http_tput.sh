#!/usr/bin/env bash
# Session 2026-12-05b, next GPU run (not run: no device lent after run 46): issue 16's HTTP suite (S2 shape, 100 adapters, 8 req/s, in-process vs `serve run`
# over HTTP, one ingress replica) with Ray Serve's default mode, then with RAY_SERVE_THROUGHPUT_OPTIMIZED=1
# (direct ingress, no Python proxy; gRPC between replicas), twice each, interleaved, one command.
cd "$(dirname "$0")/../../.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -m compileall -q /tmp/raysite /tmp/site > /dev/null 2>&1
T0=$(date +%s)
for V in default tput default2 tput2; do
  LEFT=$(( 570 - ($(date +%s) - T0) )); [ $LEFT -lt 130 ] && { echo "no time for $V"; break; }
  ENV=(); [ ${V#tput} != $V ] && ENV=(--serve-env RAY_SERVE_THROUGHPUT_OPTIMIZED=1)
  timeout $(( LEFT < 200 ? LEFT : 200 )) python -m benchmarks.suite http --quick --ingress-replicas 1 "${ENV[@]}" --commit "$1 ($V)" \
    --out $OUT/http8_$V > $OUT/http8_$V.log 2>&1
  echo "http $V rc=$?"; grep -A6 "^| path" $OUT/http8_$V/http.md | head -8
  ray stop --force > /dev/null 2>&1; sleep 2; date
done

