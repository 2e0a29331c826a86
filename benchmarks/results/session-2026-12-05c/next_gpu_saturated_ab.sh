#!/usr/bin/env bash
# Session 2026-12-05c, for the next device session: the end-to-end check of the serving-path changes since
# 2122f25 (session 2026-12-05b's allowed_token_ids / bad_words / restricted greedy path / vocabulary check, and
# this session's prefix caching, off in this benchmark: what S2 pays for its bookkeeping, e.g. every step's
# confirmed-KV count per request). Saturated S2 Llama-2-7B q/k/v/o, n = 0 / 1000: A = the commit given,
# B = 2122f25, A again, one command. Prepare B on the host first: git archive 2122f25 > .device/old2122.tar
# (carry .device), then from the repository root with the device README's bundle prefix:
#   bash benchmarks/results/session-2026-12-05c/next_gpu_saturated_ab.sh COMMIT
cd "$(dirname "$0")/../../.."
T0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader; date; echo "commit $1"
mkdir -p /tmp/old && tar -xf .device/old2122.tar -C /tmp/old || { echo "no .device/old2122.tar"; exit 1; }
for V in A B A2; do
  LEFT=$(( 570 - ($(date +%s) - T0) )); [ $LEFT -lt 100 ] && { echo "no time for $V"; break; }
  case $V in
    A|A2) timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_$V --commit "$1 ($V)" > $OUT/sat_$V.log 2>&1;;
    B) (cd /tmp/old && PYTHONPATH=/tmp/old:$PYTHONPATH timeout -s TERM $LEFT python benchmarks/saturated.py --settings llama2-7b-qkvo --adapters 0 1000 --out $OUT/sat_B --commit "2122f25 (B)") > $OUT/sat_B.log 2>&1;;
  esac
  echo "sat $V rc=$?"; grep -ho "n=[0-9]* async=True[^:]*: [0-9.]* req/s\|(GPU {[^}]*})" $OUT/sat_$V.log
done
