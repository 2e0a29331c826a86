#!/usr/bin/env bash
# Session 07d run 5 (prepared, NOT RUN: the session's device time was spent): why the first step of an n = 1000
# saturated run holds the host ~0.5 s (8B all-linear) while its 241 adapter copies run, and a prefetch that
# reads ahead only as far as one step can admit (prefetch_next_step.patch: ~16 adapters a step in the burst
# instead of 225 at once), before / after.
# (1) main, 8B n = 1000, torch.profiler + cProfile over steps 1-3 (host_top in the JSON names the blocking
#     call; the Chrome trace shows the copy and compute streams); (2) A = main, B = the patch, 8B and S2 at
#     n = 1000, each run in its own process (A, B, in turn); (3) the scheduler's CPU tests on B.
#   bash benchmarks/results/session-2026-12-07d/run5.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run5out
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run5.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
rm -rf /tmp/B && cp -r . /tmp/B && (cd /tmp/B && patch -p1 -s < benchmarks/results/session-2026-12-07d/prefetch_next_step.patch) \
  || { echo "patch failed"; exit 1; }
C=$1
timeout -s TERM 120 python benchmarks/saturated.py --settings llama3-8b-all --adapters 1000 --profile --profile-steps 0 3 \
  --profile-host --profile-trace "$W/trace" --out "$W/sat_8b_profile" --commit "$C" > "$W/sat_8b_profile.log" 2>&1
echo "profile rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_8b_profile.log" | cut -c1-150; keep
sat() {  # sat NAME DIR LABEL SETTING N...
  local name=$1 dir=$2 label=$3 setting=$4; shift 4
  (cd "$dir" && timeout -s TERM $(( 50 + 45 * $# )) python benchmarks/saturated.py --settings "$setting" --adapters "$@" \
    --out "$W/sat_$name" --commit "$C$label" > "$W/sat_$name.log" 2>&1)
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$name.log" | cut -c1-150; keep
}
for s in 8b:llama3-8b-all s2:llama2-7b-qkvo; do
  sat ${s%%:*}_A . "" ${s#*:} 1000
  sat ${s%%:*}_B /tmp/B " + prefetch_next_step.patch" ${s#*:} 1000
done
(cd /tmp/B && timeout -s TERM 60 python -m pytest -q tests/test_policies.py tests/test_scheduler.py > "$W/cpu_tests_B.log" 2>&1)
echo "scheduler tests on B rc=$? at $(( $(date +%s) - T0 )) s"; tail -1 "$W/cpu_tests_B.log"; keep
echo "done at $(( $(date +%s) - T0 )) s"
