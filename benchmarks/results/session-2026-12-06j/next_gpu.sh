#!/usr/bin/env bash
# Prepared for the next device session (not run): the decode expand with a whole rank of B^T in one load over
# fewer columns (kernels.py SWEEP's new expand_r / expand_n variants), per layer and then end to end.
#   bash benchmarks/results/session-2026-12-06j/next_gpu.sh COMMIT ['{"decode": {"expand_r": 64, "expand_n": 64}}']
# (1) LoRA per Llama-2-7B layer in a CUDA graph, the decode sweep on the saturated run's decode steps (plans for
#     256 slots as the engine's decode graphs at n = 1000), ~3 min; (2) saturated S2 at n = 0, 1, 1000 with the
#     defaults and with the variant given (default: expand_r 64 / expand_n 64) as EngineConfig.lora.kernels
#     overrides, one process each on the same GPU, ~4 min. Files go into $OUT/next.tar as each stage ends.
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
V=${2:-'{"decode": {"expand_r": 64, "expand_n": 64}}'}
W=/tmp/nextout
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1 variant $V"
keep() { tar -rf "$OUT/next.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W"; }
mkdir -p "$W"
timeout -s TERM 240 python benchmarks/kernels.py --lora-only --sweep --plan-slots 256 \
  --case "decode 255 req, 230 adapters, q/k/v/o" --case "decode 250 req, 125 adapters, q/k/v/o" \
  --case "decode 255 req, 1 adapter, q/k/v/o" --out "$W/kern" > "$W/kern.log" 2>&1
echo "kernels rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "expand|^\| decode .* \| \{\} " "$W/kern/kernels.md" | head -30; keep
for side in default variant; do
  over='{}'; [ "$side" = variant ] && over="$V"
  timeout -s TERM 150 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 \
    --lora-kernels "$over" --out "$W/sat_$side" --commit "$1" > "$W/sat_$side.log" 2>&1
  echo "$side sat rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/sat_$side.log" | cut -c1-300; keep
done
echo "done at $(( $(date +%s) - T0 )) s"
