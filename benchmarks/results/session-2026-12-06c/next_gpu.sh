#!/usr/bin/env bash
# Prepared for the next device session (not run): the landed grid-driven decode split (4d00d43) where this
# session could not look. (1) The kernel benchmark's decode cases (256 requests over 64 / 256 adapters: issue 12's
# <= 0.21 / <= 0.53 ms per layer) with shrink_programs 2048 against 0 (the old fixed split), one process each;
# (2) the two engine GPU tests run 3 did not reach (gemma2); (3) saturated S2 n = 0, 1, 1000 at HEAD (on an H200:
# issue 12's headline). PART=2: the PEFT comparison on an H200 (s-lora-table's PEFT workload, ~210 s). PART=3: the
# decode expand at small batches (run 2's burst; its launches, 6.9 us each, are now the larger half of the LoRA
# time there): expand_r 32 / 64 (fewer dependent iterations over the rank) and expand_n 64, one process each.
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06c/next_gpu.sh COMMIT [2]
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
if [ "$2" = 2 ]; then
  timeout -s TERM 560 python -m benchmarks.suite s-lora-table --quick --settings S2 --adapters 8 --points 1 --duration 10 \
    --burst 64 --out $OUT/peft --commit $1 > $OUT/peft.log 2>&1; echo "peft rc=$?"; grep -E "PEFT" $OUT/peft.log | tail -2
  exit 0
fi
if [ "$2" = 3 ]; then
  for V in D R32 R64 N64; do
    case $V in D) K='{}';; R32) K='{"decode": {"expand_r": 32}}';; R64) K='{"decode": {"expand_r": 64}}';;
               N64) K='{"decode": {"expand_n": 64}}';; esac
    timeout -s TERM 120 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 8 --requests 32 --max-len 128 \
      --async-scheduling on on --profile --no-profile-host --profile-steps 20 60 --lora-kernels "$K" \
      --out /tmp/small_$V --commit "$1 ($V)" > /tmp/small_$V.log 2>&1; echo "small $V rc=$?"
    cp /tmp/small_$V/saturated.json $OUT/small_$V.json
    python3 -c "
import json, sys; d = json.load(open(sys.argv[1]))['settings'][0]
for r in d['runs']:
    p = r['profile'] or {}
    print(sys.argv[2], r['adapters'], 'elapsed', round(r['elapsed_s'], 4), 'lora', [(t['kernel'][:18], t['ms'], t['calls']) for t in p.get('top', []) if 'lora' in t['kernel']])" \
      /tmp/small_$V/saturated.json $V
  done
  exit 0
fi
for V in P2048 P0; do
  [ $V = P0 ] && sed -i 's/expand_n=128, shrink_programs=2048/expand_n=128, shrink_programs=0/' kernels/lora.py
  grep -c "shrink_programs=$([ $V = P0 ] && echo 0 || echo 2048)" kernels/lora.py
  timeout -s TERM 120 python benchmarks/kernels.py --lora-only --case decode --out /tmp/k_$V > /tmp/k_$V.log 2>&1
  echo "kernels $V rc=$?"; cp /tmp/k_$V/kernels.md $OUT/kernels_$V.md; grep -E "^\| decode" /tmp/k_$V/kernels.md
done
git checkout kernels/lora.py
timeout -s TERM 150 python -m pytest -q -m gpu tests/test_engine_gpu.py -k "gemma2 and (cuda_graphs_equal_eager or triton_equals_torch)" 2>&1 | tail -3
LEFT=$(( 585 - ($(date +%s) - T0) )); echo "saturated with $LEFT s left"
timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 --out /tmp/sat \
  --commit "$1" > /tmp/sat.log 2>&1; echo "sat rc=$?"; cp /tmp/sat/saturated.json /tmp/sat/saturated.md $OUT/
grep -E "^\|" /tmp/sat/saturated.md | head -8
echo "done at $(( $(date +%s) - T0 )) s"
