#!/usr/bin/env bash
# Session 2026-12-03 (evening) GPU run 7: LoRA shrink beside the base matmul (overlap_shrink), GPU tests,
# then saturated A/B in one engine per setting (--overlap-shrink off on).
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 200 python -m pytest -q -x tests/test_engine_gpu.py -k "shrink_beside or warmup_captures or base_model_alone or targeted_lora or graphs_equal_eager" > $OUT/tests.log 2>&1; echo tests rc=$?
tail -3 $OUT/tests.log
LEFT=$(( 560 - ($(date +%s) - T0) ))
echo "saturated gets $LEFT s"; date
timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo llama3-8b-all --adapters 0 1000 --overlap-shrink off on --out $OUT/sat --commit $C > $OUT/sat.log 2>&1; echo sat rc=$?
grep -E "n=|rror" $OUT/sat.log | cut -c1-200; date
cp .device/run7.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
