#!/usr/bin/env bash
# Session 07d run 2: the per-adapter prefetch wait (prefetch_wait.patch, app/runner.py) before / after, one GPU.
# A = this tree with the patch reversed (the step waits for every adapter the step before prefetched), B = this
# tree. Saturated Llama-3-8B all-linear (A: n = 0, 1000; B: n = 1000) and S2 (A: n = 0, 1000; B: n = 1000), each
# in its own process; then the GPU prefetch tests on B, and on a mutant of B without the wait (must fail).
#   bash benchmarks/results/session-2026-12-07d/run2.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run2out
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run2.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
rm -rf /tmp/A && cp -r . /tmp/A && (cd /tmp/A && patch -R -p1 -s < benchmarks/results/session-2026-12-07d/prefetch_wait.patch) \
  || { echo "reverse patch failed"; exit 1; }
C=$1
sat() {  # sat NAME DIR SETTING N...
  local name=$1 dir=$2 setting=$3; shift 3
  (cd "$dir" && timeout -s TERM $(( 50 + 45 * $# )) python benchmarks/saturated.py --settings "$setting" --adapters "$@" \
    --out "$W/sat_$name" --commit "$C$([ "$dir" = . ] || echo ' - prefetch_wait.patch')" > "$W/sat_$name.log" 2>&1)
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$name.log" | cut -c1-200; keep
}
sat 8b_A /tmp/A llama3-8b-all 0 1000
sat 8b_B . llama3-8b-all 1000
sat s2_A /tmp/A llama2-7b-qkvo 0 1000
sat s2_B . llama2-7b-qkvo 1000
timeout -s TERM 100 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "prefetch" > "$W/gpu_tests.log" 2>&1
echo "GPU tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -3 "$W/gpu_tests.log"; keep
rm -rf /tmp/M && cp -r . /tmp/M && sed -i 's/^\( *\)torch.cuda.current_stream().wait_event(self._inflight\[names\[last\]\]\[0\])/\1pass  # mutant/' /tmp/M/app/runner.py
grep -c "pass  # mutant" /tmp/M/app/runner.py
(cd /tmp/M && timeout -s TERM 60 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "prefetch_behind and gqa" > "$W/gpu_tests_mutant.log" 2>&1)
echo "mutant GPU test rc=$? (must be 1) at $(( $(date +%s) - T0 )) s"; tail -3 "$W/gpu_tests_mutant.log"; keep
echo "done at $(( $(date +%s) - T0 )) s"
