"""The scheduler's admission policies (app/scheduler.py): queue order, early abort, adapter clustering, idle
adapters freed or kept, the static pool split and prefetch, each on a deterministic trace with a fake clock.
The scheduler runs alone: a fake executor returns one token per sampled sequence and each step takes
`step_s` of fake time."""

from __future__ import annotations

import math
import random

import pytest

from app.config import LoRAConfig, SchedulerConfig
from app.pool import PagePool
from app.request import ModelOutput, Request, SamplingParams
from app.scheduler import Scheduler


class Sim:
    def __init__(self, *, seqs=8, tokens=256, loras=8, pages=256, adapter_pages=2, step_s=0.1, limit=None, **kw):
        sch = {k: kw.pop(k) for k in list(kw) if k in SchedulerConfig.model_fields}
        self.t = 0.0
        self.step_s = step_s
        self.pool = PagePool(num_pages=pages, page_size=4, adapter_limit=limit)
        self.sch = Scheduler(
            SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=tokens, **sch),
            LoRAConfig(max_loras_per_batch=loras, **kw),
            self.pool,
            lambda name: adapter_pages,
            clock=lambda: self.t,
        )
        self.reqs: dict[str, Request] = {}
        self.admitted: list[str] = []  # request ids in the order they were first scheduled

    def add(self, rid: str, adapter: str | None = None, prompt: int = 4, out: int = 2, at: float | None = None):
        p = SamplingParams(max_tokens=out, temperature=0.0, ignore_eos=True, detokenize=False)
        req = Request(rid, [5] * prompt, adapter, p, arrival_time=self.t if at is None else at)
        self.sch.add(req)
        self.reqs[rid] = req
        return req

    def step(self):
        out = self.sch.schedule()
        for s in out.seqs:
            if s.start_pos == 0 and s.request_id not in self.admitted:
                self.admitted.append(s.request_id)
        n = sum(s.sample for s in out.seqs)
        for req in self.sch.update(out, self.reqs, ModelOutput(tokens=[7] * n)):
            if req.first_token_time is None:
                req.first_token_time = self.t + self.step_s
            if len(req.output_token_ids) >= req.params.max_tokens:
                self.sch.finish(req, "length")
        self.sch.early_aborted.clear()
        self.t += self.step_s
        self.pool.check()
        return out

    def run(self, arrivals: list[tuple[float, str, str | None, int]] = (), until: float = math.inf):
        """Replays (arrival time, request id, adapter, output length) in fake time until all are done."""
        pending = sorted(arrivals)
        while (pending or self.sch.has_unfinished()) and self.t < until:
            while pending and pending[0][0] <= self.t + 1e-9:
                at, rid, adapter, out = pending.pop(0)
                self.add(rid, adapter, out=out, at=at)
            self.step()


# ---- queue order ---------------------------------------------------------------------------------
def test_fcfs_admits_oldest_and_lcfs_newest():
    for order, first in (("fcfs", "r0"), ("lcfs", "r2")):
        sim = Sim(seqs=1, queue_order=order)
        for i in range(3):
            sim.add(f"r{i}", at=float(i))
        sim.step()
        assert sim.admitted == [first], order
    sim = Sim(seqs=1, queue_order="lcfs")
    sim.run([(0.0, f"r{i}", None, 3) for i in range(4)])
    assert sim.admitted == ["r3", "r2", "r1", "r0"]  # all there at once: newest first throughout


def test_preempted_requests_go_first_in_either_order():
    for order in ("fcfs", "lcfs"):
        sim = Sim(seqs=1, queue_order=order)
        for i in range(3):
            sim.add(f"r{i}", at=float(i))
        resumed = sim.reqs["r1"]
        sim.sch.waiting.remove(resumed)
        resumed.num_preemptions = 1  # as Scheduler._preempt leaves it: at the front, marked
        sim.sch.waiting.appendleft(resumed)
        sim.step()
        assert sim.admitted == ["r1"], order


# ---- early abort ---------------------------------------------------------------------------------
def test_expired_early_abort_drops_only_requests_past_their_deadline():
    sim = Sim(seqs=1, early_abort_ttft_slo_s=1.0)
    sim.add("long", out=30)
    sim.step()
    sim.add("late")
    sim.t = 1.05  # "late" arrived at 0.1: 0.95 s waited
    sim.step()
    assert not sim.sch.early_aborted and not sim.reqs["late"].finished
    sim.t = 1.2
    sim.step()
    late = sim.reqs["late"]
    assert late.finished and late.finish_reason == "abort" and not late.output_token_ids
    assert sim.sch.num_early_aborts == 1 and late.first_scheduled_time is None  # never took GPU time
    assert not sim.reqs["long"].finished


def test_early_abort_keeps_a_request_whose_first_token_is_pending():
    """Under async scheduling a request preempted after the step that samples its first token was launched
    waits with that token pending (num_pending 1, no output yet): it has its first token and must not be
    dropped, while a request without one, past the same deadline, is."""
    sim = Sim(seqs=1, early_abort_ttft_slo_s=1.0)
    sim.add("long", out=30)
    sim.step()
    for rid in ("pending", "late"):
        sim.add(rid, at=0.1)
    sim.reqs["pending"].num_pending = 1
    sim.t = 1.2
    sim.step()
    assert sim.reqs["late"].finished and sim.reqs["late"].finish_reason == "abort"
    assert not sim.reqs["pending"].finished and sim.sch.num_early_aborts == 1


def overload(policy: dict, n=60, gap=0.1, out=5):
    """n requests, one every `gap` s, each holding the only seat for 1 + `out` steps of 0.1 s (gap 0.1: arrivals
    six times as fast as service)."""
    sim = Sim(seqs=1, step_s=0.1, **policy)
    sim.run([(round(i * gap, 6), f"r{i:03d}", None, out) for i in range(n)])
    return sim


def attainment(sim: Sim, slo: float) -> float:
    ok = [r for r in sim.reqs.values() if r.first_token_time is not None and r.first_token_time - r.arrival_time <= slo]
    return len(ok) / len(sim.reqs)


def test_predicted_early_abort_drops_hopeless_requests_before_their_deadline_and_serves_newest_first():
    slo = 2.0
    sim = overload({"early_abort_ttft_slo_s": slo, "early_abort": "predicted"})
    aborted = [r for r in sim.reqs.values() if r.finish_reason == "abort"]
    assert aborted and all(r.first_scheduled_time is None and not r.output_token_ids for r in aborted)
    # predicted: some were dropped before their deadline passed (expired only drops after it)
    assert any(r.finish_time - r.arrival_time < slo for r in aborted)
    fcfs = overload({})
    expired = overload({"early_abort_ttft_slo_s": slo})
    lcfs = overload({"queue_order": "lcfs"})
    att = {k: attainment(s, slo) for k, s in [("predicted", sim), ("fcfs", fcfs), ("expired", expired), ("lcfs", lcfs)]}
    assert att["predicted"] > att["fcfs"] and att["predicted"] >= att["expired"], att
    assert not any(r.finish_reason == "abort" for r in fcfs.reqs.values())


def burst_after_steady_load(k: int, gap: float, **policy) -> Sim:
    """One seat, 0.6 s per request (5 output tokens, 0.1 s steps): a request every `gap` s until t = 6, then
    k at once."""
    sim = Sim(seqs=1, step_s=0.1, **policy)
    steady = [(round(i * gap, 3), f"s{i:02d}", None, 5) for i in range(int(6 / gap))]
    sim.run(steady + [(6.0 + 0.001 * j, f"b{j:02d}", None, 5) for j in range(k)])
    return sim


PREDICTED = {"early_abort_ttft_slo_s": 2.0, "early_abort": "predicted"}


def test_predicted_early_abort_serves_the_newest_of_a_burst_it_cannot_drain():
    """Arrivals faster than admissions and a queue longer than one deadline's admissions (~2/s x 2 s): the
    newest go first, so the oldest of the queue are the ones dropped, before their deadline."""
    sim = burst_after_steady_load(12, 0.3, **PREDICTED)
    aborted = {r.request_id for r in sim.reqs.values() if r.finish_reason == "abort"}
    old = [sim.reqs[rid] for rid in aborted if rid.startswith("s")]
    assert old and all(r.finish_time - r.arrival_time < 2.0 for r in old)  # dropped before their deadline
    served = [sim.reqs[rid] for rid in sim.admitted if rid.startswith("b")]
    assert "b00" in aborted and any(b.arrival_time > r.arrival_time for b in served for r in old)
    assert attainment(sim, 2.0) > attainment(burst_after_steady_load(12, 0.3), 2.0)


def gamma_arrivals(seed: int, rate: float, cv: float, duration: float) -> list[tuple[float, str, None, int]]:
    """Gamma inter-arrival times of mean 1 / rate and coefficient of variation cv (S-LoRA's trace), output
    lengths U[2, 40)."""
    rng = random.Random(seed)
    shape, t, out = 1.0 / (cv * cv), 0.0, []
    while t < duration:
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
        out.append((round(t, 4), f"r{len(out):04d}", None, rng.randrange(2, 40)))
    return out


def test_predicted_early_abort_drops_almost_nothing_that_fcfs_serves_in_time():
    """cv 1 near capacity (8 seats, ~21 steps of 0.02 s per request: ~19 req/s; 18 req/s arrive): FCFS meets
    the 1 s deadline for every request, so early abort must not drop many. Before the backlog condition of
    `_newest_first`, random short bursts switched it to newest first and it dropped 28 of 565 (95%)."""
    arrivals = gamma_arrivals(0, 18.0, 1.0, 30.0)
    fcfs = Sim(seqs=8, step_s=0.02, tokens=64)
    fcfs.run(arrivals)
    sim = Sim(seqs=8, step_s=0.02, tokens=64, early_abort_ttft_slo_s=1.0, early_abort="predicted")
    sim.run(arrivals)
    assert attainment(fcfs, 1.0) == 1.0
    assert sim.sch.num_early_aborts <= 0.02 * len(arrivals) and attainment(sim, 1.0) >= 0.98


def test_predicted_early_abort_keeps_fcfs_and_drops_nothing_under_light_load():
    sim = overload({"early_abort_ttft_slo_s": 2.0, "early_abort": "predicted"}, n=20, gap=0.6)
    assert sim.admitted == sorted(sim.admitted) and sim.sch.num_early_aborts == 0
    assert all(r.finish_reason == "length" for r in sim.reqs.values())


def test_predicted_early_abort_counts_the_free_seats():
    """Requests that the seats free now take at once wait for nothing, whatever the admission rate: the
    predicted wait counts only the requests past the free seats. Four requests of 5-20 tokens fill the 4
    seats and 3 more of 20 queue behind them, so the rate is measured on long requests (~1.25/s); a burst of 4
    short ones then arrives with 2 seats free. FCFS serves every request within the SLO; before, the predicted
    early abort dropped one of the burst (its wait predicted as 3 positions / 1.25/s)."""
    arrivals = [(0.0, f"a{i}", None, 5 * (i + 1)) for i in range(4)] + [(0.1, f"w{i}", None, 20) for i in range(3)]
    arrivals += [(2.55, f"burst{i}", None, 2) for i in range(4)]
    fcfs = Sim(seqs=4)
    fcfs.run(arrivals)
    assert attainment(fcfs, 2.0) == 1.0
    sim = Sim(seqs=4, early_abort_ttft_slo_s=2.0, early_abort="predicted")
    sim.run(arrivals)
    assert sim.sch.num_early_aborts == 0 and attainment(sim, 2.0) == 1.0


def test_rates_are_measured_over_the_slo_window():
    sim2 = Sim(seqs=1, early_abort_ttft_slo_s=2.0, early_abort="predicted")
    sim2.run([(round(i * 0.1, 6), f"r{i:03d}", None, 5) for i in range(40)], until=3.0)
    arrival, service = sim2.sch.rates()
    assert arrival == pytest.approx(10.0, rel=0.1)  # one request per 0.1 s
    assert service == pytest.approx(1 / 0.6, rel=0.1)  # one admission per 6 steps of 0.1 s
    assert Sim(seqs=1).sch.rates() == (None, None)  # not measured without the predicted abort


# ---- adapter clustering --------------------------------------------------------------------------
def clustered(on: bool, max_wait: float = 2.0):
    sim = Sim(seqs=4, cluster_min_adapters=2 if on else None, cluster_max_wait_s=max_wait)
    sim.add("a0", "a", out=50)
    sim.add("b0", "b", out=50)
    sim.step()  # the batch holds a and b
    for i, ad in enumerate("cacb"):
        sim.add(f"{ad}{i + 1}", ad, out=50)
    sim.step()
    return sim


def test_clustering_prefers_requests_whose_adapter_is_in_the_batch():
    assert clustered(False).admitted == ["a0", "b0", "c1", "a2"]  # FCFS: two seats left
    on = clustered(True)
    assert on.admitted == ["a0", "b0", "a2", "b4"] and on.sch.num_cluster_steps > 0


def test_clustering_aging_bound_keeps_an_old_request_in_its_place():
    sim = Sim(seqs=4, cluster_min_adapters=2, cluster_max_wait_s=1.0)
    sim.add("a0", "a", out=50)
    sim.add("b0", "b", out=50)
    sim.step()
    sim.add("c1", "c", out=50, at=sim.t - 1.5)  # has waited past the bound
    sim.add("a2", "a", out=50)
    sim.add("b3", "b", out=50)
    sim.step()
    assert sim.admitted == ["a0", "b0", "c1", "a2"]


def test_clustering_does_not_starve_a_cold_adapter():
    """Requests of a hot adapter arrive every step, faster than they are served, and always hold the batch;
    one request of a cold adapter arrives early. With the aging bound it is admitted within the bound (plus
    a step); with no bound it waits until the hot queue has drained."""
    arrivals = [(round(0.1 * i, 6), f"h{i:03d}", "hot", 6) for i in range(200)]
    arrivals.append((0.55, "cold", "cold", 3))
    waits = {}
    for bound in (1.0, math.inf):
        sim = Sim(seqs=4, cluster_min_adapters=1, cluster_max_wait_s=bound)
        sim.run(arrivals)
        cold = sim.reqs["cold"]
        waits[bound] = cold.first_scheduled_time - cold.arrival_time
    assert waits[1.0] <= 1.0 + 0.7, waits  # the bound, then a seat freeing (a hot request is 7 steps)
    assert waits[math.inf] > 10.0, waits


# ---- idle adapters, static split, prefetch ---------------------------------------------------------
def test_idle_adapters_are_kept_as_a_cache_or_freed_at_finish():
    for keep in (True, False):
        sim = Sim(keep_idle_adapters=keep)
        sim.run([(0.0, "r0", "a", 2), (0.0, "r1", "a", 4), (0.0, "r2", "b", 2)])
        assert sorted(sim.pool.resident_adapters()) == (["a", "b"] if keep else [])
        sim.run([(sim.t, "r3", "a", 2)])
        assert sim.pool.loads == (2 if keep else 3) and sim.pool.hits >= (2 if keep else 1)


def test_static_split_bounds_adapters_and_kv_separately():
    # unified: 10 pages, three adapters of 2 pages stay cached beside the KV
    uni = Sim(pages=10, adapter_pages=2)
    uni.run([(0.0, f"r{i}", ad, 2) for i, ad in enumerate("abc")])
    assert sorted(uni.pool.resident_adapters()) == ["a", "b", "c"]
    split = Sim(pages=10, adapter_pages=2, limit=4)
    split.run([(0.0, f"r{i}", ad, 2) for i, ad in enumerate("abc")])
    assert len(split.pool.resident_adapters()) == 2 and split.pool.evictions == 1  # LRU within its 4 pages
    # KV holds at most 6 pages: a 5-token prompt + 2 outputs (2 pages) each: three fit, the fourth waits
    kv = Sim(pages=10, adapter_pages=2, limit=4)
    for i in range(4):
        kv.add(f"k{i}", prompt=5, out=3)
    kv.step()
    assert kv.admitted == ["k0", "k1", "k2"] and kv.pool.stats().kv == 6 and kv.pool.num_free == 4
    with pytest.raises(ValueError, match="for KV"):
        kv.add("huge", prompt=30, out=1)  # 8 pages: fits the pool, not its KV part
    with pytest.raises(ValueError):
        PagePool(num_pages=10, page_size=4, adapter_limit=10)


def test_prefetch_spares_steps_waiting_on_a_load():
    waits = {}
    for prefetch in (True, False):
        sim = Sim(seqs=1, prefetch=prefetch)
        sim.run([(0.0, f"r{i}", f"a{i}", 3) for i in range(4)])
        waits[prefetch] = sim.sch.num_load_wait_steps
        assert sim.pool.loads == 4
    assert waits == {True: 1, False: 4}


def test_prefetch_reads_ahead_only_as_far_as_one_step_admits():
    # one seat, so one request is admitted a step; the queue's 8-token prompts: a budget of 16 tokens a step
    # prefetches the adapters of the next two queued requests, a budget of 256 those of all five
    for tokens, resident in ((16, ["a0", "a1", "a2"]), (256, [f"a{i}" for i in range(6)])):
        sim = Sim(seqs=1, tokens=tokens)
        for i in range(6):
            sim.add(f"r{i}", f"a{i}", prompt=8, out=3)
        sim.step()
        assert sim.admitted == ["r0"] and sorted(sim.pool.resident_adapters()) == resident, tokens
        sim.run()  # the rest, as prefetched adapters are admitted and the read-ahead moves on
        assert sim.pool.loads == 6 and len(sim.admitted) == 6
    # it reads the queue in admission order: newest first under LCFS
    sim = Sim(seqs=1, tokens=16, queue_order="lcfs")
    for i in range(6):
        sim.add(f"r{i}", f"a{i}", prompt=8, out=3, at=float(i))
    sim.step()
    assert sim.admitted == ["r5"] and sorted(sim.pool.resident_adapters()) == ["a3", "a4", "a5"]
    sim.run()
    assert sim.admitted == [f"r{i}" for i in range(5, -1, -1)] and sim.pool.loads == 6
    assert sim.sch.num_load_wait_steps == 1  # only the first admission waited for its adapter's copy


# ---- early abort as a replica streams it (deployments/group.py, no Ray cluster) --------------------------
def test_group_streams_an_early_abort_before_start_as_a_429_with_retry_after():
    import asyncio

    from app.demo import build_demo
    from app.request import RequestOutput
    from deployments.group import SLoRAGroup

    demo = build_demo()
    cfg = {"model": str(demo / "model"), "device": "cpu", "dtype": "float32"}
    cfg["scheduler"] = {"max_num_seqs": 1, "early_abort_ttft_slo_s": 0.1}
    g = SLoRAGroup("g", cfg, ray_metrics=False, settings={"stream_interval_s": 0.0})
    params = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)

    async def run():
        started = asyncio.Event()

        async def one(rid):
            items = []
            async for item in g.generate(rid, [5, 6, 7], params):
                items.append(item)
                started.set()
            return items

        first = asyncio.ensure_future(one("long"))
        await started.wait()  # "long" holds the only seat for its 1000 steps (over 0.1 s even on a fast CPU)
        return await asyncio.gather(first, one("dropped"))

    long, dropped = asyncio.run(run())
    assert isinstance(long[0], RequestOutput) and long[-1].finish_reason == "length"
    assert len(dropped) == 1  # the error is the first and only item
    err = dropped[0]
    assert not isinstance(err, RequestOutput) and err["status"] == 429 and err["retry_after_s"] == 1
    assert "early abort" in err["error"]


def test_admission_rate_ignores_idle_time():
    """An idle gap before a burst is not service time: only steps between two schedules that both left
    requests waiting count."""
    sim = Sim(seqs=1, early_abort_ttft_slo_s=5.0, early_abort="predicted")
    sim.run([(0.0, "alone", None, 2)])  # then idle until 3 s
    sim.t = 3.0
    sim.run([(3.0, f"r{i}", None, 4) for i in range(6)], until=4.5)
    arrival, service = sim.sch.rates()
    assert service == pytest.approx(1 / 0.5, rel=0.1)  # one admission per 5 steps of 0.1 s


def test_engine_set_policies_switches_an_idle_engine_only():
    from app.config import EngineConfig
    from app.demo import build_demo
    from app.engine import Engine

    demo = build_demo()
    e = Engine(EngineConfig(model=str(demo / "model"), device="cpu", dtype="float32"))
    sch = e.scheduler
    e.set_policies(scheduler={"queue_order": "lcfs"}, lora={"static_adapter_pages": 40, "keep_idle_adapters": False})
    assert e.scheduler is not sch and e.scheduler.cfg.queue_order == "lcfs" and e.pool.adapter_limit == 40
    assert e.cfg.lora.static_adapter_pages == 40 and not e.scheduler.lora_cfg.keep_idle_adapters
    e.set_policies(lora={"static_adapter_pages": None})  # the others stay as set
    assert e.pool.adapter_limit is None and e.scheduler.cfg.queue_order == "lcfs"
    with pytest.raises(ValueError, match="not policies"):
        e.set_policies(scheduler={"max_num_seqs": 3})
    with pytest.raises(ValueError):
        e.set_policies(scheduler={"queue_order": "random"})
    e.add_request([5, 6, 7], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
    with pytest.raises(RuntimeError, match="idle"):
        e.set_policies(scheduler={"queue_order": "fcfs"})
    while e.has_unfinished():
        e.step()
    e.set_policies(scheduler={"queue_order": "fcfs"})
    assert e.is_idle_clean()


# ---- priority (vLLM's scheduling policy) ----------------------------------------------------------
def test_priority_admits_lowest_value_first_then_oldest():
    sim = Sim(seqs=1, queue_order="priority")
    for rid, prio, at in (("r0", 5, 0.0), ("r1", 0, 1.0), ("r2", 0, 2.0), ("r3", -1, 3.0)):
        sim.add(rid, at=at).params.priority = prio
    sim.run()
    assert sim.admitted == ["r3", "r1", "r2", "r0"]
    fcfs = Sim(seqs=1)  # the same requests without the policy: arrival order, priority ignored
    for rid, prio, at in (("r0", 5, 0.0), ("r1", 0, 1.0), ("r2", 0, 2.0), ("r3", -1, 3.0)):
        fcfs.add(rid, at=at).params.priority = prio
    fcfs.run()
    assert fcfs.admitted == ["r0", "r1", "r2", "r3"]


def test_admission_keeps_headroom_pages_for_the_running_requests():
    """admission_headroom_pages: while requests run, a new one is admitted only if the pool keeps that many
    allocatable pages per running request once its adapter and first chunk are placed. Four pages of 4
    tokens, three requests of 4 prompt tokens and 4 outputs (2 pages each at the end): with no headroom all
    three start and one is preempted to let the others grow; with 1 page each the third waits for a finished
    request and nothing is preempted; either way every request ends with its 4 tokens and the pool clean."""
    for headroom, first_step, preempted in ((0, ["a", "b", "c"], True), (1, ["a", "b"], False)):
        sim = Sim(seqs=3, pages=4, admission_headroom_pages=headroom)
        for rid, at in (("a", 0.0), ("b", 1.0), ("c", 2.0)):
            sim.add(rid, out=4, at=at)
        sim.step()
        assert sim.admitted == first_step, headroom
        sim.run()
        assert (sim.sch.num_preemptions > 0) == preempted, (headroom, sim.sch.num_preemptions)
        assert all(len(r.output_token_ids) == 4 for r in sim.reqs.values())
        assert sim.pool.num_free == 4


def test_admission_headroom_counts_the_adapter_it_pins():
    """The headroom check counts the pages of a request's adapter unless a running request already pins it.
    8 pages, 2-page adapters; A runs on adapter x (1 KV page + 2 adapter pages: 5 allocatable left). B on x
    needs 1 page (x is pinned), leaving 4: admitted with 3 pages of headroom (counting x again would leave 2).
    C on a new adapter y needs 3 of those 4, leaving 1: held back with 1 page per running request (counting
    its KV page alone would leave 3)."""
    for headroom in (1, 3):
        sim = Sim(seqs=3, pages=8, adapter_pages=2, admission_headroom_pages=headroom)
        sim.add("A", "x", out=1, at=0.0)
        sim.add("B", "x", out=1, at=1.0)
        sim.add("C", "y", out=1, at=2.0)
        sim.step()
        assert sim.admitted == ["A", "B"], headroom


def test_priority_preempts_the_lowest_priority_request_for_pages():
    """Three requests that fit their prompts but not their outputs (4 pages, 3 each at the end): the one of
    lowest priority is preempted, whatever the order they came in; FCFS preempts the last admitted."""
    for order, victim in (("priority", "lo"), ("fcfs", "mid")):
        sim = Sim(seqs=3, pages=4, queue_order=order, admission_headroom_pages=0)  # all three admitted
        for rid, prio, at in (("hi", 0, 0.0), ("lo", 9, 1.0), ("mid", 5, 2.0)):
            sim.add(rid, out=8, at=at).params.priority = prio
        sim.run()
        preempted = {rid for rid, r in sim.reqs.items() if r.num_preemptions}
        assert victim in preempted and "hi" not in preempted, (order, preempted)
        assert all(len(r.output_token_ids) == 8 for r in sim.reqs.values())
