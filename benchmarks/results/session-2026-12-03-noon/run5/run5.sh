#!/usr/bin/env bash
# Session 2026-12-03 (noon) GPU run 5: the decode-graph GPU tests of 8f2f3da (graphs per set of targeted LoRA
# groups; warm-up's keys) in the little device time left (no benchmark fits).
cd "$(dirname "$0")/.."
cp .device/run5.sh $OUT/
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 120 python -m pytest -q -m gpu -x tests/test_engine_gpu.py -k "targeted_lora_groups or warmup_captures or base_model_alone" > $OUT/gpu_tests.log 2>&1; echo tests rc=$?
grep -E "passed|failed|FAILED|Error" $OUT/gpu_tests.log | tail -4; date
