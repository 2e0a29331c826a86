#!/usr/bin/env bash
# Shrinks the device tool's Ray bundle (../shared/device/make-ray-bundle.sh OUT_DIR writes OUT_DIR/raysite.tar.xz)
# so that it and this working tree fit the device tool's 64 MiB carry limit together: 44.6 -> 35.8 MB for Ray 2.60.
# Drops what serving does not import (Ray Data, Tune, Train, Ray LLM, Workflows, virtualenv and distlib, the py-spy
# binary) and the symbol tables of Ray's native binaries (strip; their dynamic symbols stay).
#   bash ../shared/device/make-ray-bundle.sh .device && bash scripts/slim-ray-bundle.sh .device/raysite.tar.xz
# Checked with Python 3.12 on the CPU machine (ray.init with the dashboard, a Serve app answering HTTP) and on an
# H100 device machine (benchmarks/results/session-2026-12-07g/run1: the http suite, Serve's proxy and HAProxy).
set -euo pipefail
bundle=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xJf "$bundle" -C "$work"
site="$work/raysite"
rm -rf "$site"/ray/{data,tune,train,llm,workflow} "$site"/virtualenv "$site"/virtualenv-*.dist-info \
       "$site"/distlib "$site"/distlib-*.dist-info "$site"/bin/py-spy
strip --strip-unneeded "$site"/ray/_raylet.so
strip "$site"/ray/core/src/ray/gcs/gcs_server "$site"/ray/core/src/ray/raylet/raylet
tar -cJf "$bundle.tmp" -C "$work" raysite
mv "$bundle.tmp" "$bundle"
ls -la "$bundle"
