"""The LoRA excess per distinct adapter in a saturated run, from `saturated.py`'s steps_trace: fits the base run's
step GPU ms as c0 + c1 * tokens + c2 * running requests (least squares, steps 3 on), predicts the base time of the
n-adapter run's steps from the same fit, and bins the excess by the step's distinct adapters.

    python benchmarks/results/session-2026-12-07e/gap.py FILE.json [N] [--adapter-mb MB --tbs TB_PER_S]

FILE holds the base run (n = 0) and the run with N adapters (default 1000) of one setting. With --adapter-mb and
--tbs it prints each bin's bytes bound per adapter (MB / TB/s, in us) beside the excess."""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("n", nargs="?", type=int, default=1000)
    ap.add_argument("--adapter-mb", type=float, default=None)
    ap.add_argument("--tbs", type=float, default=None)
    a = ap.parse_args()
    with open(a.file) as f:
        runs = {r["adapters"]: r for r in json.load(f)["settings"][0]["runs"]}
    base = np.array([[x[1], x[2], x[6]] for x in runs[0]["steps_trace"][2:]], float)
    fit = np.c_[np.ones(len(base)), base[:, 0], base[:, 1]]
    coef, *_ = np.linalg.lstsq(fit, base[:, 2], rcond=None)
    print(f"fit: {coef[0]:.2f} ms + {coef[1]:.4f} ms/token + {coef[2]:.4f} ms/request; residual sd "
          f"{(base[:, 2] - fit @ coef).std():.2f} ms")  # fmt: skip
    run = np.array([[x[1], x[2], x[3], x[6]] for x in runs[a.n]["steps_trace"][2:]], float)
    pred = np.c_[np.ones(len(run)), run[:, 0], run[:, 1]] @ coef
    excess = run[:, 3] - pred
    print(f"base run {base[:, 2].sum():.0f} ms; n = {a.n}: {run[:, 3].sum():.0f} ms, its steps at the base's cost "
          f"{pred.sum():.0f} ms, excess {excess.sum():.0f} ms (steps 3 on)")  # fmt: skip
    bound = a.adapter_mb / a.tbs if a.adapter_mb and a.tbs else None  # MB / (TB/s) = us
    for lo, hi in ((0, 50), (50, 100), (100, 150), (150, 200), (200, 260)):
        m = (run[:, 2] >= lo) & (run[:, 2] < hi)
        if m.any():
            per = excess[m].sum() / run[m, 2].sum() * 1e3
            print(f"  distinct {lo}-{hi}: {m.sum()} steps, excess {excess[m].mean():.2f} ms a step, {per:.1f} us per "
                  f"distinct adapter" + (f" (bytes bound {bound:.1f} us)" if bound else ""))  # fmt: skip


if __name__ == "__main__":
    main()
