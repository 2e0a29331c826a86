#!/usr/bin/env bash
# Session 06j run 2: the expand's shorter lookup chain (expand_chain.patch) against the kernels without it, in
# one command on one GPU: LoRA per Llama-2-7B layer in a CUDA graph (decode cases, plans built for 256 slots as
# the engine's decode graphs at n = 1000, each launch also alone), B's bf16 GPU tests of the LoRA kernels, then
# saturated S2 at n = 1000. Each stage's files go into $OUT/run2.tar as it ends (the device tool returns
# a few files only).
#   bash benchmarks/results/session-2026-12-06j/run2.sh COMMIT [short]
# COMMIT's tree (with the patch) is B; A is a copy with the patch reversed.
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
P=benchmarks/results/session-2026-12-06j/expand_chain.patch
W=/tmp/run2out
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
rm -rf /tmp/A && cp -r . /tmp/A && (cd /tmp/A && patch -R -p1 -s < "$P") || { echo "patch -R failed"; exit 1; }
keep() { tar -rf "$OUT/run2.tar" -C "$W" . && rm -rf "$W"; mkdir -p "$W/A" "$W/B"; }
mkdir -p "$W/A" "$W/B"
kern() {  # kern NAME DIR
  (cd "$2" && timeout -s TERM 150 python benchmarks/kernels.py --lora-only --parts --plan-slots 256 \
    --case "decode 255 req, 230 adapters, q/k/v/o" --case "decode 250 req, 125 adapters, q/k/v/o" \
    --case "decode 255 req, 1 adapter, q/k/v/o" --out "$W/$1/kern" > "$W/$1/kern.log" 2>&1)
  echo "$1 kernels rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "^\| decode" "$W/$1/kern/kernels.md" | head -8
}
sat() {  # sat NAME DIR COMMIT
  (cd "$2" && timeout -s TERM 100 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 1000 \
    --out "$W/$1/sat" --commit "$3" > "$W/$1/sat.log" 2>&1)
  echo "$1 sat rc=$? at $(( $(date +%s) - T0 )) s"; grep -E "req/s" "$W/$1/sat.log" | cut -c1-330
}
if [ "${2:-}" = "short" ]; then  # what fits the device time left: saturated A/B at n = 1000, then B's GPU tests
  sat A /tmp/A "$1 without expand_chain.patch"; keep; sat B . "$1"; keep
  timeout -s TERM 90 python -m pytest -q -m gpu tests/test_kernels_gpu.py -k "(lora_cuda and bfloat16 and decode) or cuda_graph_decode" \
    > "$W/B/gpu_tests.log" 2>&1
  echo "B GPU tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -2 "$W/B/gpu_tests.log"; keep
  exit 0
fi
kern A /tmp/A; kern B .; keep
timeout -s TERM 110 python -m pytest -q -m gpu tests/test_kernels_gpu.py -k "(lora_cuda and bfloat16) or cuda_graph_decode" \
  > "$W/B/gpu_tests.log" 2>&1
echo "B GPU tests rc=$? at $(( $(date +%s) - T0 )) s"; tail -2 "$W/B/gpu_tests.log"; keep
sat A /tmp/A "$1 without expand_chain.patch"; keep
sat B . "$1"; keep
echo "done at $(( $(date +%s) - T0 )) s"
