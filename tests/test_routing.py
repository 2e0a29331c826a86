"""Routing (adapter clustering with bounded load) and admission control: pure logic, no Ray."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from deployments.routing import (
    MAX_REQUEST_START_AGE_S,
    START_EXPIRY_S,
    GroupState,
    Router,
    rendezvous_order,
    request_start_age_s,
)

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


def test_a_group_is_idle_without_work_polled_or_sent():
    """The ingress polls an idle group less often: idle = healthy, nothing running or waiting at the last poll,
    nothing sent since."""
    r = Router(["a", "b"])
    assert r.idle("a") and r.idle("b")
    r.sent("a", 10)  # sent since the last poll: busy until a poll shows it finished
    assert not r.idle("a") and r.idle("b")
    r.update(GroupState(name="a", running=1))
    assert not r.idle("a")
    r.done("a", 10)
    assert not r.idle("a")  # the last poll still shows it running
    r.update(GroupState(name="a"))
    assert r.idle("a")
    r.update(GroupState(name="b", waiting=1))
    assert not r.idle("b")
    r.update(GroupState(name="b"))
    r.mark_unhealthy("b")  # a group that is down is polled at the fast rate, to see it come back
    assert not r.idle("b")


def test_one_request_in_flight_does_not_move_an_adapter():
    r = Router(["a", "b"])
    first = r.choose("x")
    r.sent(first, 10)
    assert r.choose("x") == first  # 2 <= ceil(1.25 * 2 / 2)
    r.sent(first, 10)
    r.sent(first, 10)
    assert r.choose("x") != first  # 4 > ceil(1.25 * 4 / 2)


def test_predicted_ttft_from_queue_and_rate():
    r = Router(["a"], admission_ttft_slo_s=1.0)
    r.update(GroupState(name="a", queued_prefill_tokens=900, prefill_tps=1000.0, step_time_s=0.05))
    assert r.predict_ttft("a", 100) == pytest.approx(1000 / 1000 + 0.05)
    d = r.admit("a", 100)
    assert not d.admitted and d.retry_after_s == 1
    assert r.admit("a", 10).admitted  # 0.91 + 0.05 < 1
    r.sent("a", 500)  # local in-flight counts before the next poll
    assert r.predict_ttft("a", 10) == pytest.approx(1410 / 1000 + 0.05)
    assert not r.admit("a", 10).admitted


def test_full_batch_waits_for_the_slots_that_free_first_and_retry_after_grows():
    r = Router(["a"], admission_ttft_slo_s=0.5)
    state = GroupState(
        name="a", running=4, waiting=2, max_num_seqs=4, prefill_tps=1e6, step_time_s=0.1,
        running_remaining=(3, 5, 7, 9), waiting_lengths=((10, 4), (10, 6)),
    )  # fmt: skip
    r.update(state)
    # slots free at steps 3, 5, 7, 9; the first waiting request takes 3 -> 7, the second 5 -> 11: ours at 7
    assert r.predict_ttft("a", 1) == pytest.approx(0.7 + 1e-6 + 0.1)
    d = r.admit("a", 1)
    assert not d.admitted and d.retry_after_s == 1
    r.sent("a", 1)  # one more request ahead of ours (the queue's mean output length, 6): slot 7 -> 13
    assert r.predict_ttft("a", 1) == pytest.approx(0.7 + 1e-6 + 0.1)
    r.sent("a", 1)  # and another: the earliest slot is now the one freeing at 9
    assert r.predict_ttft("a", 1) == pytest.approx(0.9 + 1e-6 + 0.1)
    r.update(GroupState(name="a", queued_prefill_tokens=10_000, prefill_tps=1000.0, step_time_s=0.1))
    assert r.admit("a", 0).retry_after_s == 10  # ceil(10.1 - 0.5)


def sim_state(running: dict[int, int], waiting: list[int], arrivals: list[tuple[float, int]], slots: int,
              step: float) -> GroupState:  # fmt: skip
    """What a poll of a simulated group reports: its running requests' tokens left, its FCFS queue."""
    return GroupState(
        name="a", running=len(running), waiting=len(waiting), max_num_seqs=slots, step_time_s=step,
        prefill_tps=1e9, running_remaining=tuple(running.values()),
        waiting_lengths=tuple((1, arrivals[w][1]) for w in waiting),
    )  # fmt: skip


def sim_step(running: dict[int, int], waiting: list[int], arrivals: list[tuple[float, int]], slots: int,
             first_token: dict[int, float], end: float) -> float:  # fmt: skip
    """One step of a simulated group, ending at `end` (returned): the waiting requests take free slots in FCFS
    order (a request's first token comes at the end of its admission step: prefill fits one step); every
    running request makes one token; a request frees its slot after its last token."""
    while waiting and len(running) < slots:
        running[waiting.pop(0)] = -1
    for rid in list(running):
        if running[rid] == -1:
            first_token[rid] = end
            running[rid] = arrivals[rid][1]
        running[rid] -= 1
        if running[rid] <= 0:
            del running[rid]
    return end


def simulate_fcfs(arrivals: list[tuple[float, int]], slots: int, step: float, router: Router):
    """A group as the engine runs it, on a fake clock: steps of `step` seconds; at a step's start the waiting
    requests take free slots in FCFS order; every running request makes one token per step (the first at the
    end of its admission step: prefill fits one step); a request frees its slot after its last token. Before
    each arrival the router gets the group's state, as the ingress would from a poll, and predicts the TTFT.
    Returns (predicted, actual) TTFT per request."""
    running: dict[int, int] = {}  # request -> tokens left
    waiting: list[int] = []
    first_token: dict[int, float] = {}
    predicted: dict[int, float] = {}
    i, t = 0, 0.0
    while i < len(arrivals) or running or waiting:
        while i < len(arrivals) and arrivals[i][0] <= t:  # arrivals during the last step, seen now
            router.update(sim_state(running, waiting, arrivals, slots, step))
            predicted[i] = router.predict_ttft("a", 1) + (t - arrivals[i][0])
            waiting.append(i)
            i += 1
        t = sim_step(running, waiting, arrivals, slots, first_token, t + step)
        if not running and not waiting and i < len(arrivals):
            t = max(t, arrivals[i][0])
    return [(predicted[k], first_token[k] - arrivals[k][0]) for k in range(len(arrivals))]


def test_predicted_ttft_matches_a_simulated_fcfs_group_under_a_flood():
    """Bursts of requests with known output lengths into a group of 8 slots (the finding: a predictor that
    assumed a slot frees every step admitted requests that then waited 10x the SLO). Every prediction is
    within one step of the TTFT the request really gets, queued behind running and waiting requests."""
    rng = random.Random(0)
    arrivals, t = [], 0.0
    for _ in range(300):
        t += rng.expovariate(20.0)  # ~20 requests/s into ~8 slots x 10 tokens/s / 40 tokens: overloaded
        arrivals.append((t, rng.randrange(8, 80)))
    step = 0.1
    pairs = simulate_fcfs(arrivals, slots=8, step=step, router=Router(["a"]))
    for predicted, actual in pairs:
        assert abs(predicted - actual) <= step + 1e-9, (predicted, actual)
    assert max(a for _, a in pairs) > 20  # the queue really grew: waits of minutes, not steps


def test_admitted_requests_meet_the_slo_in_a_simulated_flood():
    """Admission on the predictor: of a flood far above capacity, the admitted requests' TTFTs stay within
    the SLO (plus the one step of arrival jitter), and requests are refused rather than queued past it."""
    rng = random.Random(1)
    slo, step = 2.0, 0.1
    router = Router(["a"], admission_ttft_slo_s=slo)
    arrivals, t = [], 0.0
    for _ in range(400):
        t += rng.expovariate(30.0)
        arrivals.append((t, rng.randrange(8, 80)))
    admitted = []
    # a first pass decides admission with the state each request would see; refused requests never enter
    kept: list[tuple[float, int]] = []
    for a in arrivals:
        trial = simulate_fcfs(kept + [a], slots=8, step=step, router=router)
        if trial[-1][0] <= slo:
            kept.append(a)
            admitted.append(trial[-1][1])
    # capacity ~ 8 slots / (44 tokens x 0.1 s) = 1.8 req/s over ~13 s: about 25 can be served in time
    assert 20 <= len(kept) <= len(arrivals) // 4
    assert max(admitted) <= slo + step + 1e-9


def flood_through_replicas(routers: list[Router], arrivals: list[tuple[float, int]], slots: int, step: float,
                           poll_s: float) -> list[float]:  # fmt: skip
    """A group on a fake clock (as `simulate_fcfs`) behind several ingress replicas: request k goes to
    routers[k % len(routers)] (a load balancer spreading evenly), which decides its admission (and, if
    admitted, counts it as sent); every router sees the group's state only at its polls, every `poll_s`.
    Returns the admitted requests' TTFTs."""
    running: dict[int, int] = {}
    waiting: list[int] = []
    first: dict[int, float] = {}
    admitted: list[int] = []
    i, t, next_poll = 0, 0.0, 0.0

    def poll():
        state = sim_state(running, waiting, arrivals, slots, step)
        for r in routers:
            r.update(state)

    while i < len(arrivals) or running or waiting:
        if t >= next_poll:
            poll()
            next_poll += poll_s
        while i < len(arrivals) and arrivals[i][0] <= t:
            router = routers[i % len(routers)]
            if router.admit("a", 1, elapsed_s=t - arrivals[i][0]).admitted:
                router.sent("a", 1)
                waiting.append(i)
                admitted.append(i)
            i += 1
        t = sim_step(running, waiting, arrivals, slots, first, t + step)
    return [first[k] - arrivals[k][0] for k in admitted]


def test_a_flood_split_over_ingress_replicas_is_not_admitted_once_per_replica():
    """Issue 11's flood against the default config (two ingress replicas, 64 seats): 295 requests within 1 s,
    outputs of 16-64 tokens, polls every 0.25 s, 50 ms steps. Between polls each replica sees only its own
    requests, so each admits as if the queue were half as long and the admitted requests' p90 misses the 1 s
    SLO (here 1.29 s; on the H200, run 27 of session-2026-12-04c, 1.5-2.6 s, where more than this went wrong).
    Counting each peer replica's requests as many as its own keeps it (0.94 s, as one replica: 0.90 s)."""
    rng = random.Random(2)
    arrivals = sorted((rng.uniform(0, 1), rng.randrange(16, 64)) for _ in range(295))
    slo, step = 1.0, 0.05  # ~89 requests can start within 1 s

    def p90(peers: int, replicas: int = 2) -> float:
        routers = [Router(["a"], admission_ttft_slo_s=slo, peers=peers) for _ in range(replicas)]
        ttfts = sorted(flood_through_replicas(routers, arrivals, slots=64, step=step, poll_s=0.25))
        assert len(ttfts) >= 64  # the seats are used
        return ttfts[int(0.9 * (len(ttfts) - 1))]

    assert p90(peers=1) > slo + 0.1  # each replica blind to the other's share: over-admitted
    assert p90(peers=2) <= slo + step
    assert p90(peers=1, replicas=1) <= slo + step  # one replica sees all it sends


def test_no_slo_admits_everything_and_tiny_slo_refuses():
    r = Router(["a"])
    assert r.admit("a", 10**6).admitted
    assert not Router(["a"], admission_ttft_slo_s=1e-6).admit("a", 1).admitted  # prior step time alone exceeds it


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


def test_step_cost_fits_fixed_plus_per_token_and_drives_the_prediction():
    from deployments.routing import LinearFit

    c = LinearFit()
    assert c.params() is None
    for tokens in (64, 2048, 64, 1000, 64, 64, 2048):
        c.observe(tokens, 0.08 + 0.0002 * tokens)
    fixed, per_token = c.params()
    assert fixed == pytest.approx(0.08) and per_token == pytest.approx(0.0002)
    d = LinearFit()
    for _ in range(5):
        d.observe(64, 0.1)  # decode steps of one batch size: the mean alone
    assert d.params() == pytest.approx((0.1, 0.0))
    # a full group: slot waits are costed at a full batch's step (64 decodes: 0.0928 s), prefill per token
    r = Router(["a"])
    r.update(GroupState(name="a", running=64, max_num_seqs=64, running_remaining=(10,) * 64,
                        step_time_s=0.05, step_cost=(fixed, per_token)))  # fmt: skip
    step = 0.08 + 0.0002 * 64
    assert r.predict_ttft("a", 100) == pytest.approx(10 * step + 100 * 0.0002 + step)


def test_unmeasured_group_admits_only_what_starts_at_once():
    r = Router(["a"], admission_ttft_slo_s=5.0)
    r.update(GroupState(name="a", running=2, max_num_seqs=2, running_remaining=(3, 4)))
    d = r.admit("a", 10)  # both slots busy and no step measured yet: the wait is unknown
    assert not d.admitted and d.retry_after_s == 5
    r.update(GroupState(name="a", running=1, max_num_seqs=2, running_remaining=(3,)))
    assert r.admit("a", 10).admitted


def test_calibration_raises_underestimates_and_counts_time_already_spent():
    r = Router(["a"], admission_ttft_slo_s=1.0)
    r.update(GroupState(name="a", queued_prefill_tokens=100, prefill_tps=1000.0, step_time_s=0.05))
    raw = r.predict_ttft("a", 100)  # 0.25 s
    assert r.admit("a", 100).admitted and r.admit("a", 100, elapsed_s=0.8).admitted is False
    for pred in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):  # requests really get 3x + 0.1 s of what was predicted
        r.observe_ttft("a", pred, 3 * pred + 0.1)
    assert r.calibrated("a", raw) == pytest.approx(3 * raw + 0.1)
    d = r.admit("a", 100)  # 3 x 0.25 + 0.1 = 0.85 s: within the SLO, but not after 0.2 s already spent
    assert d.admitted and d.predicted_ttft_s == pytest.approx(0.85) and d.model_ttft_s == pytest.approx(raw)
    assert not r.admit("a", 100, elapsed_s=0.2).admitted
    for pred in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7] * 8:  # overestimates are not corrected downwards
        r.observe_ttft("a", pred, pred / 2)
    assert r.calibrated("a", raw) == raw


def test_request_start_stamp_of_a_load_balancer():
    now = 1_800_000_000.0
    for stamp in (
        f"t={now - 2.5:.3f}",
        f"{now - 2.5:.3f}",
        f"t={int((now - 2.5) * 1e3)}",
        f"t={int((now - 2.5) * 1e6)}",
    ):
        assert request_start_age_s(stamp, now) == pytest.approx(2.5, abs=1e-3), stamp
    for bad in (None, "", "t=", "t=abc", "t=nan", "t=-5", "t=inf", f"t={now + 30}"):
        assert request_start_age_s(bad, now) == 0.0, bad
    assert request_start_age_s("t=1", now) == MAX_REQUEST_START_AGE_S  # a clock problem, not a queue
    # the age counts against the SLO: a request that queued 0.99 s in front of the ingress is refused
    r = Router(["g"], admission_ttft_slo_s=1.0)
    r.update(GroupState(name="g", step_time_s=0.02, prefill_tps=10_000, max_num_seqs=8))
    assert r.admit("g", 100).admitted
    assert not r.admit("g", 100, elapsed_s=request_start_age_s(f"t={now - 0.99}", now)).admitted


def test_a_calibration_learnt_in_an_overload_does_not_refuse_forever():
    """The GPU flood of 2026-12-02: after a flood had taught the calibration TTFTs far above the model's,
    every request of the next one was refused (nothing admitted, so nothing corrected it)."""
    now = [100.0]
    r = Router(["a"], admission_ttft_slo_s=1.0, clock=lambda: now[0])
    busy = GroupState(name="a", running=4, max_num_seqs=8, running_remaining=(5,) * 4, step_time_s=0.02)
    r.update(busy)
    for pred in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3):  # the overload: 1.5 s more than predicted
        r.observe_ttft("a", pred, pred + 1.5)
    assert not r.admit("a", 50).admitted  # the correction holds while first tokens come
    r.update(GroupState(name="a", max_num_seqs=8, step_time_s=0.02))  # an idle group, but the time may go to
    assert not r.admit("a", 50).admitted  # the HTTP path in front of it (the GPU flood of 2026-12-02 run B)
    r.update(busy)
    now[0] += 4.0
    assert not r.admit("a", 50).admitted
    now[0] += 2.0  # no first token for more than CALIBRATION_TTL_S: the correction is dropped
    assert r.admit("a", 50).admitted
    r.update(busy)
    assert r.admit("a", 50).admitted  # and it stays dropped until new first tokens come


def flood_through_a_serving_path(
    router: Router, now: list[float], start: float, n: int, cost: float, latency: float
) -> list:
    """`n` requests arriving evenly over one second from `start` at an idle, fast group behind a serving path
    (the Ray calls and event loops in front of the engine, which the model does not see) that takes
    `latency` seconds, then hands out first tokens one at a time, `cost` seconds each. Drives `router` on
    the fake clock `now` as the ingress does (admit, open_start, observe_ttft, close_start). Returns the
    admitted requests' TTFTs, None for each refused one."""
    idle = GroupState(name="a", step_time_s=0.01, prefill_tps=1e6, max_num_seqs=1024)
    events = []  # (first token time, admission time, decision, start key) of the admitted, in first-token order
    free_at, out = start, []

    def deliver(until: float) -> None:
        while events and events[0][0] <= until:
            t, t0, d, key = events.pop(0)
            now[0] = t
            router.observe_ttft("a", d.model_ttft_s, t - t0, expected_s=d.expected_ttft_s, ahead=d.ahead)
            router.close_start("a", key)

    for i in range(n):
        t = start + i / n
        deliver(t)
        now[0] = t
        router.update(idle)
        d = router.admit("a", 16)
        if not d.admitted:
            out.append(None)
            continue
        key = router.open_start("a")
        free_at = max(free_at, t + latency) + cost
        events.append((free_at, t, d, key))
        out.append(free_at - t)
    deliver(math.inf)
    return out


def test_the_serving_paths_line_is_learnt_and_a_later_flood_meets_the_slo():
    """The GPU flood of 2026-12-03 (run 17): admitted requests' first tokens came 1.9-2.6 s (p50) after they
    arrived, against an SLO of 1 s, while the engine was idle: the time went to the path between the ingress
    and the engine, one request after another, and the first tokens that could have told admission so came
    back after the flood had been admitted. Once one flood has taught the path's latency and per-request
    cost, a later flood is admitted up to the request whose place in the line would miss the SLO."""
    now = [0.0]
    slo, cost, latency = 1.0, 0.01, 0.4  # the path: 0.4 s, then 100 first tokens a second; 295 requests in 1 s
    router = Router(["a"], admission_ttft_slo_s=slo, clock=lambda: now[0])
    first = flood_through_a_serving_path(router, now, 0.0, 295, cost, latency)
    assert router.path_delay_s("a", 0) == 0.0 < router.path_delay_s("a", 10) < router.path_delay_s("a", 50)
    late = sorted(t for t in first if t is not None)
    assert late[int(0.9 * len(late))] > slo  # the first flood, before the path was known, missed the SLO
    for start in (30.0, 60.0):  # later floods, each after CALIBRATION_TTL_S and more without a first token
        flood = flood_through_a_serving_path(router, now, start, 295, cost, latency)
        assert all(ttft is not None for ttft in flood[:5])  # the first requests of a flood are admitted
        ttfts = sorted(t for t in flood if t is not None)
        assert len(ttfts) >= 0.8 * (slo - latency) / cost  # about as many as the line serves in time
        assert ttfts[int(0.9 * len(ttfts))] <= slo  # the goal: admitted requests meet the SLO at p90
        assert max(ttfts) <= slo + 2 * cost
    # an idle moment later nothing is ahead: a request is admitted at once (no correction that lingers)
    now[0] = 100.0
    router.update(GroupState(name="a", step_time_s=0.01, prefill_tps=1e6, max_num_seqs=1024))
    assert router.ahead("a") == 0 and router.admit("a", 16).admitted


def test_a_path_that_varies_between_floods_is_taken_at_its_90th_percentile(monkeypatch):
    """Run 31 of session-2026-12-04d: the serving path's time per request ahead differs from flood to flood (and
    within one), so a path term at the mean of what was learnt admits the slower floods past the SLO. Floods
    alternate between a path of 13 and 7 ms per first token: taken at the fit's mean (PATH_Z = 0), every slow
    flood's admitted p90 misses the 1 s SLO; at the 90th percentile (the default), every flood meets it and the
    fast ones still admit more than the slow ones."""
    import deployments.routing as routing

    default_z = routing.PATH_Z

    def floods(z: float) -> list[tuple[float, int, float]]:
        monkeypatch.setattr(routing, "PATH_Z", z)
        now = [0.0]
        router = Router(["a"], admission_ttft_slo_s=1.0, clock=lambda: now[0])
        res = []
        for k in range(8):
            cost = 0.013 if k % 2 == 0 else 0.007
            ttfts = sorted(t for t in flood_through_a_serving_path(router, now, 30.0 * k, 295, cost, 0.3) if t)
            res.append((cost, len(ttfts), ttfts[int(0.9 * (len(ttfts) - 1))]))
        return res[2:]  # after the first two floods taught the path

    assert all(p90 > 1.1 for cost, _, p90 in floods(0.0) if cost == 0.013)
    res = floods(default_z)
    assert all(p90 <= 1.0 for _, _, p90 in res)
    assert min(n for cost, n, _ in res if cost == 0.007) > max(n for cost, n, _ in res if cost == 0.013) >= 50


def test_requests_count_ahead_until_their_first_token_their_end_or_expiry():
    now = [0.0]
    r = Router(["a", "b"], admission_ttft_slo_s=1.0, clock=lambda: now[0])
    keys = [r.open_start("a") for _ in range(3)]
    kb = r.open_start("b")
    r.update(GroupState(name="a"))  # a poll does not reset it: the group does not know this ingress's line
    assert (r.ahead("a"), r.ahead("b")) == (3, 1)
    assert r.admit("a", 8).ahead == 3 and r.admit("b", 8).ahead == 1
    r.close_start("a", keys[0])
    r.close_start("a", keys[0])  # closing twice (first token, then the end) counts once
    r.close_start("b", kb)
    assert (r.ahead("a"), r.ahead("b")) == (2, 0)
    assert r.path_delay_s("a", 10) == 0.0  # nothing learnt yet
    now[0] = 30.0
    r.open_start("a")
    assert r.ahead("a") == 3
    now[0] = START_EXPIRY_S + 1.0  # the two never closed (a client that left before its stream began) expire
    assert r.ahead("a") == 1


def test_linear_fit_residual_std():
    from deployments.routing import LinearFit

    f = LinearFit(decay=1.0)
    assert f.residual_std() == 0.0
    for x in range(10):
        f.observe(x, 1 + 2 * x)
    assert f.residual_std() == pytest.approx(0.0, abs=1e-6)
    g = LinearFit(decay=1.0)
    for x in range(10):
        g.observe(x, 1 + 2 * x + (0.5 if x % 2 else -0.5))
    assert g.params() == pytest.approx((1.0, 2.0), abs=0.2) and g.residual_std() == pytest.approx(0.5, abs=0.05)
