cd /work/main
python -m ray.serve.scripts run benchmarks/results/session-2026-12-03/flood_cpu/base.yaml > /tmp/idle_serve.log 2>&1 &
SP=$!
for i in $(seq 1 90); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
echo "up after $i s"
python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/trace_idle.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out /tmp/idle.json > /tmp/idle_load.log 2>&1
python benchmarks/results/session-2026-12-03-night/flood_cpu/analyze.py
kill -INT $SP; sleep 5; kill -9 $SP 2>/dev/null; ray stop --force >/dev/null 2>&1
