#!/usr/bin/env bash
# Session 2026-12-04 (e), run 38: (1) the flood on ce0773e as shipped (the subscription's context fix on top of
# run 35's 71c3118); (2) issue 16's HTTP suite at twice run 36's rate (16 req/s), multiplexed then per-request
# (this tree with .device/mux.patch = a2f70a0..ce0773e of deployments/ reverted).
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
tar --exclude=./.device --exclude=./.whl -cf - . | (mkdir -p /tmp/old && tar -xf - -C /tmp/old)
(cd /tmp/old && git apply -R "$OLDPWD/.device/mux.patch") || { echo "patch failed"; exit 1; }
timeout 200 python -m benchmarks.flood --config serve_config.yaml --slo-s 1.0 --floods 4 --commit "$1" --out $OUT/flood > $OUT/flood.log 2>&1
echo "flood rc=$?"; tail -10 $OUT/flood/flood.md
ray stop --force > /dev/null 2>&1; sleep 1
http() {  # $1 tree, $2 name
  (cd $1 && timeout 170 python -m benchmarks.suite http --quick --rate 16 --ingress-replicas 1 --out $OUT/$2 > $OUT/$2.log 2>&1; echo "$2 rc=$?"; grep -A6 "^| path" $OUT/$2/http.md | head -8)
  ray stop --force > /dev/null 2>&1; sleep 1
}
http $PWD http16_mux
http /tmp/old http16_per_request
date
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
