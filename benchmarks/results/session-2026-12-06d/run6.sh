#!/usr/bin/env bash
# Session 2026-12-06d run 6: main's code at the end (8c9f36b: the 16-slot bound alone). (1) The GPU tests of the
# slot-bound graphs again; (2) on an H200 saturated S2 n = 0, 1, 1000 (issue 12's headline in one command) and,
# with the time left, the PEFT comparison; on an H100 saturated n = 0, 1 (the one-adapter share at the end).
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06d/run6.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"; date; echo "commit $1"
timeout -s TERM 150 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "gqa and (cuda_graph or warmup_captures)" \
  "tests/test_engine_gpu.py::test_no_kernel_compiles_after_warmup[demo]" > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -2 $OUT/gpu_tests.log
A="0 1"; [[ "$GPU" == *H200* ]] && A="0 1 1000"
L=$(( 400 - ($(date +%s) - T0) ))
timeout -s TERM $L python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters $A --out /tmp/sat --commit "$1" \
  > /tmp/sat.log 2>&1; echo "sat rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/sat/saturated.json /tmp/sat/saturated.md $OUT/
grep -E "^\| llama" /tmp/sat/saturated.md
L=$(( 480 - ($(date +%s) - T0) ))
if [[ "$GPU" == *H200* ]] && [ $L -gt 200 ]; then
  timeout -s TERM $L python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 --points 1 --duration 10 \
    --burst 64 --out /tmp/peft --commit $1 > /tmp/peft.log 2>&1; echo "peft rc=$?"; grep -E "PEFT" /tmp/peft.log | tail -2
  cp /tmp/peft/*.json /tmp/peft/*.md $OUT/ 2>/dev/null
fi
echo "done at $(( $(date +%s) - T0 )) s"
