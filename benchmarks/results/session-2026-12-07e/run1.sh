#!/usr/bin/env bash
# Session 07e run 1 (07d's run5.sh, run, plus the allocator's counters and the GPU prefetch tests): why the first
# step of an n = 1000 saturated run holds the host ~0.5 s (8B all-linear) while its 241 adapter copies run.
# (1) main, 8B n = 1000, torch.profiler + cProfile over steps 1-3 (host_top in the JSON names the blocking call;
#     the Chrome trace shows the copy and compute streams; "allocator" counts cudaMalloc retries, which sync);
# (2) A = main, B = prefetch_next_step.patch (the prefetch reads ahead only as far as one step can admit), 8B and
#     S2 at n = 1000, each run in its own process; (3) the GPU prefetch tests on main.
#   bash benchmarks/results/session-2026-12-07e/run1.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run1out
R=benchmarks/results/session-2026-12-07e
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run1.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
alloc() { python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(' ', r['adapters'], 'allocator', r.get('allocator'), 'first steps', r['steps_trace'][:3]) for s in d['settings'] for r in s['runs']]" "$1"; }
mkdir -p "$W"
rm -rf /tmp/B && cp -r . /tmp/B && (cd /tmp/B && patch -p1 -s < $R/prefetch_next_step.patch) || { echo "patch failed"; exit 1; }
C=$1
timeout -s TERM 150 python benchmarks/saturated.py --settings llama3-8b-all --adapters 1000 --profile --profile-steps 0 3 \
  --profile-host --profile-trace "$W/trace" --out "$W/sat_8b_profile" --commit "$C" > "$W/sat_8b_profile.log" 2>&1
echo "profile rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_8b_profile.log" | cut -c1-150
alloc "$W/sat_8b_profile/saturated.json"
python -c "import json,sys; d=json.load(open(sys.argv[1])); [print(r['profile']['host_top']) for s in d['settings'] for r in s['runs']]" "$W/sat_8b_profile/saturated.json" | head -40
keep
sat() {  # sat NAME DIR LABEL SETTING N...
  local name=$1 dir=$2 label=$3 setting=$4; shift 4
  (cd "$dir" && timeout -s TERM $(( 50 + 45 * $# )) python benchmarks/saturated.py --settings "$setting" --adapters "$@" \
    --out "$W/sat_$name" --commit "$C$label" > "$W/sat_$name.log" 2>&1)
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$name.log" | cut -c1-150; alloc "$W/sat_$name/saturated.json"; keep
}
for s in 8b:llama3-8b-all s2:llama2-7b-qkvo; do
  sat ${s%%:*}_A . "" ${s#*:} 1000
  sat ${s%%:*}_B /tmp/B " + prefetch_next_step.patch" ${s#*:} 1000
done
timeout -s TERM 150 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "prefetch and (gqa or mha)" > "$W/gpu_tests.log" 2>&1
echo "GPU prefetch tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -2 "$W/gpu_tests.log"
(cd /tmp/B && timeout -s TERM 60 python -m pytest -q tests/test_policies.py tests/test_scheduler.py > "$W/cpu_tests_B.log" 2>&1)
echo "scheduler tests on B rc=$? at $(( $(date +%s) - T0 )) s"; tail -1 "$W/cpu_tests_B.log"; keep
echo "done at $(( $(date +%s) - T0 )) s"
