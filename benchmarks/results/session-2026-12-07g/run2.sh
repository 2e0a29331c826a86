#!/usr/bin/env bash
# Session 07g run 2: issue 12's headline on its goal GPU at COMMIT: saturated S2 (Llama-2-7B q/k/v/o) n = 0, 1,
# 1000, 2000 in one process, then Llama-3-8B all-linear n = 0, 1000 in another. On an H200 only: on any other
# GPU it stops at once (exit 3; the H100 figures stand from session 07f).
#   bash benchmarks/results/session-2026-12-07g/run2.sh COMMIT     (engine only: carry .whl for pydantic)
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { nvidia-smi --query-gpu=name --format=csv,noheader; exit 3; }
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
python -m pip install -q --no-index --find-links .whl pydantic
export PYTHONPATH=.:$PYTHONPATH PYTHONUNBUFFERED=1
W=/tmp/run2out; mkdir -p "$W"
timeout -s TERM 300 python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1 1000 2000 \
  --out "$W/sat_s2" --commit "$1" > "$W/sat_s2.log" 2>&1
echo "sat s2 rc=$? at $(( $(date +%s) - T0 )) s"; grep -h "req/s" "$W/sat_s2.log" | cut -c1-300
LEFT=$(( 570 - ($(date +%s) - T0) ))
timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama3-8b-all --adapters 0 1000 \
  --out "$W/sat_8b" --commit "$1" > "$W/sat_8b.log" 2>&1
echo "sat 8b rc=$? at $(( $(date +%s) - T0 )) s"; grep -h "req/s" "$W/sat_8b.log" | cut -c1-300
tar -cf "$OUT/run2.tar" -C "$W" --exclude="*.gz" .
echo "done at $(( $(date +%s) - T0 )) s"
