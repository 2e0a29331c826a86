"""GPU ms by phase of step index, base against n adapters, from two saturated.json files' `steps_trace` (the
table of this session's README):

    python benchmarks/results/session-2026-12-07d/phases.py BASE.json [N.json] [--adapters 1000]

With one file, its n = 0 run and its `--adapters` run are compared. The phases compare like with like only while
both runs admit the same requests (the first ~20 steps), or where both keep the batch at its cap."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PHASES = [(0, 1), (1, 20), (20, 100), (100, 300), (300, 600), (600, 10**6)]


def run_of(path: str, adapters: int) -> dict:
    runs = json.loads(Path(path).read_text())["settings"][0]["runs"]
    return next(r for r in runs if r["adapters"] == adapters)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--adapters", type=int, default=1000)
    a = ap.parse_args()
    base = run_of(a.files[0], 0)["steps_trace"]
    lora = run_of(a.files[-1], a.adapters)["steps_trace"]
    print("| steps | base GPU ms | n GPU ms | excess per step | batch (distinct) |")
    print("|---|---:|---:|---:|---|")
    for lo, hi in PHASES:
        b, t = base[lo:hi], lora[lo:hi]
        if not t:
            break
        g0, g = sum(s[6] for s in b), sum(s[6] for s in t)
        print(
            f"| {lo + 1}-{lo + len(t)} | {g0:.0f} | {g:.0f} | {(g - g0) / len(t):.1f} | "
            f"{sum(s[2] for s in t) / len(t):.0f} ({sum(s[3] for s in t) / len(t):.0f}) |"
        )


if __name__ == "__main__":
    main()
