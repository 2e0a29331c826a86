#!/usr/bin/env bash
# Session 06i run 4: saturated S2 (n = 0, 1000) with the GPU profiled over steps 40-60 (8 of them with prefill,
# eager) WITHOUT cProfile on the host (run 1's host profile slowed the host: GPU busy 82% / 58% there), to see
# whether the n = 1000 run's eager steps with prefill leave the GPU idle (host-bound LoRA launches) or not.
# bash benchmarks/results/session-2026-12-06i/run4.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
timeout -s TERM 300 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --profile --no-profile-host \
  --profile-steps 40 60 --out /tmp/prof40n --commit "$1" > "$OUT/profile_40_nohost.log" 2>&1
echo "profile rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/prof40n/saturated.json "$OUT/profile_40_nohost.json"
cp /tmp/prof40n/saturated.md "$OUT/profile_40_nohost.md"; grep -E "^- llama" "$OUT/profile_40_nohost.md"
