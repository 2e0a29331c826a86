#!/usr/bin/env bash
# Session 2026-12-03 (pm) GPU run 1 (main = commit C, argument 1): saturated S2 7B q/k/v/o (n = 0, 1, 1000) on
# equal workloads, main vs the decode-graph-groups patch (20fe335, .device/exp.tar.gz); the patch's profile
# of steps 200-240 at n = 1000; the new LoRA kernel cases (kernels.py --lora-only).
C=$1
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout 110 python benchmarks/saturated.py --out $OUT/sat_main --settings llama2-7b-qkvo --adapters 0 1 1000 --commit $C > $OUT/sat_main.log 2>&1; echo main rc=$?
grep -E "req/s" $OUT/sat_main.log | grep -v "^|" | cut -c1-300; date
mkdir -p /tmp/exp && tar -xzf .device/exp.tar.gz -C /tmp/exp
(cd /tmp/exp && timeout 110 python benchmarks/saturated.py --out $OUT/sat_exp --settings llama2-7b-qkvo --adapters 0 1 1000 --commit 20fe335 > $OUT/sat_exp.log 2>&1; echo exp rc=$?)
grep -E "req/s" $OUT/sat_exp.log | grep -v "^|" | cut -c1-300; date
(cd /tmp/exp && timeout 90 python benchmarks/saturated.py --out $OUT/sat_exp_prof --settings llama2-7b-qkvo --adapters 1000 --profile --profile-steps 200 240 --commit 20fe335 > $OUT/sat_exp_prof.log 2>&1; echo prof rc=$?)
grep -E "^- llama" $OUT/sat_exp_prof/saturated.md | cut -c1-600; date
timeout 200 python benchmarks/kernels.py --out $OUT/kernels --lora-only > $OUT/kernels.log 2>&1; echo kernels rc=$?
tail -40 $OUT/kernels/kernels.md; date
cp .device/run1.sh $OUT/; cd /tmp && tar -czf /tmp/all.tgz -C $OUT . && mv /tmp/all.tgz $OUT/
