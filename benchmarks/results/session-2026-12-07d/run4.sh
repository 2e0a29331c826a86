#!/usr/bin/env bash
# Session 07d run 4: a step's own adapter fills before the side stream's prefetches (own_fills_first.patch),
# before / after, one GPU, n = 1000. B = this tree with the patch reversed (run 3's B), D = this tree. Saturated
# Llama-3-8B all-linear and S2 at n = 1000, each run in its own process (B, D, in turn); then the GPU prefetch
# tests on D, and on a mutant of D without the wait (must fail).
#   bash benchmarks/results/session-2026-12-07d/run4.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run4out
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run4.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
rm -rf /tmp/B && cp -r . /tmp/B && (cd /tmp/B && patch -R -p1 -s < benchmarks/results/session-2026-12-07d/own_fills_first.patch) \
  || { echo "patch failed"; exit 1; }
C=$1
sat() {  # sat NAME DIR LABEL SETTING N...
  local name=$1 dir=$2 label=$3 setting=$4; shift 4
  (cd "$dir" && timeout -s TERM $(( 50 + 45 * $# )) python benchmarks/saturated.py --settings "$setting" --adapters "$@" \
    --out "$W/sat_$name" --commit "$C$label" > "$W/sat_$name.log" 2>&1)
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$name.log" | cut -c1-150; keep
}
for s in 8b:llama3-8b-all s2:llama2-7b-qkvo; do
  sat ${s%%:*}_B /tmp/B " - own_fills_first.patch" ${s#*:} 1000
  sat ${s%%:*}_D . "" ${s#*:} 1000
done
timeout -s TERM 90 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "prefetch and (gqa or mha)" > "$W/gpu_tests.log" 2>&1
echo "GPU tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -3 "$W/gpu_tests.log"; keep
rm -rf /tmp/M && cp -r . /tmp/M && sed -i 's/^\( *\)torch.cuda.current_stream().wait_event(self._inflight\[names\[last\]\]\[0\])/\1pass  # mutant/' /tmp/M/app/runner.py
grep -c "pass  # mutant" /tmp/M/app/runner.py
(cd /tmp/M && timeout -s TERM 60 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "prefetch_behind and gqa" > "$W/gpu_tests_mutant.log" 2>&1)
echo "mutant GPU test rc=$? (must be 1) at $(( $(date +%s) - T0 )) s"; tail -3 "$W/gpu_tests_mutant.log"; keep
echo "done at $(( $(date +%s) - T0 )) s"
