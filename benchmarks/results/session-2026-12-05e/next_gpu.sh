#!/usr/bin/env bash
# Session 2026-12-05e, for the next device session (this one's time was spent on runs 1 and 2). From the repository
# root with the device README's bundle prefix: `bash benchmarks/results/session-2026-12-05e/next_gpu.sh COMMIT`.
# (1) The GPU tests that cover the decode expand's default since e6c0c66 (expand_n 128; run 1 checked its outputs
#     against the reference in the sweep and ran S2 with it, the GPU test suite did not run), at the committed tree.
# (2) expand_next.patch applied (not on main until measured): the decode expand pipelined by hand, so that no
#     load in the rank loop waits on a page-table read of the same iteration (in the default, the pipeliner's async
#     copy of block i + 1's B^T rows waits on their page ids, read in that iteration: kernel_compile's SASS shows
#     it); and `expand_y_late` (y read after the rank loop: 55 instead of 63 registers in decode, 80 instead of 105
#     in mixed steps, so 6 CTAs per SM instead of 4 there); the kernel sweep of their variants, decode and mixed.
# (3) Saturated S2 n = 0 / 1000 with the defaults, then n = 1000 with the sweep's best variant per regime where it is
#     >= 3% faster (decode: on the 255-request step; mixed: on the mixed step), else with the old decode expand_n 256
#     (the A/B of run 1 again).
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
export TRITON_CACHE_DIR=/tmp/tc
timeout -s TERM 200 python -m pytest -m gpu -q -x tests/test_kernels_gpu.py tests/test_engine_gpu.py \
  -k "(lora_cuda and decode) or cuda_graph_decode_step or ((triton_equals or cuda_graphs_equal_eager) and gqa) or no_kernel_compiles" \
  > $OUT/gpu_tests.log 2>&1
echo "gpu tests rc=$?"; tail -3 $OUT/gpu_tests.log
git apply benchmarks/results/session-2026-12-05e/expand_next.patch || { echo "patch does not apply"; exit 1; }
timeout 150 python benchmarks/kernels.py --lora-only --sweep --case "decode 64 req" --case "decode 255 req" \
  --case "mixed 250 decode" --sweep-match prefetch --sweep-match y_late --out /tmp/kernels > $OUT/kernels.log 2>&1
echo "kernels rc=$?"; cp /tmp/kernels/kernels.json $OUT/ 2>/dev/null; grep -E "graph |: [0-9.]+ ms, err" $OUT/kernels.log | cut -c1-200
B=$(python - "$OUT/kernels.json" <<'PY'
import json, sys
try:
    sw = json.load(open(sys.argv[1]))["sweep"]
except Exception:
    sw = []
def best(case):
    rows = [r for r in sw if case in r["case"] and r["ms"]]
    base = next((r["ms"] for r in rows if not r["variant"]), None)
    top = min(rows, key=lambda r: r["ms"], default=None)
    return top["variant"] if base and top and top["variant"] and top["ms"] <= 0.97 * base else None
d, m = best("decode 255 req, 230"), best("mixed 250")
out = {"decode": d} if d else {}
if m:
    out["mixed"] = m
print(json.dumps(out or {"decode": {"expand_n": 256}}))
PY
)
echo "B = $B"
for V in A B; do
  LEFT=$(( 570 - ($(date +%s) - T0) )); [ $LEFT -lt 90 ] && { echo "no time for $V"; break; }
  case $V in
    A) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out /tmp/sat_A --commit "$1 (A: defaults)" > $OUT/sat_A.log 2>&1;;
    B) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 1000 --lora-kernels "$B" --out /tmp/sat_B --commit "$1 (B: $B)" > $OUT/sat_B.log 2>&1;;
  esac
  echo "sat $V rc=$?"; cp /tmp/sat_$V/saturated.json $OUT/sat_$V.json 2>/dev/null
  grep -ho "n=[0-9]* async=True[^:]*: [0-9.]* req/s\|(GPU {[^}]*})" $OUT/sat_$V.log
done
git apply -R benchmarks/results/session-2026-12-05e/expand_next.patch
