"""One request must never take the engine or its group down (issue 11, finding 1): a request whose
sampling fails, or a step whose executor raises, fails its own requests with an error while the others go
on, frees their pages and drops half-loaded adapters; a dead executor makes the group unhealthy, ends every
open stream with a 503 error item and resolves every queued command."""

from __future__ import annotations

import asyncio

import pytest

from app import LLM, SamplingParams
from app.demo import build_demo
from app.engine import MAX_STEP_FAILURES, EngineDeadError
from app.request import RequestOutput
from app.sampling import FAILED
from deployments.group import GroupUnavailable, SLoRAGroup


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def llm(demo):
    return LLM(model=str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype="float32")


def greedy(n=6):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


class Faulty:
    """Wraps an executor: requests in `bad_sampling` get the FAILED token (their sampling failed);
    `raise_for[rid] = exc` makes a step that runs `rid` raise `exc` (after the runner ran the step and
    filled its adapter pages, as a forward pass failing half-way would), once `rid` has run `skip[rid]`
    steps without it."""

    def __init__(self, inner):
        self.inner = inner
        self.bad_sampling: set[str] = set()
        self.raise_for: dict[str, BaseException] = {}
        self.skip: dict[str, int] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, out):
        hit = [s.request_id for s in out.seqs if s.request_id in self.raise_for]
        result = self.inner.execute(out)
        for rid in hit:
            self.skip[rid] = self.skip.get(rid, 0) - 1
            if self.skip[rid] < 0:
                raise self.raise_for.pop(rid)
        sampled = [s for s in out.seqs if s.sample]
        result.tokens = [FAILED if s.request_id in self.bad_sampling else t for s, t in zip(sampled, result.tokens)]
        return result


def run(llm, prompts) -> dict:
    e = llm.engine
    for rid, (ids, adapter) in prompts.items():
        e.add_request(ids, greedy(), adapter, request_id=rid)
    outs = {}
    while e.has_unfinished():
        for o in e.step():
            if o.finished:
                outs[o.request_id] = o
    return outs


PROMPTS = {"a": ([3, 4, 5], "demo-r4-attn"), "bad": ([6, 7, 8, 9], "demo-r16-all"), "c": ([10, 11], None)}


def test_a_request_whose_sampling_fails_fails_alone(llm):
    ref = run(llm, PROMPTS)
    llm.engine.executor = f = Faulty(llm.engine.executor)
    f.bad_sampling.add("bad")
    outs = run(llm, PROMPTS)
    assert outs["bad"].finish_reason == "error" and "sampling failed" in outs["bad"].error
    assert outs["bad"].token_ids == []
    for rid in ("a", "c"):
        assert outs[rid].token_ids == ref[rid].token_ids and outs[rid].error is None
    assert llm.engine.is_idle_clean()
    llm.engine.pool.check()


def test_a_failed_step_fails_its_requests_drops_its_adapter_loads_and_the_engine_goes_on(llm):
    e = llm.engine
    ref = run(llm, PROMPTS)
    for name in list(e.pool.resident_adapters()):
        e.pool.evict(name)  # the next step loads its adapters again
    e.executor = f = Faulty(e.executor)
    f.raise_for["bad"] = RuntimeError("CUDA out of memory (injected)")
    outs = run(llm, PROMPTS)
    # every request of the failed step (all three were admitted together) fails with the step's error
    assert {o.finish_reason for o in outs.values()} == {"error"}
    assert all("out of memory" in o.error for o in outs.values())
    assert e.pool.resident_adapters() == []  # the step's loads may be half filled: dropped
    assert e.is_idle_clean()
    e.pool.check()
    again = run(llm, PROMPTS)  # and the engine serves the same requests correctly afterwards
    assert {k: o.token_ids for k, o in again.items()} == {k: o.token_ids for k, o in ref.items()}


def test_steps_failing_in_a_row_or_a_dead_executor_raise_engine_dead(llm):
    e = llm.engine
    e.executor = f = Faulty(e.executor)
    for i in range(MAX_STEP_FAILURES - 1):
        f.raise_for[f"r{i}"] = RuntimeError("boom")
        e.add_request([1, 2, 3], greedy(), request_id=f"r{i}")
        assert e.step()[0].finish_reason == "error"
    f.raise_for["last"] = RuntimeError("boom")
    e.add_request([1, 2, 3], greedy(), request_id="last")
    with pytest.raises(EngineDeadError, match="in a row"):
        e.step()
    e2 = LLM(model=llm.engine.cfg.model, device="cpu", dtype="float32").engine
    e2.executor = f2 = Faulty(e2.executor)
    f2.raise_for["x"] = EngineDeadError("rank gone")
    e2.add_request([1, 2], greedy(), request_id="x")
    with pytest.raises(EngineDeadError):
        e2.step()


def test_a_dead_engine_fails_the_group_streams_and_commands_and_reports_unhealthy(demo):
    cfg = {"model": str(demo / "model"), "device": "cpu", "dtype": "float32"}
    g = SLoRAGroup("g", cfg, settings={"stream_interval_s": 0.0}, ray_metrics=False)
    g.engine.executor = f = Faulty(g.engine.executor)

    async def scenario():
        assert (await g.stats())["healthy"]
        f.raise_for["victim"] = EngineDeadError("a rank is gone (injected)")
        f.skip["victim"] = 3  # it runs (and streams tokens) for three steps first
        streams = [g.generate(rid, [5, 6, 7], greedy(20)) for rid in ("victim", "other")]
        items = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in streams)), 10)
        later = await asyncio.wait_for(collect(g.generate("late", [1, 2], greedy())), 5)
        return items, later

    async def collect(stream):
        return [item async for item in stream]

    items, later = asyncio.run(scenario())
    for its in items:  # tokens, then a 503 error item ends each open stream (no hang)
        assert isinstance(its[0], RequestOutput) and len(its) > 1
        assert its[-1]["status"] == 503 and "injected" in its[-1]["error"]
    assert later == [{"error": later[0]["error"], "status": 503}]  # refused at once: not run here
    health = asyncio.run(g.stats())
    assert health["healthy"] is False
    with pytest.raises(GroupUnavailable):
        asyncio.run(g.check_health())
    with pytest.raises(GroupUnavailable):
        asyncio.run(g.add_adapter("x", str(demo / "adapters" / "demo-r4-attn")))
