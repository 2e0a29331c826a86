# CPU A/B of the group->ingress streams: serve run serve_config.yaml (the demo, this 2-core machine), two floods of
# 90 streamed completions in 1 s per server; $1 = tree, $2 = label
cd $1
export PYTHONPATH=$1
serve run serve_config.yaml > /tmp/prof/serve_$2.log 2>&1 &
SP=$!
for i in $(seq 1 120); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
sleep 3
python - <<'PY'
import ray
from ray import serve
ray.init(address="auto", logging_level="ERROR")
s = serve.get_deployment_handle("SLoRAGroup-0", app_name="sloray").stats.remote().result()
print("multiplexed" if "subscriptions" in s else "per-request", end=" ")
PY
for k in 1 2; do timeout 60 python /work/main/benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/prof/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out /tmp/prof/ab_$2_$k.json > /dev/null 2>&1; sleep 1; done
serve shutdown -y > /dev/null 2>&1; kill $SP 2>/dev/null; ray stop --force > /dev/null 2>&1
for k in 1 2; do python -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k:round(d[k],3) if isinstance(d[k],float) else d[k] for k in ('ok','ttft_p50_s','ttft_p90_s','tpot_mean_s','e2e_mean_s')})" /tmp/prof/ab_$2_$k.json $2; done
