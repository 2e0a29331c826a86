#!/usr/bin/env bash
# Session 07d run 3: adapter loads without a pinned allocation each, before / after, one GPU, n = 1000.
# A = e90fa8b's runner (prefetch_batched.patch reversed: a pinned buffer per load, every step waits for all
# prefetches of the step before); B = this tree (one page-id upload per step, each step waits only for the
# prefetched copies it depends on); C = A + batched_only.patch (one upload per step, the wait for all kept).
# Saturated Llama-3-8B all-linear and S2 at n = 1000, each run in its own process (A, B, C, in turn); then the
# GPU prefetch tests on B, and on a mutant of B without the wait (must fail).
#   bash benchmarks/results/session-2026-12-07d/run3.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run3out
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run3.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
R=benchmarks/results/session-2026-12-07d
rm -rf /tmp/A /tmp/C && cp -r . /tmp/A && (cd /tmp/A && patch -R -p1 -s < $R/prefetch_batched.patch) \
  && cp -r /tmp/A /tmp/C && (cd /tmp/C && patch -p1 -s < $R/batched_only.patch) || { echo "patches failed"; exit 1; }
C=$1
sat() {  # sat NAME DIR LABEL SETTING N...
  local name=$1 dir=$2 label=$3 setting=$4; shift 4
  (cd "$dir" && timeout -s TERM $(( 50 + 45 * $# )) python benchmarks/saturated.py --settings "$setting" --adapters "$@" \
    --out "$W/sat_$name" --commit "$C$label" > "$W/sat_$name.log" 2>&1)
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$name.log" | cut -c1-150; keep
}
for s in 8b:llama3-8b-all s2:llama2-7b-qkvo; do
  sat ${s%%:*}_A /tmp/A " - prefetch_batched.patch" ${s#*:} 1000
  sat ${s%%:*}_B . "" ${s#*:} 1000
  sat ${s%%:*}_C /tmp/C " - prefetch_batched.patch + batched_only.patch" ${s#*:} 1000
done
timeout -s TERM 90 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "prefetch and (gqa or mha)" > "$W/gpu_tests.log" 2>&1
echo "GPU tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -3 "$W/gpu_tests.log"; keep
rm -rf /tmp/M && cp -r . /tmp/M && sed -i 's/^\( *\)torch.cuda.current_stream().wait_event(self._inflight\[names\[last\]\]\[0\])/\1pass  # mutant/' /tmp/M/app/runner.py
grep -c "pass  # mutant" /tmp/M/app/runner.py
(cd /tmp/M && timeout -s TERM 60 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "prefetch_behind and gqa" > "$W/gpu_tests_mutant.log" 2>&1)
echo "mutant GPU test rc=$? (must be 1) at $(( $(date +%s) - T0 )) s"; tail -3 "$W/gpu_tests_mutant.log"; keep
echo "done at $(( $(date +%s) - T0 )) s"
