#!/usr/bin/env bash
# Session 2026-12-03 (night) GPU run 12: why in-engine LoRA costs more than the kernel benchmark says.
# (1) kernels.py on the loaded S2 steps with the adapter pages in a compact pool vs spread over a 3 GB pool
# (one layer's slice of the engine's unified pool on an H200); (2) saturated Llama-2-7B q/k/v/o n = 1000 with
# a torch.profiler window of decode-heavy steps (200-240) and of the first, prefill-heavy steps (2-22).
cd "$(dirname "$0")/.."
C=$1
nvidia-smi --query-gpu=name --format=csv,noheader; date
for P in 0 3; do
  timeout 150 python benchmarks/kernels.py --lora-only --parts --case "decode 250 req" --case "mixed 250 decode" --pool-gb $P --out $OUT/k$P > $OUT/k$P.log 2>&1; echo "k$P rc=$?"
  grep -E "^\| (decode 250|mixed 250)" $OUT/k$P/kernels.md | cut -c1-150
done
for W in "200 240" "2 22"; do
  N=p${W%% *}
  timeout 170 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 1000 --profile --profile-steps $W --out $OUT/$N --commit $C > $OUT/$N.log 2>&1; echo "$N rc=$?"
  grep -E "n=" $OUT/$N.log | cut -c1-400
  python - $OUT/$N/saturated.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for s in d["settings"]:
    for r in s["runs"]:
        p = r.get("profile")
        if p:
            print(p["kinds_ms"], "gpu", p["gpu_ms"], "wall", p["wall_ms"])
            for t in p["top"]: print("  ", t)
PY
done
date
cp .device/run12.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
