#!/usr/bin/env bash
# Session 2026-12-06c run 3: the grid-driven decode K split as landed (4d00d43). (1) The GPU tests of the decode
# LoRA kernels (bf16 / fp16 / fp32 against the torch reference, the decode step in a CUDA graph) and of the
# engine (CUDA graphs equal eager; Triton equals torch and transformers + PEFT in float32); (2) the Hugging Face
# PEFT comparison of issue 16 (s-lora-table's PEFT workload: 32 requests over 8 adapters, lengths < 128).
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06c/run3.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
timeout -s TERM 240 python -m pytest -q -m gpu tests/test_kernels_gpu.py -k "(test_lora_cuda and decode) or cuda_graph_decode_step" \
  2>&1 | tail -3
timeout -s TERM 150 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "cuda_graphs_equal_eager or triton_equals_torch" \
  2>&1 | tail -3
LEFT=$(( 585 - ($(date +%s) - T0) )); echo "peft with $LEFT s left"
[ $LEFT -gt 150 ] && timeout -s TERM $LEFT python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 \
  --points 1 --duration 10 --burst 64 --out $OUT/peft --commit $1 > $OUT/peft.log 2>&1; echo "peft rc=$?"
grep -E "PEFT|saturated" $OUT/peft.log | tail -4
echo "done at $(( $(date +%s) - T0 )) s"
