"""The step diff of the TP control channel (deployments/tp_messages.py), without Ray: every step of an
engine that preempts, finishes and aborts requests, encoded by the driver's StepEncoder, pickled as it is
broadcast, and decoded by a rank's StepDecoder, is the SchedulerOutput the engine scheduled; known requests
travel as deltas, and a decoder that missed a step notices."""

from __future__ import annotations

import pickle

import pytest

from app import SamplingParams
from app.scheduler import ScheduledSeq
from deployments.tp_messages import SeqDelta, StepDecoder, StepEncoder, StepMessage
from tests.models import llm_with_kv_room


@pytest.fixture(scope="module")
def steps(demo):
    """Every SchedulerOutput of a run with preemptions (a small pool), early finishes (stop tokens) and an
    abort, across three demo adapters and the base model."""
    names = ["demo-r1-qv", "demo-r4-attn", "demo-r8-mlp", None]
    adapters = {n: str(demo / "adapters" / n) for n in names if n}
    small = llm_with_kv_room(demo, adapters, 24)  # KV room for a few requests
    e = small.engine
    outs = []
    execute = e.executor.execute
    e.executor.execute = lambda out: (outs.append(out), execute(out))[1]
    rids = [
        e.add_request(
            [(5 * i + j) % 300 + 3 for j in range(4 + 9 * i)],
            SamplingParams(max_tokens=12 + 3 * i, temperature=0.0, ignore_eos=i % 3 != 0, seed=i),
            names[i % len(names)],
        )
        for i in range(10)
    ]
    for k in range(200):
        if not e.has_unfinished():
            break
        e.step()
        if k == 3:
            e.abort(rids[1])
    assert e.scheduler.num_preemptions > 0, "the pool was meant to preempt"
    return outs


def test_decoded_steps_equal_the_scheduled_ones(steps):
    enc, dec = StepEncoder(), StepDecoder()
    whole = diff = deltas = 0
    for out in steps:
        msg = pickle.loads(pickle.dumps(StepMessage(enc.encode(out)), protocol=pickle.HIGHEST_PROTOCOL))
        deltas += sum(isinstance(s, SeqDelta) for s in msg.step.seqs)
        assert dec.decode(msg.step) == out
        whole += len(pickle.dumps(StepMessage(out)))  # the message before diffs: the output whole
        diff += len(pickle.dumps(msg))
    assert deltas > len(steps)  # most sequences of most steps are known requests
    assert diff < whole / 2
    assert enc.known.keys() == dec.known.keys()  # the same requests known on both sides
    assert len(enc.known) < 10  # finished, aborted and preempted requests are forgotten


def test_a_rank_that_missed_a_step_notices(steps):
    enc, dec = StepEncoder(), StepDecoder()
    decode_steps = [
        i for i, o in enumerate(steps) if i and o.seqs and all(len(s.token_ids) == 1 for s in o.seqs)
    ]  # fmt: skip
    skip = next(i for i in decode_steps if any(len(s.kv_pages) > len(p.kv_pages) for s, p in _pairs(steps, i)))
    with pytest.raises((RuntimeError, KeyError)):
        for i, out in enumerate(steps):
            d = enc.encode(out)
            if i != skip:
                assert dec.decode(d) == out


def _pairs(steps, i: int) -> list[tuple[ScheduledSeq, ScheduledSeq]]:
    """(this step's seq, the previous step's seq) of the requests scheduled in both steps i-1 and i."""
    prev = {s.request_id: s for s in steps[i - 1].seqs}
    return [(s, prev[s.request_id]) for s in steps[i].seqs if s.request_id in prev]
