#!/usr/bin/env bash
# Session 2026-12-05, run 45: the float32 engine test on the GPU (Triton == torch == transformers + PEFT, now
# with transformers' eager attention as the reference) on gemma2 (runs 42-43 failed it) and gqa.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
export TRITON_CACHE_DIR=/tmp/tc_test
timeout 280 python -m pytest -q -p no:cacheprovider -m gpu tests/test_engine_gpu.py -k "triton_equals and (gemma2 or gqa)" > $OUT/test.log 2>&1
echo "test rc=$?"; grep -E "passed|failed|FAILED|Error" $OUT/test.log | cut -c1-400 | head -20; date
cp .device/run45.sh $OUT/
