"""The scheduler (app/scheduler.py) through the engine: continuous batching of prefill, decode and base
requests, the adapters-per-batch limit, early abort, and the token slices a step feeds."""

from __future__ import annotations

from app import LLM, SamplingParams
from app.demo import DEMO_ADAPTERS
from tests.models import greedy


def test_continuous_batching_mixes_prefill_decode_and_base(llm):
    e = llm.engine
    a = e.add_request([3] * 5, greedy(6), adapter="demo-r1-qv")
    e.step()  # a: prefill
    b = e.add_request([4] * 9, greedy(6))  # base model joins while a decodes
    out = e.scheduler.schedule()
    kinds = {(s.request_id, len(s.token_ids), s.adapter) for s in out.seqs}
    assert kinds == {(a, 1, "demo-r1-qv"), (b, 9, None)}
    e.scheduler.update(out, e.requests, e.executor.execute(out))
    while e.has_unfinished():
        e.step()
    assert e.is_idle_clean()


def test_max_loras_per_batch(demo):
    llm = LLM(
        model=str(demo / "model"),
        adapters=str(demo / "adapters"),
        device="cpu",
        dtype="float32",
        lora={"max_loras_per_batch": 2},
    )
    e = llm.engine
    for name in list(DEMO_ADAPTERS)[:4]:
        e.add_request([5, 6], greedy(3), adapter=name)
    seen = 0
    while e.has_unfinished():
        e.step()
        assert e.last_step_adapters <= 2
        seen = max(seen, e.last_step_adapters)
    assert seen == 2
    # the queued requests' adapters were prefetched into free pages before their admission
    assert e.scheduler.num_prefetches >= 2 and e.pool.loads == 4


def test_early_abort_drops_requests_past_their_deadline(demo):
    llm = LLM(
        model=str(demo / "model"),
        device="cpu",
        dtype="float32",
        scheduler={"early_abort_ttft_slo_s": 5.0, "max_num_seqs": 1},
    )
    e = llm.engine
    import time as _time

    late = e.add_request([5, 6], greedy(3), arrival_time=_time.monotonic() - 10)
    ok = e.add_request([5, 6], greedy(3))
    outs = e.step()
    aborted = [o for o in outs if o.request_id == late]
    assert aborted and aborted[0].finished and aborted[0].finish_reason == "abort" and not aborted[0].token_ids
    while e.has_unfinished():
        outs += e.step()
    assert [o for o in outs if o.request_id == ok][-1].finish_reason == "length"
    assert e.scheduler.num_early_aborts == 1 and e.is_idle_clean()


def test_token_slice_matches_all_token_ids():
    from app.request import Request

    r = Request("x", [1, 2, 3, 4], None, SamplingParams())
    r.output_token_ids = [5, 6, 7]
    for start in range(8):
        for n in range(8):
            assert r.token_slice(start, n) == r.all_token_ids[start : start + n]
