#!/usr/bin/env bash
# Session 2026-12-05e, run 1 (issue 12), at a tree with the experiments applied (evict_first on the adapter-weight
# loads: session b's weights_evict.patch; expand_chunks: column blocks per expand program, the tile's lookups made
# once for them; expand_n_major: an adapter's column programs launched next to each other; expand_persistent: a
# fixed number of expand programs per SM, each walking items with the next two items' lookups in flight).
# (1) the kernel sweep of those variants (decode 64 / 255 requests, the mixed step), (2) Nsight Compute on the
# decode LoRA launches of the 255-request / 230-adapter step (if the image has ncu), (3) saturated S2 A/B:
# A = defaults (n = 0, 1000), B = the sweep's best decode variant if >= 3% faster on the 255-request step, else
# decode expand_n 128 (session b's candidate). `bash .../run1.sh COMMIT` from the repository root.
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
export TRITON_CACHE_DIR=/tmp/tc
timeout 200 python benchmarks/kernels.py --lora-only --sweep --parts --case "decode 64 req" --case "decode 255 req" \
  --case "mixed 250 decode" --sweep-match evict --sweep-match expand_chunks --sweep-match n_major --sweep-match persistent \
  --sweep-match "'expand_n': 128" --out /tmp/kernels > $OUT/kernels.log 2>&1
echo "kernels rc=$?"; grep -E "graph |: [0-9.]+ ms, err" $OUT/kernels.log | cut -c1-200

cp /tmp/kernels/kernels.json $OUT/; B=$(python - "$OUT/kernels.json" <<'PY'
import json, sys
try:
    sw = json.load(open(sys.argv[1]))["sweep"]
except Exception:
    sw = []
def best(case):
    rows = [r for r in sw if case in r["case"] and "1 adapter" not in r["case"] and r["ms"]]
    base = next((r["ms"] for r in rows if not r["variant"]), None)
    top = min(rows, key=lambda r: r["ms"], default=None)
    return top["variant"] if base and top and top["variant"] and top["ms"] <= 0.97 * base else None
d, m = best("decode 255 req"), best("mixed 250")
out = {}
out["decode"] = d if d else {"expand_n": 128}
if m:
    out["mixed"] = m
print(json.dumps(out))
PY
)
echo "B = $B"

NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
if [ -n "$NCU" ]; then
  timeout 100 $NCU --target-processes all --kernel-name regex:"lora_(shrink|expand)_kernel" --launch-count 4 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats \
    python benchmarks/kernels.py --lora-only --case "decode 255 req, 230" --out /tmp/k > $OUT/ncu.txt 2>&1
  echo "ncu rc=$?"; grep -E "lora_|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Grid Size|Waves Per SM|Stall|ERR|Error" $OUT/ncu.txt | cut -c1-160 | head -90
fi

for V in A B; do
  LEFT=$(( 575 - ($(date +%s) - T0) )); [ $LEFT -lt 90 ] && { echo "no time for $V"; break; }
  case $V in
    A) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out /tmp/sat_A --commit "$1 (A: defaults)" > $OUT/sat_A.log 2>&1;;
    B) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 1000 --lora-kernels "$B" --out /tmp/sat_B --commit "$1 (B: $B)" > $OUT/sat_B.log 2>&1;;
  esac
  echo "sat $V rc=$?"; cp /tmp/sat_$V/saturated.json $OUT/sat_$V.json; grep -ho "n=[0-9]* async=True: [0-9.]* req/s\|(GPU {[^}]*})" $OUT/sat_$V.log
done
date
