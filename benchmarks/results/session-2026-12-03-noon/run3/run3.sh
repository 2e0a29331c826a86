#!/usr/bin/env bash
# Session 2026-12-03 (noon) GPU run 3 (commit C, argument 1): the warm-up GPU test; saturated S2 7B q/k/v/o
# (n = 0, 1, 1000) with the piecewise graphs off (mixed_graph_max_tokens 0) and on, in one tree, with each
# step kind's wall time; then a profile of steps 200-240 with them on.
C=$1
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 100 python -m pytest -q -m gpu -x tests/test_engine_gpu.py -k "warmup_captures" > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -4; date
for m in 0 2048; do
timeout 130 python benchmarks/saturated.py --out $OUT/sat_m$m --settings llama2-7b-qkvo --adapters 0 1 1000 --mixed-graph-max-tokens $m --commit $C > $OUT/sat_m$m.log 2>&1; echo m$m rc=$?
grep -E "req/s" $OUT/sat_m$m.log | grep -v "^|" | cut -c1-300; date
done
timeout 130 python benchmarks/saturated.py --out $OUT/sat_prof --settings llama2-7b-qkvo --adapters 0 1000 --profile --profile-steps 200 240 --commit $C > $OUT/sat_prof.log 2>&1; echo prof rc=$?
grep -E "^- llama" $OUT/sat_prof/saturated.md | cut -c1-600; date
cp .device/run3.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
