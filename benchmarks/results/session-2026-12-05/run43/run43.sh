#!/usr/bin/env bash
# Session 2026-12-05, run 43: (1) the relaxed gemma2 GPU test (15e11d6); (2) saturated S2 Llama-2-7B q/k/v/o,
# n = 0 / 1000: main (A), 849140a (B, the start of session g, from a git archive carried in .device), main with
# --profile (P: GPU kernels by kind and host functions over steps 40-60; its throughput is perturbed).
cd "$(dirname "$0")/.."
C=$1
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $C"
export TRITON_CACHE_DIR=/tmp/tc_test
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_engine_gpu.py -k "triton_equals and gemma2" > $OUT/test.log 2>&1
echo "test rc=$?"; grep -E "passed|failed|FAILED|Error|differ" $OUT/test.log | cut -c1-600 | head -20; date
mkdir -p /tmp/old && tar -xf .device/old849.tar -C /tmp/old
for V in A B P; do
  LEFT=$(( 570 - ($(date +%s) - T0) )); [ $LEFT -lt 90 ] && { echo "no time for $V"; break; }
  case $V in
    A) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_A --commit "$C (A: main)" > $OUT/sat_A.log 2>&1;;
    B) (cd /tmp/old && PYTHONPATH=/tmp/old:$PYTHONPATH timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_B --commit "849140a (B: session g's start)") > $OUT/sat_B.log 2>&1;;
    P) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --profile --out $OUT/sat_P --commit "$C (P: main, profiled)" > $OUT/sat_P.log 2>&1;;
  esac
  echo "sat $V rc=$?"; grep -E " n=" $OUT/sat_$V.log | grep -o "n=[0-9]* .*req/s" ; date
done
cp .device/run43.sh $OUT/
cd $OUT && tar -czf /tmp/all.tgz . && rm -rf $OUT/* && mv /tmp/all.tgz $OUT/
