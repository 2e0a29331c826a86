cd /work/main
serve run serve_config.yaml > /tmp/prof/serve.log 2>&1 &
SP=$!
for i in $(seq 1 120); do curl -sf localhost:8000/health >/dev/null && break; sleep 1; done
echo "up $i"; sleep 3
GP=$(ps -eo pid,args | awk '/ray::ServeReplica/ && /SLoRAGroup/ {print $1}' | head -1)
echo "group pid $GP"
py-spy record -p $GP -d 14 -r 200 -f raw --threads -o /tmp/prof/group.raw > /tmp/prof/pyspy.log 2>&1 &
sleep 1
for k in 1 2; do timeout 60 python benchmarks/load.py --url http://127.0.0.1:8000 --trace /tmp/prof/trace.jsonl --model sloray-demo --slo-s 1.0 --vocab 478 --out /tmp/prof/flood_$k.json > /dev/null 2>&1; sleep 1; done
sleep 8
serve shutdown -y > /dev/null 2>&1; kill $SP; ray stop --force > /dev/null 2>&1; echo done
