#!/usr/bin/env bash
# GPU run 4: the http suite (--quick): the same trace through the Ray Serve app over HTTP and in-process.
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name --format=csv,noheader; date
timeout -s TERM 385 python -m benchmarks.suite http --quick --out $OUT/http > $OUT/suite.log 2>&1; echo rc=$?
tail -30 $OUT/suite.log | cut -c1-250; date
