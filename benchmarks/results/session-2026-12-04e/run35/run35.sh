#!/usr/bin/env bash
# Session 2026-12-04 (e), run 35: the multiplexed group->ingress stream against one Serve stream per request.
# The same flood (issue 11: shipped serve_config.yaml, admission_ttft_slo_s 1.0, five floods of ~300 streamed
# completions in 1 s) from the tree before (a2f70a0: this tree with .device/mux.patch reverted) and this tree,
# one after the other, then again in the other order (drift between the halves shows).
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
tar --exclude=./.device --exclude=./.whl -cf - . | (mkdir -p /tmp/old && tar -xf - -C /tmp/old)
(cd /tmp/old && git apply -R "$OLDPWD/.device/mux.patch") || { echo "patch failed"; exit 1; }
flood() {  # $1 tree, $2 name
  (cd $1 && timeout 280 python -m benchmarks.flood --config serve_config.yaml --slo-s 1.0 --floods ${FLOODS:-4} \
     --commit "$2" --out $OUT/$2 > $OUT/$2.log 2>&1; echo "$2 rc=$?"; tail -12 $OUT/$2/flood.md)
  ray stop --force > /dev/null 2>&1; sleep 1
}
flood /tmp/old per_request_a
flood $PWD mux_a
flood $PWD mux_b
flood /tmp/old per_request_b
date
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
