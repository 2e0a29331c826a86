"""Routing and admission control of the ingress: pure logic over the TP groups' reported state (no Ray).

In:  `GroupState` of every group (polled from `group.stats()` a few times a second) plus this ingress's
     own requests sent since the last poll of each group (as many assumed from each other ingress replica);
     a request's adapter and prompt length.
Out: the group a request goes to (`Router.choose`), and whether it is admitted (`Router.admit`: the
     predicted time to first token against the SLO, and a `Retry-After` when it is not).

Adapter clustering: the groups an adapter may go to are ordered by rendezvous hashing of the adapter
name over group names (the same order in every ingress replica, and only 1/n of the adapters move when a
group is added). Groups where the adapter is already resident in the pool come first (no load). The
first group of that order whose load is within `(1 + eps) x` the mean load is chosen (bounded-load
consistent hashing), so each group's batches hold few distinct adapters while no group is swamped.

Admission: predicted TTFT of a request on group g =
    max(wait for a free slot, (prefill tokens queued on g + tokens sent there since the last poll) / rate)
    + this prompt / g's prefill rate + one step time,
where the slot wait replays g's FCFS queue: the running requests free their slots after their remaining
output tokens, each waiting request takes the earliest free slot and holds it for its output length
(`GroupState.slot_heap`), in steps of g's measured step time.
A request whose prediction exceeds `admission_ttft_slo_s` is refused at once (429 + Retry-After) instead of being
queued to miss its deadline.

The model sees the engine, not the path between the ingress and it (Ray calls, the group's event loop, the
stream back), which under a flood is where the time goes. Two corrections learn it from the first tokens
that come back (`Router.calibrated`, `Router.path_delay_s`): a calibration of actual over predicted TTFT,
and the serving path's latency plus its per-request cost: how much later a first token comes for each
request of this ingress that was admitted to the same group before it and still waits for its own first
token. The count is known the moment a flood starts, so once a flood has taught the path, the next one is
refused from the request whose place in that line would miss the SLO.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

# Priors used until a group has measured its own step time and prefill rate.
DEFAULT_STEP_S = 0.02
DEFAULT_PREFILL_TPS = 2000.0
CALIBRATION_MIN = 5  # admitted requests' first tokens seen before their TTFTs correct the predictions
CALIBRATION_TTL_S = 5.0  # a calibration with no new first token for this long is dropped (see calibrated)
PATH_FIT_DECAY = 0.99  # weight of an older first token in the serving path's per-request cost (path_delay_s)
# The path's delay is taken at its 90th percentile (mean + 1.28 sd of the fit's residuals, as if normal): the SLO
# is met at p90, and the path's time per request ahead varies within and between floods (run 31 of
# session-2026-12-04d: the mean fit added 0.35-0.42 s where requests got 0.49-0.55 s).
PATH_Z = 1.28
# A request still counted as waiting for its first token after this long is dropped from the count: one whose
# end the ingress never saw (a stream whose client left before it began) must not weigh on admission forever.
START_EXPIRY_S = 60.0
MAX_REQUEST_START_AGE_S = 600.0  # an X-Request-Start older than this is a clock problem (request_start_age_s)


@dataclass
class GroupState:
    """What the router knows about one TP group (from `SLoRAGroup.stats()`)."""

    name: str
    waiting: int = 0
    running: int = 0
    queued_prefill_tokens: int = 0
    step_time_s: float | None = None  # recent (EMA) step time; None = not measured yet
    prefill_tps: float | None = None  # recent (EMA) prefill tokens per second
    step_cost: tuple[float, float] | None = None  # (seconds per step, seconds per token): see LinearFit
    max_num_seqs: int = 64
    # decode steps each running request may still take (max_tokens left: an upper bound, EOS can end it sooner)
    running_remaining: tuple[int, ...] = ()
    # (tokens to prefill, max output tokens) of each waiting request, in queue order
    waiting_lengths: tuple[tuple[int, int], ...] = ()
    resident: frozenset[str] = frozenset()  # adapters whose weights are in the group's pool
    healthy: bool = True
    updated_at: float = field(default_factory=time.monotonic)

    @classmethod
    def from_stats(cls, s: dict) -> GroupState:
        q = s["queue"]
        return cls(
            name=s["name"],
            waiting=q["waiting"],
            running=q["running"],
            queued_prefill_tokens=q["queued_prefill_tokens"],
            step_time_s=q.get("step_time_s"),
            prefill_tps=q.get("prefill_tps"),
            step_cost=tuple(q["step_cost"]) if q.get("step_cost") else None,
            max_num_seqs=q.get("max_num_seqs", 64),
            running_remaining=tuple(q.get("running_remaining", ())),
            waiting_lengths=tuple(tuple(w) for w in q.get("waiting_lengths", ())),
            resident=frozenset(s.get("resident_adapters", ())),
            healthy=s.get("healthy", True),
        )

    def slot_heap(self) -> list[int]:
        """When (in steps from now) each of the `max_num_seqs` slots frees once every waiting request has
        taken its turn (FCFS: the earliest free slot takes the next request, which holds it for its output
        length), as a heap. Running requests without a reported remainder count one step."""
        remaining = list(self.running_remaining) or [1] * self.running
        heap = sorted(remaining + [0] * max(0, self.max_num_seqs - len(remaining)))
        for _, out in self.waiting_lengths:
            heapq.heapreplace(heap, heap[0] + max(1, out))
        return heap


def rendezvous_order(key: str, groups: list[str]) -> list[str]:
    """Groups ordered by highest-random-weight hashing of `key` (stable across processes: no `hash()`)."""

    def weight(g: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{key}\0{g}".encode(), digest_size=8).digest(), "big")

    return sorted(groups, key=weight, reverse=True)


@dataclass
class Decision:
    admitted: bool
    predicted_ttft_s: float  # what the request will see: time already spent + the calibrated prediction
    retry_after_s: int = 0
    model_ttft_s: float = 0.0  # predict_ttft's own figure (what calibration learns to correct)
    expected_ttft_s: float = 0.0  # the calibrated model's figure, without the serving path's line ahead
    ahead: int = 0  # this ingress's requests on the group still waiting for their first token (path_delay_s)


class Router:
    """Per-ingress view of the groups: polled state + local in-flight increments between polls."""

    def __init__(
        self,
        group_names: list[str],
        eps: float = 0.25,
        admission_ttft_slo_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        peers: int = 1,
    ):
        """`peers`: the ingress replicas routing to these groups, this one included. A poll shows what all of
        them sent before it; between polls this router sees only its own requests and assumes each peer sent
        as many (a load balancer spreads requests evenly), so a flood split over replicas is not admitted
        once per replica."""
        if not group_names:
            raise ValueError("at least one group is needed")
        self.names = list(group_names)
        self.eps = eps
        self.admission_ttft_slo_s = admission_ttft_slo_s
        self.states = {n: GroupState(name=n) for n in self.names}
        self._heaps: dict[str, list[int]] = {}  # GroupState.slot_heap() of the last poll, per group
        self.clock = clock
        self.peers = max(1, peers)
        self._calibration = {n: LinearFit(decay=0.9) for n in self.names}  # actual TTFT over predicted
        self._observed_at = dict.fromkeys(self.names, 0.0)  # clock() of each calibration's last observation
        # Serving path: extra TTFT (over the calibrated model) against the requests ahead of it (path_delay_s).
        self._path_fit = {n: LinearFit(decay=PATH_FIT_DECAY) for n in self.names}
        # Per group, this ingress's requests admitted there whose first token has not come: key -> clock().
        self._starts: dict[str, dict[int, float]] = {n: {} for n in self.names}
        self._start_keys = itertools.count()
        # Requests / prompt tokens this ingress sent to a group since its last poll.
        self.pending_reqs = dict.fromkeys(self.names, 0)
        self.pending_tokens = dict.fromkeys(self.names, 0)

    # ---- state -----------------------------------------------------------------------------------
    def update(self, state: GroupState) -> None:
        """A fresh poll of a group: it now reports what this ingress sent before, so the local
        increments restart from zero."""
        self.states[state.name] = state
        self._heaps.pop(state.name, None)
        self.pending_reqs[state.name] = 0
        self.pending_tokens[state.name] = 0

    def mark_unhealthy(self, name: str) -> None:
        self.states[name].healthy = False

    def sent(self, name: str, prompt_tokens: int, n: int = 1) -> None:
        self.pending_reqs[name] += n
        self.pending_tokens[name] += prompt_tokens * n

    def done(self, name: str, prompt_tokens: int, n: int = 1) -> None:
        """Requests sent since the last poll that already finished no longer count (clamped at zero:
        a poll in between already dropped them)."""
        self.pending_reqs[name] = max(0, self.pending_reqs[name] - n)
        self.pending_tokens[name] = max(0, self.pending_tokens[name] - prompt_tokens * n)

    def open_start(self, name: str) -> int:
        """A request admitted to `name` by this ingress now waits for its first token; returns its key."""
        key = next(self._start_keys)
        self._starts[name][key] = self.clock()
        return key

    def close_start(self, name: str, key: int) -> None:
        """The request of `key` got its first token, or ended without one (closing twice is harmless)."""
        self._starts[name].pop(key, None)

    def ahead(self, name: str) -> int:
        """This ingress's requests on `name` waiting for their first token (opened less than
        START_EXPIRY_S ago)."""
        starts = self._starts[name]  # in the order they were opened, so the expired ones come first
        old = self.clock() - START_EXPIRY_S
        while starts:
            key, t = next(iter(starts.items()))
            if t >= old:
                break
            del starts[key]
        return len(starts)

    def load(self, name: str) -> int:
        s = self.states[name]
        return s.waiting + s.running + self.pending_reqs[name]

    def idle(self, name: str) -> bool:
        """Healthy, with no request running or waiting at its last poll and none sent by this ingress since
        (the ingress polls an idle group less often)."""
        return self.states[name].healthy and self.load(name) == 0

    # ---- routing ---------------------------------------------------------------------------------
    def candidates(self, adapter: str | None, exclude: AbstractSet[str] = frozenset()) -> list[str]:
        """Preference order for an adapter: groups holding it resident (in hash order), then the rest of
        the hash order. Base-model requests (no adapter) prefer the least loaded group. Only healthy
        groups, unless none is (then every group not in `exclude`: a poll may have missed a live one)."""
        names = [n for n in self.names if n not in exclude]
        healthy = [n for n in names if self.states[n].healthy] or names
        if adapter is None:
            return sorted(healthy, key=lambda n: (self.load(n), self.names.index(n)))
        order = rendezvous_order(adapter, healthy)
        resident = [n for n in order if adapter in self.states[n].resident]
        return resident + [n for n in order if n not in resident]

    def choose(self, adapter: str | None, n: int = 1, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """Bounded-load choice: the first candidate whose load after taking `n` more requests stays within
        ceil((1 + eps) x the mean load after the same addition). None when every group is excluded."""
        order = self.candidates(adapter, exclude)
        if not order:
            return None
        total = sum(self.load(g) for g in order) + n
        bound = math.ceil((1 + self.eps) * total / len(order))
        for g in order:
            if self.load(g) + n <= max(bound, n):
                return g
        return min(order, key=self.load)

    # ---- admission -------------------------------------------------------------------------------
    def predict_ttft(self, name: str, prompt_tokens: int) -> float:
        """max(wait for a free slot, prefill queued ahead) + this prompt's prefill + one step, where the slot
        wait simulates the group's FCFS queue: running requests free their slots after their remaining
        tokens, waiting ones (and the requests sent since the last poll, this router's times `peers`, at the
        mean output length of the queue) take slots in order and hold them for their output length. A step
        while every slot is busy costs the larger of the recent mean step time and the fitted cost of a full
        decode batch (`step_cost`); prefill costs the fitted time per token. Before the group has measured a
        step, a request that would have to wait for a slot gets an infinite prediction: its wait is unknown."""
        s = self.states[name]
        heap = self._heaps.get(name)
        if heap is None:
            heap = self._heaps[name] = s.slot_heap()
        pending = self.pending_reqs[name] * self.peers
        if pending:
            lengths = [out for _, out in s.waiting_lengths] + list(s.running_remaining)
            mean_out = max(1, round(sum(lengths) / len(lengths))) if lengths else 1
            heap = list(heap)
            for _ in range(pending):
                heapq.heapreplace(heap, heap[0] + mean_out)
        rate = s.prefill_tps if s.prefill_tps else DEFAULT_PREFILL_TPS
        if s.step_cost is not None:
            fixed, per_token = max(0.0, s.step_cost[0]), max(0.0, s.step_cost[1])
            step = max(s.step_time_s or 0.0, fixed + per_token * s.max_num_seqs)
            if per_token > 0:
                rate = 1.0 / per_token
        elif s.step_time_s is not None:
            step = s.step_time_s
        else:
            step = DEFAULT_STEP_S
            if heap[0] > 0:
                return math.inf
        ahead = s.queued_prefill_tokens + self.pending_tokens[name] * self.peers
        return max(heap[0] * step, ahead / rate) + prompt_tokens / rate + step

    def admit(self, name: str, prompt_tokens: int, elapsed_s: float = 0.0) -> Decision:
        """Admitted when `elapsed_s` (time the request already spent in this service) + the calibrated
        prediction + the serving path's delay for the requests ahead of it stays within the SLO."""
        raw = self.predict_ttft(name, prompt_tokens)
        expected = self.calibrated(name, raw)
        ahead = self.ahead(name)
        t = elapsed_s + expected + self.path_delay_s(name, ahead)
        d = Decision(True, t, model_ttft_s=raw, expected_ttft_s=expected, ahead=ahead)
        if self.admission_ttft_slo_s is None or t <= self.admission_ttft_slo_s:
            return d
        wait = t - self.admission_ttft_slo_s if math.isfinite(t) else self.admission_ttft_slo_s
        d.admitted, d.retry_after_s = False, max(1, math.ceil(wait))
        return d

    # ---- calibration -----------------------------------------------------------------------------
    def observe_ttft(
        self, name: str, model_ttft_s: float, actual_s: float, expected_s: float | None = None, ahead: int = 0
    ) -> None:
        """An admitted request's first token came `actual_s` after its admission, predicted `model_ttft_s`
        by the model and `expected_s` by the calibrated model (its Decision's figures), with `ahead`
        requests of this ingress waiting for their first token on the group when it was admitted."""
        if math.isfinite(model_ttft_s):
            self._calibration[name].observe(model_ttft_s, actual_s)
            self._observed_at[name] = self.clock()
        if expected_s is not None and math.isfinite(expected_s):
            self._path_fit[name].observe(ahead, actual_s - expected_s)

    def path_delay_s(self, name: str, ahead: int) -> float:
        """The serving path's share of a new request's TTFT on `name` with `ahead` of this ingress's requests
        there still waiting for their first token: the path's latency + `ahead` x its per-request cost, the
        intercept and slope of first tokens' TTFT beyond the calibrated model over the count ahead of them
        at admission, plus PATH_Z residual standard deviations (its 90th percentile, the SLO's). 0 with nothing
        ahead or before CALIBRATION_MIN first tokens; the slope is 0 while the
        count has not varied by at least one request. No TTL, unlike the calibration: with nothing ahead it
        adds nothing, so it cannot keep refusing an idle group."""
        fit = self._path_fit[name]
        params = fit.params(min_var=1.0)
        if fit.n < CALIBRATION_MIN or params is None or ahead <= 0:
            return 0.0
        intercept, slope = params
        return max(0.0, intercept + max(0.0, slope) * ahead + PATH_Z * fit.residual_std(min_var=1.0))

    def calibrated(self, name: str, model_ttft_s: float) -> float:
        """The prediction corrected by what this group's recent requests really got (a linear fit of actual
        over predicted TTFT, after CALIBRATION_MIN requests): the model misses costs it cannot see (the
        streaming and HTTP path, CPU contention, per-sequence host work), so an underestimate is raised;
        an overestimate is kept (admission errs on the side of the SLO).
        The correction describes the service under the load it had then, wherever the time went (also in
        front of an idle group: the HTTP path). It is dropped once no first token has come for
        CALIBRATION_TTL_S: a correction learnt in an overload would otherwise refuse every request, and with
        nothing admitted nothing would ever correct it back."""
        fit = self._calibration[name]
        params = fit.params(min_var=1e-4)
        if fit.n < CALIBRATION_MIN or params is None or not math.isfinite(model_ttft_s):
            return model_ttft_s
        if self.clock() - self._observed_at[name] > CALIBRATION_TTL_S:
            self._calibration[name] = LinearFit(decay=fit.decay)
            return model_ttft_s
        intercept, slope = params
        return max(model_ttft_s, intercept + slope * model_ttft_s)


def request_start_age_s(value: str | None, now: float) -> float:
    """How long ago a load balancer stamped the request (the `X-Request-Start` convention of nginx, Heroku
    and New Relic: `t=<time>` or a bare number, in seconds, milliseconds or microseconds since the epoch,
    told apart by magnitude), given `now` (time.time()). 0 for a missing or malformed stamp, or one from
    the future; at most MAX_REQUEST_START_AGE_S (a stamp older than that is a clock problem, not a queue).
    Only the request's own admission reads it: a client that lies about it can only get itself refused."""
    if not value:
        return 0.0
    v = value.strip()
    if v.startswith("t="):
        v = v[2:]
    try:
        t = float(v)
    except ValueError:
        return 0.0
    if not math.isfinite(t) or t <= 0:
        return 0.0
    if t > 1e14:  # microseconds
        t /= 1e6
    elif t > 1e11:  # milliseconds
        t /= 1e3
    return min(max(0.0, now - t), MAX_REQUEST_START_AGE_S)


class LinearFit:
    """y = intercept + slope x, fitted by exponentially weighted least squares over recent observations
    (the newest weighs 1, older ones `decay` times less per observation). With too little spread in x, the
    slope is 0 and the intercept the weighted mean. Used for a group's step time over the tokens of the
    step (`step_cost`), and for the TTFT that requests really got over the one predicted (calibration)."""

    def __init__(self, decay: float = 0.95):
        self.decay = decay
        self.w = self.sx = self.sy = self.sxx = self.sxy = self.syy = 0.0
        self.n = 0

    def observe(self, x: float, y: float) -> None:
        d = self.decay
        self.w = d * self.w + 1.0
        self.sx = d * self.sx + x
        self.sy = d * self.sy + y
        self.sxx = d * self.sxx + x * x
        self.sxy = d * self.sxy + x * y
        self.syy = d * self.syy + y * y
        self.n += 1

    def residual_std(self, min_var: float = 1.0) -> float:
        """The weighted standard deviation of y around the fitted line (`params` with the same `min_var`);
        0 before the first observation."""
        p = self.params(min_var)
        if p is None:
            return 0.0
        mx, my = self.sx / self.w, self.sy / self.w
        var_x, var_y = self.sxx / self.w - mx * mx, self.syy / self.w - my * my
        return math.sqrt(max(0.0, var_y - p[1] ** 2 * var_x))

    def params(self, min_var: float = 1.0) -> tuple[float, float] | None:
        """(intercept, slope), or None before the first observation; slope 0 when var(x) <= min_var."""
        if self.w == 0:
            return None
        mx, my = self.sx / self.w, self.sy / self.w
        var = self.sxx / self.w - mx * mx
        slope = (self.sxy / self.w - mx * my) / var if var > min_var else 0.0
        return my - slope * mx, slope
