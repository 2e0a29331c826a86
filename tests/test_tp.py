"""Tensor parallelism over Ray on the CPU: `Engine(cfg, executor=TPExecutor(cfg, 2))` (two rank actors,
gloo TP group, gloo control group) gives exactly the greedy tokens of the single-process engine and of
transformers + PEFT, in float32, for a mixed batch of adapters of several ranks (odd ones included:
the column-parallel A/B are padded to a multiple of the TP size) and base-model requests; with a pool
small enough to preempt; with an adapter added and removed at run time."""

from __future__ import annotations

import random
import re

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray  # every test here runs on a Ray session (tests/conftest.py)

from app.lora.adapter import AdapterError  # noqa: E402
from app.request import SamplingParams  # noqa: E402
from deployments.tp import TPExecutor  # noqa: E402
from tests.models import HFReference  # noqa: E402
from tests.tp_common import AT_START, LATE, check, config, generate, make_engine, random_requests  # noqa: E402


@pytest.fixture(scope="module")
def ray_cpu():
    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tp_case):
    model, adapters = tp_case
    ref = HFReference(model, adapters)
    reqs = random_requests(model, 12, [1, 3, 9, 17, 33])  # every adapter, 2 base-model requests
    expected = [ref.greedy(ids, a, m) for ids, a, m in reqs]
    return model, adapters, ref, reqs, expected


@pytest.fixture(scope="module")
def tp_engine(ray_cpu, setup):
    model, adapters, *_ = setup
    # pool sized from memory (num_pages None): the ranks agree on the smaller of their sizes; warmup (auto:
    # CUDA only) runs here through the rank actors: the tests below check nothing was left behind
    cfg = config(model, pool={"page_size": 4, "cpu_pool_bytes": 8 << 20}, warmup="on")
    engine = make_engine(cfg, adapters, AT_START, tp=2)
    assert engine.warmup_adapter_graphs() > 0  # as a group does at start: the startup adapters' LoRA group sets
    yield engine
    engine.executor.shutdown()


def test_tp2_equals_tp1_and_peft(setup, tp_engine):
    model, adapters, ref, reqs, expected = setup
    assert tp_engine.warmup_s is not None and tp_engine.steps == 0 and tp_engine.pool_stats().kv == 0
    assert not any(name.startswith("sloray/") for name in tp_engine.executor._adapter_refs)
    got = generate(tp_engine, reqs)
    check(got, reqs, expected, "TP=2 vs transformers+PEFT")
    tp1 = make_engine(tp_engine.cfg.model_copy(update={"warmup": "off"}), adapters, AT_START)
    check(generate(tp1, reqs), reqs, got, "TP=1 vs TP=2")
    # logprobs (and prompt logprobs) travel back from tp-rank 0 packed after the tokens: TP=2's equal TP=1's
    two, one = (generate(e, reqs[:6], outputs=True, logprobs=3, prompt_logprobs=2) for e in (tp_engine, tp1))
    for a, b in zip(two, one):
        assert a.token_ids == b.token_ids and len(a.logprobs) == len(a.token_ids)
        assert len(a.prompt_logprobs) == len(b.prompt_logprobs) == len(a.prompt_token_ids)
        for x, y in zip(a.logprobs + a.prompt_logprobs[1:], b.logprobs + b.prompt_logprobs[1:]):
            assert abs(x.logprob - y.logprob) < 1e-4 and [t for t, _ in x.top] == [t for t, _ in y.top]
            assert x.rank == y.rank
    # prompt only (max_tokens 0), as lm-eval's loglikelihood asks: the same values as TP=1
    ids = [r[0] for r in reqs[:6]]
    params = SamplingParams(max_tokens=0, prompt_logprobs=1)
    two, one = ([e.add_request(p, params, a) for p, (_, a, _) in zip(ids, reqs)] for e in (tp_engine, tp1))
    outs = []
    for e, rids in ((tp_engine, two), (tp1, one)):
        done = {o.request_id: o for _ in iter(e.has_unfinished, False) for o in e.step() if o.finished}
        outs.append([done[r] for r in rids])
    for a, b in zip(*outs):
        assert a.token_ids == b.token_ids == [] and a.finish_reason == "length"
        assert [x.rank for x in a.prompt_logprobs[1:]] == [y.rank for y in b.prompt_logprobs[1:]]
        assert all(abs(x.logprob - y.logprob) < 1e-4 for x, y in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:]))
    # structured output: only tp-rank 0 samples, with its grammar matchers; the same tokens as TP=1
    from app.structured import StructuredOutputs

    so = StructuredOutputs(regex=r"[a-c][0-9]")  # ASCII: with EOS 3 tokens at most, within max_tokens (a Unicode
    # digit, which \d allows, can take several byte tokens)
    two, one = (generate(e, reqs[:4], outputs=True, structured=so) for e in (tp_engine, tp1))
    assert [o.token_ids for o in two] == [o.token_ids for o in one]
    assert all(re.fullmatch(so.regex, o.text) and o.finish_reason == "stop" for o in two), [o.text for o in two]
    assert tp_engine.executor.num_pages == tp1.executor.num_pages * 2  # half the KV heads per rank
    assert tp_engine.is_idle_clean()
    tp_engine.pool.check()
    # the requests above ran more than once: later runs reused cached prefix pages (the structured ones too,
    # whose grammars read the tokens before their start, sent across the step diff), with TP=1's tokens
    assert tp_engine.scheduler.prefix_hit_tokens > 0 and tp1.scheduler.prefix_hit_tokens > 0
    c = tp_engine.executor.control
    assert c.steps > 0 and c.execute_s > 0 and c.broadcast_s > 0
    s = c.summary()
    assert set(s) >= {"broadcast_us", "reply_wait_us", "execute_us", "overhead_us"}


def test_adapter_added_and_removed_at_run_time(setup, tp_engine):
    model, adapters, ref, reqs, expected = setup
    ex = tp_engine.executor
    info = tp_engine.add_adapter(LATE, adapters[LATE])
    assert LATE in ex._adapter_refs and len(ex._adapter_refs[LATE]) == 2  # one shard per rank
    late = [(ids, LATE, m) for ids, _, m in reqs[:3]] + reqs[3:6]
    got = generate(tp_engine, late)
    check(got, late, [ref.greedy(ids, a, m) for ids, a, m in late], "run-time adapter, TP=2")
    assert info.num_pages > 0
    tp_engine.remove_adapter(LATE)
    assert LATE not in ex._adapter_refs and LATE not in tp_engine.adapters
    with pytest.raises(KeyError):
        tp_engine.add_request([5, 6, 7], SamplingParams(max_tokens=2), LATE)
    with pytest.raises(AdapterError):
        tp_engine.add_adapter("a-r1-q", adapters["a-r1-q"])  # already loaded: refused, nothing changes
    # the others still serve, and the name can come back
    check(generate(tp_engine, reqs[:5]), reqs[:5], expected[:5], "after removal, TP=2")
    tp_engine.add_adapter(LATE, adapters[LATE])
    check(generate(tp_engine, late[:2]), late[:2], [ref.greedy(ids, a, m) for ids, a, m in late[:2]], "re-added")
    tp_engine.remove_adapter(LATE)


@pytest.mark.parametrize("tp_case", ["gqa", "phi3"], indirect=True)
def test_tp2_small_pool_preempts(ray_cpu, setup):
    """A pool with room for the prompts but not the outputs: requests are preempted and recomputed, and
    the adapters are evicted and reloaded; tokens still equal TP=1 and transformers+PEFT. The control
    messages are made larger than the first broadcast, so they take the two-part path. Two of the five
    families (preemption and reloading go through the executor alike; phi3's fused weights are sharded by
    part): test_tp2_equals_tp1_and_peft covers every family."""
    model, adapters, ref, reqs, expected = setup
    rng = random.Random(11)
    small = ["a-r1-q", "a-r3-all", "a-r4-down", None]
    extra = [([rng.randrange(3, 200) for _ in range(17)], small[i % 4], 10) for i in range(12)]
    want = [ref.greedy(ids, a, m) for ids, a, m in extra]
    names = [n for n in small if n]
    probe = make_engine(config(model, pool={"page_size": 4, "num_pages": 4096}), adapters, names, tp=2)
    sizes = {n: probe.adapters[n].num_pages for n in names}
    probe.executor.shutdown()
    pages = 12 * 5 + sum(sizes.values())  # 17-token prompts: 5 pages of 4 each
    cfg = config(model, pool={"page_size": 4, "num_pages": pages},
                 scheduler={"max_num_batched_tokens": 512, "admission_headroom_pages": 0})  # fmt: skip
    engine = make_engine(cfg, adapters, names, tp=2, control_head_bytes=256)
    try:
        got = generate(engine, extra)
        check(got, extra, want, "TP=2 small pool vs transformers+PEFT")
        assert engine.scheduler.num_preemptions > 0, "the pool was meant to be too small to avoid preemption"
        assert engine.executor.control.split_messages > 0
        assert engine.is_idle_clean()
        engine.pool.check()
    finally:
        engine.executor.shutdown()
    check(generate(make_engine(cfg, adapters, names), extra), extra, got, "TP=1 vs TP=2, small pool")


def test_rank_error_surfaces(ray_cpu, tmp_path):
    """An exception in a rank's step (here: an adapter no rank knows) becomes a RuntimeError in the
    driver instead of a hang; shutdown still cleans up. (The executor's error path, the same for every
    model family: one model.)"""
    from app.scheduler import ScheduledSeq, SchedulerOutput
    from tests.models import make_model

    model = make_model(tmp_path, "gqa")
    ex = TPExecutor(config(model, pool={"page_size": 4, "num_pages": 64}), 2)
    try:
        seq = ScheduledSeq(
            request_id="x",
            token_ids=[5, 6],
            start_pos=0,
            kv_pages=[0],
            adapter="missing",
            sample=True,
            params=SamplingParams(max_tokens=1, temperature=0.0),
        )
        # both ranks raise: tp-rank 0's report, or (when the monitor has seen the other rank's loop end and
        # stopped the group first) the closed control channel
        with pytest.raises(RuntimeError, match="tensor-parallel (step failed on rank 0|rank is gone)"):
            ex.execute(SchedulerOutput(seqs=[seq]))
        with pytest.raises(RuntimeError, match="not running"):
            ex.execute(SchedulerOutput(seqs=[seq]))
    finally:
        ex.shutdown()
