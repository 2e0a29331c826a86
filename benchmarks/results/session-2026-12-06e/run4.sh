#!/usr/bin/env bash
# Session 2026-12-06e run 4: the PEFT comparison (issue 16) on the code with the decode graphs' side-stream
# shrinks: session 06d's prepared script, part 2, its suite timeout cut from 560 to 300 s to fit the device time
# left. Output in run4/ (peft.log and the suite's files).
# From the repository root with the device README's bundle prefix: bash benchmarks/results/session-2026-12-06e/run4.sh COMMIT
cd "$(dirname "$0")/../../.."
sed 's/timeout -s TERM 560/timeout -s TERM 300/' benchmarks/results/session-2026-12-06d/next_gpu.sh > /tmp/next_gpu.sh
bash /tmp/next_gpu.sh "$1" 2
