#!/usr/bin/env bash
# Session 07e run 2: (1) a second A/B pair of the landed read-ahead (B = COMMIT, A = COMMIT with
# prefetch_one_step.patch reversed), 8B all-linear and S2 at n = 1000, each run in its own process, B first;
# (2) the standing figures at COMMIT (07d's run1.sh: S2 n = 0, 1, 1000, 2000; 8B n = 0, 1000); (3) the GPU
# prefetch tests at COMMIT, and the behind-the-steps test on a mutant without the prefetch wait (must fail).
#   bash benchmarks/results/session-2026-12-07e/run2.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run2out
R=benchmarks/results/session-2026-12-07e
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run2.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
rm -rf /tmp/A && cp -r . /tmp/A && (cd /tmp/A && patch -R -p1 -s < $R/prefetch_one_step.patch) || { echo "patch failed"; exit 1; }
C=$1
sat() {  # sat NAME DIR LABEL SETTING N...
  local name=$1 dir=$2 label=$3 setting=$4; shift 4
  (cd "$dir" && timeout -s TERM $(( 50 + 50 * $# )) python benchmarks/saturated.py --settings "$setting" --adapters "$@" \
    --out "$W/sat_$name" --commit "$C$label" > "$W/sat_$name.log" 2>&1)
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$name.log" | cut -c1-160; keep
}
for s in 8b:llama3-8b-all s2:llama2-7b-qkvo; do
  sat ${s%%:*}_B . "" ${s#*:} 1000
  sat ${s%%:*}_A /tmp/A " without prefetch_one_step.patch" ${s#*:} 1000
done
sat std_s2 . "" llama2-7b-qkvo 0 1 1000 2000
sat std_8b . "" llama3-8b-all 0 1000
timeout -s TERM 120 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "prefetch and (gqa or mha)" > "$W/gpu_tests.log" 2>&1
echo "GPU prefetch tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -1 "$W/gpu_tests.log"
rm -rf /tmp/M && cp -r . /tmp/M && sed -i 's/^\( *\)torch.cuda.current_stream().wait_event(self._prefetch_event)/\1pass  # mutant/' /tmp/M/app/runner.py
grep -c "pass  # mutant" /tmp/M/app/runner.py
(cd /tmp/M && timeout -s TERM 60 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "prefetch_behind and gqa" > "$W/gpu_tests_mutant.log" 2>&1)
echo "mutant GPU test rc=$? (must be 1) at $(( $(date +%s) - T0 )) s"; tail -1 "$W/gpu_tests_mutant.log"; keep
echo "done at $(( $(date +%s) - T0 )) s"
