cd /work/main
serve run deployments.builder:build_app admission_ttft_slo_s=1.0 device=cpu > /tmp/flood_serve.log 2>&1 &
SP=$!
for i in $(seq 1 120); do curl -sf localhost:8000/v1/models >/dev/null && break; sleep 2; done
python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/flood.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out /tmp/flood_res.json > /tmp/flood_load.log 2>&1
kill -INT $SP; sleep 10; kill -9 $SP 2>/dev/null; ray stop --force >/dev/null 2>&1
