#!/usr/bin/env bash
# Session 07h run 1: the GPU before/after of b9bbe71 (cache_salt in PagePool.match_prefix / register_blocks and
# the scheduler), the serving-path change of session 07g that had no end-to-end run. Saturated S2 (Llama-2-7B
# q/k/v/o), 400 requests at once; B = COMMIT, A = COMMIT with cache_salt_app.patch reversed (app/ as at a6e989f).
# Order B, A, B, A, each in its own process: n = 0 and 1000 in the first pair, n = 1000 in the second. The
# benchmark sends no salt (the unsalted path every request takes) and runs without prefix caching as S2 does,
# plus one pair with prefix caching on (the path that calls match_prefix / register_blocks).
#   bash benchmarks/results/session-2026-12-07h/run1.sh COMMIT     (engine only: carry .whl for pydantic)
cd "$(dirname "$0")/../../.."
T0=$(date +%s); C=$1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date; echo "commit $1"
python -m pip install -q --no-index --find-links .whl pydantic
export PYTHONPATH=.:$PYTHONPATH PYTHONUNBUFFERED=1
R=benchmarks/results/session-2026-12-07h
W=/tmp/run1out; mkdir -p "$W"
rm -rf /tmp/A && cp -r . /tmp/A && (cd /tmp/A && patch -R -p1 -s < $R/cache_salt_app.patch) || { echo "patch failed"; exit 1; }
sat() {  # sat NAME DIR LIMIT ARGS...
  local name=$1 dir=$2 limit=$3 label=""; shift 3; [ "$dir" = . ] || label=" with cache_salt_app.patch reversed"
  local left=$(( 560 - ($(date +%s) - T0) )); [ "$left" -lt "$limit" ] && limit=$left
  [ "$limit" -lt 45 ] && { echo "$name skipped: ${left} s left"; return; }
  (cd "$dir" && PYTHONPATH=.:$PYTHONPATH timeout -s TERM "$limit" python benchmarks/saturated.py --settings llama2-7b-qkvo \
    "$@" --out "$W/sat_$name" --commit "$C$label" > "$W/sat_$name.log" 2>&1)
  echo "$name rc=$? at $(( $(date +%s) - T0 )) s"; grep -hE "req/s" "$W/sat_$name.log" | cut -c1-230
}
sat B1 . 150 --adapters 0 1000
sat A1 /tmp/A 150 --adapters 0 1000
sat B2 . 100 --adapters 1000
sat A2 /tmp/A 100 --adapters 1000
sat B3pc . 100 --adapters 1000 --prefix-caching on
sat A3pc /tmp/A 100 --adapters 1000 --prefix-caching on
tar -cf "$OUT/run1.tar" -C "$W" --exclude="*.gz" .
echo "done at $(( $(date +%s) - T0 )) s"
