"""Deterministic policy comparison on bursty gamma traces with the fake-clock Sim of tests/test_policies.py."""
import random, sys, statistics
sys.path.insert(0, "/work/main")
from tests.test_policies import Sim, attainment

def trace(seed, rate, cv, dur, out_lo=2, out_hi=40):
    rng = random.Random(seed); t = 0.0; arr = []
    k = 1.0 / (cv * cv)
    i = 0
    while t < dur:
        t += rng.gammavariate(k, 1.0 / (rate * k))
        arr.append((round(t, 4), f"r{i:04d}", None, rng.randrange(out_lo, out_hi))); i += 1
    return arr

def run(policy, arr, slo):
    sim = Sim(seqs=8, step_s=0.02, tokens=64, **policy)
    sim.run(arr)
    return attainment(sim, slo), sim.sch.num_early_aborts

slo = 1.0
# capacity: 8 seats / (mean out 21 steps * 0.02 s) ~ 19 req/s
if __name__ == "__main__":
    for rate in (14, 18):
      for cv in (1, 2, 4, 8):
          res = {"fcfs": [], "ea": []}
          ab = []
          for seed in range(6):
              arr = trace(seed, rate, cv, 60)
              res["fcfs"].append(run({}, arr, slo)[0])
              a, n = run({"early_abort_ttft_slo_s": slo, "early_abort": "predicted"}, arr, slo)
              res["ea"].append(a); ab.append(n)
          print(f"rate {rate} cv {cv}: FCFS {statistics.mean(res['fcfs']):.3f}  EA {statistics.mean(res['ea']):.3f}  aborted {statistics.mean(ab):.1f}")
