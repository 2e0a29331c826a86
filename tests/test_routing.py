"""Routing (adapter clustering with bounded load) and admission control: pure logic, no Ray."""

from __future__ import annotations

from collections import Counter

import pytest

from deployments.routing import GroupState, Router, rendezvous_order

GROUPS = [f"g{i}" for i in range(4)]


def test_rendezvous_order_is_stable_and_spreads_adapters():
    assert rendezvous_order("a", GROUPS) == rendezvous_order("a", list(reversed(GROUPS)))
    firsts = Counter(rendezvous_order(f"adapter-{i}", GROUPS)[0] for i in range(400))
    assert set(firsts) == set(GROUPS)
    assert min(firsts.values()) > 60  # ~100 each
    # Removing a group only moves the adapters that were affine to it.
    moved = sum(
        rendezvous_order(f"adapter-{i}", GROUPS)[0] != rendezvous_order(f"adapter-{i}", GROUPS[:3])[0]
        for i in range(400)
    )
    assert moved == firsts["g3"]


def test_adapter_goes_to_its_affine_group_while_load_is_low():
    r = Router(GROUPS)
    for i in range(50):
        name = f"adapter-{i}"
        assert r.choose(name) == rendezvous_order(name, GROUPS)[0]


def test_resident_group_wins_over_hash_order():
    r = Router(GROUPS)
    name = "adapter-7"
    last = rendezvous_order(name, GROUPS)[-1]
    r.update(GroupState(name=last, resident=frozenset({name})))
    assert r.choose(name) == last


def test_bounded_load_moves_to_next_group_in_hash_order():
    r = Router(GROUPS, eps=0.25)
    name = "hot"
    order = rendezvous_order(name, GROUPS)
    r.update(GroupState(name=order[0], running=20))
    r.update(GroupState(name=order[1], running=1))
    # mean after one more = 22/4 = 5.5, bound 6.9: order[0] (20) is over, order[1] (1) is not.
    assert r.choose(name) == order[1]
    # Many requests of one adapter spread out, each group stays within the bound (+1 for rounding).
    r = Router(GROUPS, eps=0.25)
    for _ in range(100):
        g = r.choose(name)
        r.sent(g, prompt_tokens=10)
    loads = [r.load(g) for g in GROUPS]
    assert sum(loads) == 100 and max(loads) <= 1.25 * 25 + 1
    assert r.load(order[0]) == max(loads)  # the affine group still takes the most


def test_base_model_requests_go_to_least_loaded_group():
    r = Router(GROUPS)
    for g in GROUPS:
        r.update(GroupState(name=g, running=5))
    r.update(GroupState(name="g2", running=1))
    assert r.choose(None) == "g2"


def test_unhealthy_group_is_avoided():
    r = Router(GROUPS)
    name = "x"
    first = rendezvous_order(name, GROUPS)[0]
    r.mark_unhealthy(first)
    assert r.choose(name) != first


def test_poll_resets_local_increments():
    r = Router(["a", "b"])
    r.sent("a", 100, n=3)
    assert r.load("a") == 3 and r.pending_tokens["a"] == 300
    r.done("a", 100)
    assert r.load("a") == 2 and r.pending_tokens["a"] == 200
    r.update(GroupState(name="a", waiting=2))
    assert r.load("a") == 2 and r.pending_tokens["a"] == 0
    r.done("a", 100, n=2)  # finished after the poll: nothing below zero
    assert r.load("a") == 2 and r.pending_tokens["a"] == 0


def test_one_request_in_flight_does_not_move_an_adapter():
    r = Router(["a", "b"])
    first = r.choose("x")
    r.sent(first, 10)
    assert r.choose("x") == first  # 2 <= ceil(1.25 * 2 / 2)
    r.sent(first, 10)
    r.sent(first, 10)
    assert r.choose("x") != first  # 4 > ceil(1.25 * 4 / 2)


def test_predicted_ttft_from_queue_and_rate():
    r = Router(["a"], ttft_slo_s=1.0)
    r.update(GroupState(name="a", queued_prefill_tokens=900, prefill_tps=1000.0, step_time_s=0.05))
    assert r.predict_ttft("a", 100) == pytest.approx(1000 / 1000 + 0.05)
    d = r.admit("a", 100)
    assert not d.admitted and d.retry_after_s == 1
    assert r.admit("a", 10).admitted  # 0.91 + 0.05 < 1
    r.sent("a", 500)  # local in-flight counts before the next poll
    assert r.predict_ttft("a", 10) == pytest.approx(1410 / 1000 + 0.05)
    assert not r.admit("a", 10).admitted


def test_full_batch_adds_wait_for_a_slot_and_retry_after_grows():
    r = Router(["a"], ttft_slo_s=0.5)
    r.update(GroupState(name="a", running=4, waiting=6, max_num_seqs=4, prefill_tps=1e6, step_time_s=0.1))
    t = r.predict_ttft("a", 1)
    assert t == pytest.approx(1e-6 + 0.1 + 7 * 0.1)
    d = r.admit("a", 1)
    assert not d.admitted and d.retry_after_s == 1
    r.update(GroupState(name="a", queued_prefill_tokens=10_000, prefill_tps=1000.0, step_time_s=0.1))
    assert r.admit("a", 0).retry_after_s == 10  # ceil(10.1 - 0.5)


def test_no_slo_admits_everything_and_tiny_slo_refuses():
    r = Router(["a"])
    assert r.admit("a", 10**6).admitted
    assert not Router(["a"], ttft_slo_s=1e-6).admit("a", 1).admitted  # prior step time alone exceeds it


def test_from_stats():
    s = GroupState.from_stats(
        {
            "name": "g",
            "queue": {
                "waiting": 1,
                "running": 2,
                "queued_prefill_tokens": 3,
                "step_time_s": 0.1,
                "prefill_tps": 5.0,
                "max_num_seqs": 8,
            },
            "resident_adapters": ["x"],
        }
    )
    assert (s.waiting, s.running, s.queued_prefill_tokens, s.max_num_seqs, s.resident) == (1, 2, 3, 8, {"x"})
