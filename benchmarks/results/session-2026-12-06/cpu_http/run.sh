cd /tmp/hopwt
for i in 1 2; do
for V in default haproxy; do
  rm -rf /tmp/hops
  if [ $V = haproxy ]; then ENV=(--serve-env RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1); else ENV=(); fi
  flock /tmp/sloray-ray.lock python -m benchmarks.suite http --smoke --out /tmp/cpu_ab/${V}_$i --http-port 8135 --duration 30 "${ENV[@]}" > /tmp/cpu_ab/${V}_$i.log 2>&1
  python /work/main/benchmarks/results/session-2026-12-06/hops_analyze.py /tmp/hops > /tmp/cpu_ab/hops_${V}_$i.txt
done; done
echo finished > /tmp/cpu_ab/done
