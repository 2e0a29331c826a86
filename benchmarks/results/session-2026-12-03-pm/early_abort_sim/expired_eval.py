"""The `expired` early abort and LCFS on the traces of sim_eval.py (same seeds, rates and cvs).
Run from the repository root: python benchmarks/results/session-2026-12-03-pm/early_abort_sim/expired_eval.py"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_eval import run, trace  # noqa: E402


def main() -> None:
    slo = 1.0
    for rate in (14, 18):
        for cv in (1, 2, 4, 8):
            a = [
                run({"early_abort_ttft_slo_s": slo, "early_abort": "expired"}, trace(s, rate, cv, 60), slo)
                for s in range(6)
            ]
            lc = [run({"queue_order": "lcfs"}, trace(s, rate, cv, 60), slo) for s in range(6)]
            print(
                f"rate {rate} cv {cv}: expired {statistics.mean(x[0] for x in a):.3f} "
                f"aborted {statistics.mean(x[1] for x in a):.1f}  LCFS {statistics.mean(x[0] for x in lc):.3f}"
            )


if __name__ == "__main__":
    main()
