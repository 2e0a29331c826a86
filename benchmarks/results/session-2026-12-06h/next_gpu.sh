#!/usr/bin/env bash
# Prepared for the next device session (not run). From the repository root, with the device README's bundle prefix:
#   bash benchmarks/results/session-2026-12-06h/next_gpu.sh COMMIT SETTING [SECONDS]
#        One s-lora-table setting (S1, S2, S4, llama3-8b-all, ...) at base and n = 1000 on 30 s traces with
#        --points 4: from the saturated capacity up by 1.25x until a rate fails, then bisecting, so that the
#        maximum sustainable rate is bracketed (session 06h's --points 2 left every maximum a lower bound).
#        ~500 s on one H100 for S1.
#   bash benchmarks/results/session-2026-12-06h/next_gpu.sh COMMIT sat [SECONDS]
#        Saturated S2 (n = 0, 1000) on the 7B and 13B shapes; saturated.json now records each engine's pool size,
#        which checks benchmarks/schedule_sim.py's estimates (~7,000 / ~3,500 pages on an H100).
#   bash benchmarks/results/session-2026-12-06h/next_gpu.sh COMMIT profile [SECONDS]
#        Saturated S2 n = 0 and 1000 with --profile over steps 40-60 (with prefill: eager, ~450 launches a step)
#        and 300-340 (decode, graphs): the LoRA path's GPU time a step, against the ~4.0 ms (decode) that session
#        06h inferred from step times and the 2.56 ms of its bytes, and whether steps with prefill starve the GPU.
cd "$(dirname "$0")/../../.."
T0=$(date +%s); B=${3:-570}
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1 mode $2"
if [ "$2" = profile ]; then  # GPU time by kernel kind of S2 n = 0 and 1000: steps 40-60 (with prefill) and 300-340 (decode)
  for w in "40 60" "300 340"; do
    L=$(( B - ($(date +%s) - T0) )); [ "$L" -lt 120 ] && { echo "no time for steps $w"; continue; }
    timeout -s TERM "$L" python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --profile \
      --profile-steps $w --out "/tmp/prof${w% *}" --commit "$1" > "$OUT/profile_${w% *}.log" 2>&1
    echo "profile steps $w rc=$? at $(( $(date +%s) - T0 )) s"; cp "/tmp/prof${w% *}/saturated.json" "$OUT/profile_${w% *}.json"
    grep -iE "lora|kernel|gemm|attention|busy" "$OUT/profile_${w% *}.log" | tail -20
  done
  exit 0
fi
if [ "$2" = sat ]; then
  timeout -s TERM "$B" python benchmarks/saturated.py --settings llama2-7b-qkvo llama2-13b-qkvo --adapters 0 1000 \
    --out /tmp/sat --commit "$1" > "$OUT/sat.log" 2>&1
  echo "sat rc=$? at $(( $(date +%s) - T0 )) s"; cp /tmp/sat/saturated.* "$OUT/" 2>/dev/null
  python3 -c "
import json; d = json.load(open('$OUT/saturated.json'))
for s in d['settings']:
    for r in s['runs']: print(s['setting'], s['pool'], r['adapters'], round(r['req_s'], 2), r['steps'], r['steps_by_kind'], round(r['mean_batch'], 1), r['share_of_base'])"
  python -m benchmarks.schedule_sim --from "$OUT/saturated.json" | tee "$OUT/schedule_sim.md"
  exit 0
fi
timeout -s TERM "$B" python -m benchmarks.suite s-lora-table --quick --settings "$2" --adapters 0 1000 --points 4 \
  --duration 30 --no-peft --out "/tmp/$2" --commit "$1" > "$OUT/$2.log" 2>&1
echo "$2 rc=$? at $(( $(date +%s) - T0 )) s"
for f in "/tmp/$2"/*.json "/tmp/$2"/*.md; do [ -f "$f" ] && cp "$f" "$OUT/$2_$(basename "$f")"; done
grep -E "rate |^\| $2|^- $2" "$OUT/$2.log" | tail -12
