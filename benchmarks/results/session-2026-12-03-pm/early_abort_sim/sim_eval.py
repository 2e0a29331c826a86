"""Deterministic policy comparison on bursty gamma traces with the fake-clock Sim of tests/test_policies.py.
Run from the repository root: python benchmarks/results/session-2026-12-03-pm/early_abort_sim/sim_eval.py"""

import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from tests.test_policies import Sim, attainment  # noqa: E402


def trace(seed, rate, cv, dur, out_lo=2, out_hi=40):
    rng = random.Random(seed)
    t, arr, shape = 0.0, [], 1.0 / (cv * cv)
    while t < dur:
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
        arr.append((round(t, 4), f"r{len(arr):04d}", None, rng.randrange(out_lo, out_hi)))
    return arr


def run(policy, arr, slo):
    sim = Sim(seqs=8, step_s=0.02, tokens=64, **policy)
    sim.run(arr)
    return attainment(sim, slo), sim.sch.num_early_aborts


def main() -> None:
    slo = 1.0  # capacity: 8 seats / (mean output 21 steps x 0.02 s) ~ 19 req/s
    for rate in (14, 18):
        for cv in (1, 2, 4, 8):
            fcfs, ea, aborted = [], [], []
            for seed in range(6):
                arr = trace(seed, rate, cv, 60)
                fcfs.append(run({}, arr, slo)[0])
                a, n = run({"early_abort_ttft_slo_s": slo, "early_abort": "predicted"}, arr, slo)
                ea.append(a)
                aborted.append(n)
            print(
                f"rate {rate} cv {cv}: FCFS {statistics.mean(fcfs):.3f}  EA {statistics.mean(ea):.3f}  "
                f"aborted {statistics.mean(aborted):.1f}"
            )


if __name__ == "__main__":
    main()
