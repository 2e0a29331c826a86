"""The tensor-parallel control message: its size and the driver's per-step control cost, on the CPU.

    python benchmarks/tp_control.py --out DIR [--requests 24] [--max-tokens 48]

One workload (the demo model in float32, requests of every demo adapter and of the base model, prompts of
5..80 tokens, `--max-tokens` greedy tokens each, all submitted at once):
- offline: every step's SchedulerOutput of an in-process engine, pickled as the driver sends it
  (`ControlChannel.send`): the whole step (every sequence with its page list and sampling parameters) and,
  where deployments/tp.py has it, the step as a diff (`StepEncoder`: new requests whole, then per step
  only new pages, tokens and finished ids); bytes and pickling time per step.
- TP=2 over Ray and gloo (two rank actors): `TPExecutor.control.summary()` (broadcast, reply wait, rank-0
  execute, overhead and payload bytes per step).
Writes DIR/tp_control.json.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import EngineConfig  # noqa: E402
from app.demo import DEMO_ADAPTERS, build_demo  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.request import SamplingParams  # noqa: E402


def workload(n: int, max_tokens: int) -> list[tuple[list[int], str | None, SamplingParams]]:
    names: list[str | None] = [*DEMO_ADAPTERS, None]
    p = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return [([(7 * i + j) % 400 + 3 for j in range(5 + (i * 13) % 76)], names[i % len(names)], p) for i in range(n)]


def run(engine: Engine, reqs) -> int:
    for ids, a, p in reqs:
        engine.add_request(ids, p, a)
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return steps


def offline(cfg: EngineConfig, adapters: dict[str, str], reqs) -> dict:
    from deployments import tp

    engine = Engine(cfg)
    engine.add_adapters(adapters)
    outs = []
    execute = engine.executor.execute

    def recording(out):
        outs.append(out)
        return execute(out)

    engine.executor.execute = recording  # type: ignore[method-assign]
    run(engine, reqs)

    def sizes(msgs) -> tuple[list[int], list[float]]:
        b, t = [], []
        for m in msgs:
            best = float("inf")
            for _ in range(5):  # the least of 5: the machine may be shared
                t0 = time.perf_counter()
                data = pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)
                best = min(best, time.perf_counter() - t0)
            b.append(len(data))
            t.append(best)
        return b, t

    res: dict = {"steps": len(outs)}
    full_b, full_t = sizes([tp.StepMessage(o) for o in outs])
    res["whole"] = {
        "bytes_mean": statistics.mean(full_b),
        "bytes_max": max(full_b),
        "pickle_us": 1e6 * statistics.mean(full_t),
    }
    if hasattr(tp, "StepEncoder"):
        enc = tp.StepEncoder()
        diffs = []
        t_enc = 0.0
        for o in outs:
            t0 = time.perf_counter()
            diffs.append(tp.StepMessage(enc.encode(o)))
            t_enc += time.perf_counter() - t0
        diff_b, diff_t = sizes(diffs)
        res["diff"] = {
            "bytes_mean": statistics.mean(diff_b),
            "bytes_max": max(diff_b),
            "pickle_us": 1e6 * statistics.mean(diff_t),
            "encode_us": 1e6 * t_enc / len(outs),
        }
    return res


def tp2(cfg: EngineConfig, adapters: dict[str, str], reqs) -> dict:
    import ray

    from deployments.tp import TPExecutor

    ray.init(num_cpus=4, include_dashboard=False)
    try:
        engine = Engine(cfg, executor=TPExecutor(cfg, 2))
        engine.add_adapters(adapters)
        t0 = time.perf_counter()
        run(engine, reqs)
        res = {"wall_s": time.perf_counter() - t0, **engine.executor.control.summary()}
        engine.executor.shutdown()
        return res
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--no-tp", action="store_true", help="the offline part only (no Ray)")
    a = ap.parse_args()
    demo = build_demo()
    cfg = EngineConfig(
        model=str(demo / "model"), device="cpu", dtype="float32", pool={"page_size": 4, "num_pages": 2048}
    )
    adapters = {n: str(demo / "adapters" / n) for n in DEMO_ADAPTERS}
    reqs = workload(a.requests, a.max_tokens)
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True, text=True
    ).stdout.strip()
    res = {
        "commit": commit,
        "requests": a.requests,
        "max_tokens": a.max_tokens,
        "offline": offline(cfg, adapters, reqs),
    }
    if not a.no_tp:
        res["tp2_cpu"] = tp2(cfg, adapters, reqs)
    print(json.dumps(res, indent=1))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tp_control.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
