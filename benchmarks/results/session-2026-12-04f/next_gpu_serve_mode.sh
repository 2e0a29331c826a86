#!/usr/bin/env bash
# Session 2026-12-04 (f): a GPU A/B of Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1:
# direct ingress without the Python proxy, gRPC between replicas), not run yet. Copy it to .device/ and run
# `bash .device/next_gpu_serve_mode.sh COMMIT` (41c2270 or later: flood's env.NAME=VALUE variant pairs and the http
# suite's --serve-env): (1) the shipped flood, default then throughput-optimized, four floods each; (2) the http
# suite at 8 req/s with the mode (compare with the default run of next_gpu.sh). Under the mode 20 Serve and fault
# tests fail on the CPU, 18 of them test-side (handles used outside an event loop): a measurement, not an adoption.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -m compileall -q /tmp/raysite /tmp/site > /dev/null 2>&1
timeout 300 python -m benchmarks.flood --config serve_config.yaml --slo-s 1.0 --floods 4 --commit "$1" --out $OUT/flood \
  --variant default --variant tput env.RAY_SERVE_THROUGHPUT_OPTIMIZED=1 > $OUT/flood.log 2>&1
echo "flood rc=$?"; tail -14 $OUT/flood/flood.md
ray stop --force > /dev/null 2>&1; sleep 2
timeout 200 python -m benchmarks.suite http --quick --ingress-replicas 1 --serve-env RAY_SERVE_THROUGHPUT_OPTIMIZED=1 \
  --commit "$1" --out $OUT/http8_tput > $OUT/http8_tput.log 2>&1
echo "http rc=$?"; grep -A6 "^| path" $OUT/http8_tput/http.md | head -8
ray stop --force > /dev/null 2>&1
date
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
