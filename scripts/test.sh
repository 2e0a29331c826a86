#!/usr/bin/env bash
# The test suite: CPU tests by default (Triton kernels under the interpreter, real Ray on the CPU), in two runs:
# the tests that do not start Ray in parallel over the machine's cores (pytest-xdist, up to 4 workers), then the
# `ray`-marked ones one at a time (each starts a Ray session, Serve apps, engine replicas: two at once would
# starve each other on a 2-core machine). The 15 slowest tests of each run are listed (CI keeps to 15 min).
# With arguments it is one plain pytest run of them: scripts/test.sh -m gpu on a GPU machine,
# scripts/test.sh tests/test_scheduler.py for one file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ $# -gt 0 ]; then
  exec $PY -m pytest -q --durations=15 "$@"
fi
rc=0  # both runs, whatever the first gives
# worksteal: an idle worker takes queued tests from a busy one, so the few 35-45 s interpreter tests do not end
# the run on one worker while the other waits (2 cores: 358-368 s, against 392-395 s with xdist's default split)
$PY -m pytest -q --durations=15 -m "not gpu and not ray" --numprocesses auto --maxprocesses 4 --dist worksteal || rc=$?
$PY -m pytest -q --durations=15 -m "ray and not gpu" || rc=$?
exit $rc
