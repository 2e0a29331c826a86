"""What the CPU and GPU tensor-parallel tests share (tests/test_tp.py, tests/test_tp_gpu.py): the adapters,
random requests, engines built with or without a TP executor, greedy generation and the comparison. Their
model and adapters come from the `tp_case` fixture (conftest.py)."""

from __future__ import annotations

import json
import random

from app.config import EngineConfig
from app.engine import Engine
from app.request import SamplingParams
from deployments.tp import TPExecutor
from tests.models import ADAPTERS, ALL

# ranks 1 and 3 are odd (padded under TP=2); o/down are row-parallel, q/k/v/gate/up column-parallel
SPECS = {
    "a-r1-q": ADAPTERS["a-r1-q"],
    "a-r3-all": (3, 6.0, ALL, False),
    "a-r4-down": ADAPTERS["a-r4-down"],
    "a-r16-ko-up": ADAPTERS["a-r16-ko-up"],
    "a-r8-attn": ADAPTERS["a-r8-attn"],  # added and removed at run time
}
AT_START = ["a-r1-q", "a-r3-all", "a-r4-down", "a-r16-ko-up"]
LATE = "a-r8-attn"


def random_requests(model, n: int, lengths: list[int], seed: int = 5) -> list[tuple[list[int], str | None, int]]:
    """n (prompt ids, adapter of AT_START or None in turn, max_tokens 4..8), prompt lengths from `lengths`."""
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    rng = random.Random(seed)
    names = AT_START + [None]
    reqs = []
    for i in range(n):
        ids = [rng.randrange(3, vocab) for _ in range(rng.choice(lengths))]
        reqs.append((ids, names[i % len(names)], rng.randint(4, 8)))
    return reqs


def config(model, **kw) -> EngineConfig:
    return EngineConfig(model=str(model), device="cpu", dtype="float32", **kw)


def generate(engine: Engine, reqs, outputs: bool = False, **params) -> list:
    """Greedy token ids of each request (with outputs=True: the finished RequestOutputs)."""
    ids = [
        engine.add_request(p, SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True, **params), a)
        for p, a, m in reqs
    ]
    done = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                done[o.request_id] = o if outputs else o.token_ids
    return [done[i] for i in ids]


def make_engine(cfg: EngineConfig, adapters, names, tp: int | None = None, **executor_kw) -> Engine:
    engine = Engine(cfg, executor=TPExecutor(cfg, tp, **executor_kw) if tp else None)
    for n in names:
        engine.add_adapter(n, adapters[n])
    return engine


def check(got, reqs, expected, what: str) -> None:
    bad = [(i, reqs[i][1], g, e) for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert not bad, f"{what}: {len(bad)} of {len(reqs)} requests differ, first (i, adapter, got, want): {bad[0]}"
