"""Admission policies under overload (the paper's early-abort regime), with the fake-clock Sim of
tests/test_policies.py: 8 seats, 0.02 s steps, 64 tokens a step, outputs U[2, 40) (~19 req/s of capacity), gamma
arrivals of cv 1, 4, 8 at 14 to 30 req/s for 60 s, six seeds, TTFT deadline 1 s. Mean SLO attainment and the
paper's user satisfaction (1 - (ttft / SLO)^2 within the SLO, else 0; aborted: 0) per policy.
Run from the repository root: python benchmarks/results/session-2026-12-08/early_abort_overload/sim_eval.py"""

import importlib.util
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from tests.test_policies import Sim  # noqa: E402

# the gamma-arrival trace of session 03-pm's simulation (same requests for the same seed, rate and cv), loaded by
# path: a results folder is not a package
_spec = importlib.util.spec_from_file_location(
    "early_abort_sim_03pm", ROOT / "benchmarks/results/session-2026-12-03-pm/early_abort_sim/sim_eval.py"
)
_sim03 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sim03)
trace = _sim03.trace

POLICIES = {
    "FCFS": {},
    "LCFS": {"queue_order": "lcfs"},
    "expired": {"early_abort_ttft_slo_s": 1.0, "early_abort": "expired"},
    "predicted": {"early_abort_ttft_slo_s": 1.0, "early_abort": "predicted"},
}


def scores(sim: Sim, slo: float) -> tuple[float, float]:
    att, sat = [], []
    for r in sim.reqs.values():
        t = None if r.first_token_time is None else r.first_token_time - r.arrival_time
        ok = t is not None and t <= slo and r.finish_reason != "abort"
        att.append(ok)
        sat.append(1 - (t / slo) ** 2 if ok else 0.0)
    return statistics.mean(att), statistics.mean(sat)


def main() -> None:
    slo = 1.0
    print("| rate | cv | " + " | ".join(POLICIES) + " |  (attainment / satisfaction, mean of 6 seeds)")
    print("|---:|---:|" + "---|" * len(POLICIES))
    for rate in (14, 18, 24, 30):
        for cv in (1, 4, 8):
            cells = []
            for policy in POLICIES.values():
                res = []
                for seed in range(6):
                    sim = Sim(seqs=8, step_s=0.02, tokens=64, **policy)
                    sim.run(trace(seed, rate, cv, 60))
                    res.append(scores(sim, slo))
                cells.append(f"{statistics.mean(a for a, _ in res):.3f} / {statistics.mean(s for _, s in res):.3f}")
            print(f"| {rate} | {cv} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
