#!/usr/bin/env bash
# Session 2026-12-04 (f), the next GPU run (not run: no device was lent after run 40). Copy it to .device/ and run
# `bash .device/next_gpu.sh COMMIT` (79295ed or later: warm-up of mixed steps and of the startup adapters' graph
# sets, the benchmark client's frozen heap, the http suite's queue column): (1) the GPU tests of warm-up (every
# kernel variant on the demo and a qwen2-shaped model; every graph, tokens unchanged); (2) the shipped flood, two
# servers of four floods (the first on an empty Triton cache, the second on the cache the first filled); (3) http
# --quick at 8 req/s. Fits one 600 s device command.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
up() { python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000$1', timeout=2)" 2>/dev/null; }
export TRITON_CACHE_DIR=/tmp/tc_test
timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/test_engine_gpu.py -k "no_kernel_compiles or warmup_captures" > $OUT/test.log 2>&1
echo "test rc=$?"; grep -E "passed|failed|built after|differ|no variant" $OUT/test.log | cut -c1-1500 | head -20
python -m compileall -q /tmp/raysite /tmp/site > /dev/null 2>&1
export TRITON_CACHE_DIR=/tmp/tc_flood
for k in 1 2; do
  rm -f /tmp/ready
  ( until up /health; do sleep 0.2; done; touch /tmp/ready; echo "ready $(date +%T.%N)" ) > $OUT/ready$k.log 2>&1 &
  timeout 130 python -m benchmarks.flood --config serve_config.yaml --slo-s 1.0 --floods 4 --commit "$1" --out $OUT/flood$k > $OUT/flood$k.log 2>&1
  echo "flood $k rc=$?"; tail -8 $OUT/flood$k/flood.md | head -7; tail -1 $OUT/flood$k/flood.md; cat $OUT/ready$k.log
  find /tmp/tc_flood -newer /tmp/ready -name "*.json" ! -name "__grp__*" -printf "%TT %f\n" | sort | tee $OUT/flood${k}_late_kernels.txt | head -5
  ray stop --force > /dev/null 2>&1; sleep 2
done
timeout 130 python -m benchmarks.suite http --quick --ingress-replicas 1 --commit "$1" --out $OUT/http8 > $OUT/http8.log 2>&1
echo "http rc=$?"; grep -A6 "^| path" $OUT/http8/http.md | head -8
ray stop --force > /dev/null 2>&1
date
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
