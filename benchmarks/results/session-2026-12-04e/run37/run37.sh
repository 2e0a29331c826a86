#!/usr/bin/env bash
# Session 2026-12-04 (e), run 37: issue 16's HTTP suite (100 adapters, 8 req/s, a 15 s trace: in-process replay,
# then the Serve app over HTTP) from the tree before the multiplexed stream (a2f70a0: .device/mux.patch reverted)
# and from this tree, alternating, this tree first (run 36 ran the old first).
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
tar --exclude=./.device --exclude=./.whl -cf - . | (mkdir -p /tmp/old && tar -xf - -C /tmp/old)
(cd /tmp/old && git apply -R "$OLDPWD/.device/mux.patch") || { echo "patch failed"; exit 1; }
http() {  # $1 tree, $2 name
  (cd $1 && timeout 270 python -m benchmarks.suite http --quick --ingress-replicas 1 --out $OUT/$2 > $OUT/$2.log 2>&1; echo "$2 rc=$?"; grep -A6 "^| path" $OUT/$2/http.md | head -8)
  ray stop --force > /dev/null 2>&1; sleep 1
}
http $PWD http_mux_1
http /tmp/old http_per_request_1
http $PWD http_mux_2
http /tmp/old http_per_request_2
date
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
