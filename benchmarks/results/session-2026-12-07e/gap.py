"""The LoRA excess per distinct adapter in a saturated run, from `saturated.py`'s steps_trace: fits the base run's
step GPU ms as c0 + c1 * tokens + c2 * running requests (+ c3 * KV pages held before the step, where the trace has
them: saturated.py after 7d8401a) by least squares over steps 3 on, predicts the base time of the n-adapter run's
steps from the same fit, and bins the excess by the step's distinct adapters.

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

    def rows(trace):  # [tokens, running, KV pages before the step (0 without), distinct adapters, GPU ms]
        return np.array([[x[1], x[2], trace[i - 1][7] if len(x) > 7 else 0, x[3], x[6]]
                         for i, x in enumerate(trace) if i >= 2], float)  # fmt: skip

    base, run = rows(runs[0]["steps_trace"]), rows(runs[a.n]["steps_trace"])
    cols = 3 if base[:, 2].any() else 2
    fit = np.c_[np.ones(len(base)), base[:, :cols]]
    coef, *_ = np.linalg.lstsq(fit, base[:, 4], rcond=None)
    kv = f" + {coef[3]:.5f} ms/KV page" if cols == 3 else ""
    print(f"fit: {coef[0]:.2f} ms + {coef[1]:.4f} ms/token + {coef[2]:.4f} ms/request{kv}; residual sd "
          f"{(base[:, 4] - fit @ coef).std():.2f} ms")  # fmt: skip
    pred = np.c_[np.ones(len(run)), run[:, :cols]] @ coef
    run = run[:, [0, 1, 3, 4]]  # tokens, running, distinct adapters, GPU ms
    excess = run[:, 3] - pred
    print(f"base run {base[:, 4].sum():.0f} ms; n = {a.n}: {run[:, 3].sum():.0f} ms, its steps at the base's cost "
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
