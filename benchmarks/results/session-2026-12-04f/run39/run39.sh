#!/usr/bin/env bash
# Session 2026-12-04 (f), run 39: (1) the GPU test that warm-up builds every Triton kernel variant serving needs,
# on an empty Triton cache; (2) the flood as the first server on an empty Triton cache after compileall of the
# carried packages, listing the Triton cache entries written after the server first answered; (3) http --quick
# at 8 req/s with py-spy (non-blocking, 100 Hz, 10 s inside the HTTP replay) on the group and ingress replicas.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
up() { python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000$1', timeout=2)" 2>/dev/null; }
export TRITON_CACHE_DIR=/tmp/tc_test
timeout 170 python -m pytest -q -p no:cacheprovider -m gpu tests/test_engine_gpu.py -k no_kernel_compiles > $OUT/test.log 2>&1
echo "test rc=$?"; tail -25 $OUT/test.log
t0=$(date +%s); python -m compileall -q /tmp/raysite /tmp/site > /dev/null 2>&1; echo "compileall $(( $(date +%s) - t0 )) s"
export TRITON_CACHE_DIR=/tmp/tc_flood
( until up /health; do sleep 0.2; done; touch /tmp/ready; echo "ready $(date +%T.%N)" ) > $OUT/ready.log 2>&1 &
timeout 220 python -m benchmarks.flood --config serve_config.yaml --slo-s 1.0 --floods 4 --commit "$1" --out $OUT/flood > $OUT/flood.log 2>&1
echo "flood rc=$?"; tail -8 $OUT/flood/flood.md; cat $OUT/ready.log
echo "triton cache entries: $(ls /tmp/tc_flood | wc -l); written after ready:"
find /tmp/tc_flood -newer /tmp/ready -name "*.json" ! -name "__grp__*" -printf "%TT %f\n" | sort | tee $OUT/flood_late_kernels.txt | head -30
ray stop --force > /dev/null 2>&1; sleep 1
prof() {  # py-spy on the suite's replicas, 10 s, from 7 s after the server answers (the replay starts after pinning)
  until up /v1/models; do sleep 0.5; done; sleep 7
  g=$(ps -eo pid,args | awk '/ServeReplica/ && /SLoRAGroup/ && !/awk/ {print $1}' | head -1)
  i=$(ps -eo pid,args | awk '/ServeReplica/ && !/SLoRAGroup/ && !/awk/ {print $1}' | head -1)
  echo "group $g ingress $i"
  /tmp/site/bin/py-spy record -p $g -d 10 -r 100 --nonblocking -f raw --threads -o $OUT/http_group.txt > $OUT/pyspy_group.log 2>&1 &
  /tmp/site/bin/py-spy record -p $i -d 10 -r 100 --nonblocking -f raw --threads -o $OUT/http_ingress.txt > $OUT/pyspy_ingress.log 2>&1
  wait
}
prof > $OUT/prof.log 2>&1 &
timeout 200 python -m benchmarks.suite http --quick --ingress-replicas 1 --commit "$1" --out $OUT/http8 > $OUT/http8.log 2>&1
echo "http rc=$?"; grep -A6 "^| path" $OUT/http8/http.md | head -8; cat $OUT/prof.log; tail -2 $OUT/pyspy_*.log
ray stop --force > /dev/null 2>&1
date
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
