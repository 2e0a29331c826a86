#!/usr/bin/env bash
# Session 07 run 1: the expand's grid order (expand_tiles_outer.patch: LoRATileConfig.expand_tiles_outer, one tile's
# column blocks adjacent, so that programs running together read whole rows of one adapter's B^T rather than a
# 256-byte block of each of many adapters) and 06j's prepared whole-rank expand (expand_r 64 / expand_n 64), per layer and end to end.
#   bash benchmarks/results/session-2026-12-07/run1.sh COMMIT [full|short|base|min|kern]
# (full ~9 min of device time; short ~8: the sweep on the 230-adapter decode and the mixed case only, no r64n64 run;
#  base ~6: saturated at n = 0 and 1000 with the defaults, at 1000 with tiles outer, the sweep on the 230-adapter
#  decode case, the tests; min ~5: base without n = 0; kern ~1.5: the sweep on the 230-adapter decode case only)
# In this order: (2), (1), (3).
# (1) LoRA per Llama-2-7B layer in a CUDA graph, the SWEEP's expand variants (benchmarks/kernels.py) on the
#     saturated run's decode and mixed steps, plans for 256 slots as the engine's graphs at n = 1000; (2) saturated S2 (defaults: n = 0,
#     1, 1000; tiles outer in both regimes: n = 1, 1000; expand_r 64 / expand_n 64 in decode: n = 1000), each in its
#     own process on the same GPU; (3) the bf16 GPU tests of the LoRA kernels with tiles outer as the default (a
#     copy of the tree with the default flipped). A = COMMIT's tree (main's kernels), B = a copy with the patch
#     applied; defaults and r64n64 run on A, the switch, the sweep and the tests on B. Files go into
#     $OUT/run1.tar as each stage ends.
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
W=/tmp/run1out
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
keep() { tar -rf "$OUT/run1.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
rm -rf /tmp/B && cp -r . /tmp/B && (cd /tmp/B && patch -p1 -s < benchmarks/results/session-2026-12-07/expand_tiles_outer.patch) \
  || { echo "patch failed"; exit 1; }
M=${2:-full}
D230=(--case "decode 255 req, 230 adapters, q/k/v/o")
MIX=(--case "mixed 250 decode + 1 x 300 prefill, 125 adapters, q/k/v/o")
case "$M" in
  full) CASES=("${D230[@]}" --case "decode 255 req, 1 adapter, q/k/v/o" "${MIX[@]}"); KT=170 ;;
  short) CASES=("${D230[@]}" "${MIX[@]}"); KT=110 ;;
  base | min | kern) CASES=("${D230[@]}"); KT=70 ;;
  *) echo "unknown mode $M"; exit 1 ;;
esac
sat() {  # sat NAME DIR OVERRIDES N...
  local name=$1 dir=$2 over=$3; shift 3
  (cd "$dir" && timeout -s TERM $(( 40 + 60 * $# )) python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters "$@" \
    --lora-kernels "$over" --out "$W/sat_$name" --commit "$C$([ "$dir" = . ] || echo ' + expand_tiles_outer.patch')" > "$W/sat_$name.log" 2>&1)
  echo "$name sat rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$name.log" | cut -c1-300; keep
}
C=$1
TO='{"decode": {"expand_tiles_outer": true}, "mixed": {"expand_tiles_outer": true}}'
case "$M" in
  full | short) sat default . '{}' 0 1 1000; sat tiles_outer /tmp/B "$TO" 1 1000 ;;
  base) sat default . '{}' 0 1000; sat tiles_outer /tmp/B "$TO" 1000 ;;
  min) sat default . '{}' 1000; sat tiles_outer /tmp/B "$TO" 1000 ;;
esac
[ "$M" = full ] && sat r64n64 . '{"decode": {"expand_r": 64, "expand_n": 64}}' 1000
(cd /tmp/B && timeout -s TERM $KT python benchmarks/kernels.py --lora-only --sweep --plan-slots 256 "${CASES[@]}" --sweep-match expand --out "$W/kern" > "$W/kern.log" 2>&1)
echo "kernels rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "^(decode|mixed) |^  (decode|mixed) " "$W/kern.log" | cut -c1-200 | head -40; keep
[ "$M" = kern ] && exit 0
sed -i 's/    expand_tiles_outer: bool = False/    expand_tiles_outer: bool = True/' /tmp/B/kernels/lora.py
grep -c "expand_tiles_outer: bool = True" /tmp/B/kernels/lora.py
(cd /tmp/B && timeout -s TERM 80 python -m pytest -q -m gpu tests/test_kernels_gpu.py -k "(lora_cuda and bfloat16) or cuda_graph_decode" \
  > "$W/gpu_tests_tiles_outer.log" 2>&1)
echo "GPU tests (tiles outer) rc=$? at $(( $(date +%s) - T0 )) s"; tail -2 "$W/gpu_tests_tiles_outer.log"; keep
echo "done at $(( $(date +%s) - T0 )) s"
