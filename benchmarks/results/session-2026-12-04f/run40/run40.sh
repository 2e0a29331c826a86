#!/usr/bin/env bash
# Session 2026-12-04 (f), run 40: after 71ac5f0 (warm-up runs mixed steps; the plan tiles kernel in two block
# sizes): (1) the GPU tests that warm-up builds every kernel variant serving needs (empty Triton cache) and
# captures every graph and changes no token; (2) two cold starts of the shipped flood, each the first server on
# an empty Triton cache, listing the Triton cache entries written after the server first answered.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
up() { python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000$1', timeout=2)" 2>/dev/null; }
export TRITON_CACHE_DIR=/tmp/tc_test
timeout 200 python -m pytest -q -p no:cacheprovider -m gpu tests/test_engine_gpu.py -k "no_kernel_compiles or warmup_captures" > $OUT/test.log 2>&1
echo "test rc=$?"; grep -E "passed|failed|built after|differ|no variant" $OUT/test.log | cut -c1-1500 | head -20
python -m compileall -q /tmp/raysite /tmp/site > /dev/null 2>&1
for k in 1 2; do
  export TRITON_CACHE_DIR=/tmp/tc_flood$k; rm -f /tmp/ready
  ( until up /health; do sleep 0.2; done; touch /tmp/ready; echo "ready $(date +%T.%N)" ) > $OUT/ready$k.log 2>&1 &
  timeout 200 python -m benchmarks.flood --config serve_config.yaml --slo-s 1.0 --floods 4 --commit "$1" --out $OUT/flood$k > $OUT/flood$k.log 2>&1
  echo "flood $k rc=$?"; tail -6 $OUT/flood$k/flood.md; cat $OUT/ready$k.log
  echo "triton cache entries: $(ls /tmp/tc_flood$k | wc -l); written after ready:"
  find /tmp/tc_flood$k -newer /tmp/ready -name "*.json" ! -name "__grp__*" -printf "%TT %f\n" | sort | tee $OUT/flood${k}_late_kernels.txt | head
  for f in $(find /tmp/tc_flood$k -newer /tmp/ready -name "*.json" ! -name "__grp__*"); do cp $f $OUT/late_${k}_$(basename $(dirname $f))_$(basename $f); done
  ray stop --force > /dev/null 2>&1; sleep 2
done
date
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
