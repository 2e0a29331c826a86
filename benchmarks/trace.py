"""S-LoRA synthetic workload (its trace.py): n adapters with power-law popularity (alpha 1 = uniform,
smaller = more skewed), Gamma arrivals of rate R and coefficient of variation cv (cv 1 = Poisson), input
and output lengths uniform in [8, 512), a fixed duration, a seed. Written as JSONL
`{arrival_s, adapter, input_len, output_len}`: any real trace in that format can be replayed.

    python benchmarks/trace.py --adapters 100 --alpha 1 --rate 2 --cv 1 --duration 60 --out trace.jsonl
"""

from __future__ import annotations

import argparse
import json
import random


def synthetic_trace(
    n_adapters: int,
    alpha: float,
    rate: float,
    cv: float,
    duration: float,
    seed: int,
    in_range=(8, 512),
    out_range=(8, 512),
) -> list[dict]:
    rng = random.Random(seed)
    weights = [(i + 1) ** (-1.0 / alpha) if alpha < 1 else 1.0 for i in range(n_adapters)]
    shape = 1.0 / (cv * cv)
    t, reqs = 0.0, []
    while True:
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
        if t >= duration:
            return reqs
        reqs.append(
            {
                "arrival_s": round(t, 6),
                "adapter": rng.choices(range(n_adapters), weights)[0],
                "input_len": rng.randrange(*in_range),
                "output_len": rng.randrange(*out_range),
            }
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapters", type=int, default=100)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--cv", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-range", type=int, nargs=2, default=(8, 512), help="input lengths: U[lo, hi)")
    ap.add_argument("--output-range", type=int, nargs=2, default=(8, 512), help="output lengths: U[lo, hi)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.out, "w") as f:
        for r in synthetic_trace(
            a.adapters, a.alpha, a.rate, a.cv, a.duration, a.seed, tuple(a.input_range), tuple(a.output_range)
        ):
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
