"""Routing and admission control of the ingress: pure logic over the TP groups' reported state (no Ray).

In:  `GroupState` of every group (polled from `group.stats()` a few times a second) plus this ingress's
     own requests sent since the last poll of each group; a request's adapter and prompt length.
Out: the group a request goes to (`Router.choose`), and whether it is admitted (`Router.admit`: the
     predicted time to first token against the SLO, and a `Retry-After` when it is not).

Adapter clustering: the groups an adapter may go to are ordered by rendezvous hashing of the adapter
name over group names (the same order in every ingress replica, and only 1/n of the adapters move when a
group is added). Groups where the adapter is already resident in the pool come first (no load). The
first group of that order whose load is within `(1 + eps) x` the mean load is chosen (bounded-load
consistent hashing), so each group's batches hold few distinct adapters while no group is swamped.

Admission: predicted TTFT of a request on group g =
    (prefill tokens queued on g + tokens sent there since the last poll + this prompt) / g's prefill rate
    + one step time (+ a wait for a free slot when g already runs `max_num_seqs` requests).
A request whose prediction exceeds `ttft_slo_s` is refused at once (429 + Retry-After) instead of being
queued to miss its deadline.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

# Priors used until a group has measured its own step time and prefill rate.
DEFAULT_STEP_S = 0.02
DEFAULT_PREFILL_TPS = 2000.0


@dataclass
class GroupState:
    """What the router knows about one TP group (from `SLoRAGroup.stats()`)."""

    name: str
    waiting: int = 0
    running: int = 0
    queued_prefill_tokens: int = 0
    step_time_s: float | None = None  # recent (EMA) step time; None = not measured yet
    prefill_tps: float | None = None  # recent (EMA) prefill tokens per second
    max_num_seqs: int = 64
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
            max_num_seqs=q.get("max_num_seqs", 64),
            resident=frozenset(s.get("resident_adapters", ())),
        )


def rendezvous_order(key: str, groups: list[str]) -> list[str]:
    """Groups ordered by highest-random-weight hashing of `key` (stable across processes: no `hash()`)."""

    def weight(g: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{key}\0{g}".encode(), digest_size=8).digest(), "big")

    return sorted(groups, key=weight, reverse=True)


@dataclass
class Decision:
    admitted: bool
    predicted_ttft_s: float
    retry_after_s: int = 0


class Router:
    """Per-ingress view of the groups: polled state + local in-flight increments between polls."""

    def __init__(self, group_names: list[str], eps: float = 0.25, ttft_slo_s: float | None = None):
        if not group_names:
            raise ValueError("at least one group is needed")
        self.names = list(group_names)
        self.eps = eps
        self.ttft_slo_s = ttft_slo_s
        self.states = {n: GroupState(name=n) for n in self.names}
        # Requests / prompt tokens this ingress sent to a group since its last poll.
        self.pending_reqs = dict.fromkeys(self.names, 0)
        self.pending_tokens = dict.fromkeys(self.names, 0)

    # ---- state -----------------------------------------------------------------------------------
    def update(self, state: GroupState) -> None:
        """A fresh poll of a group: it now reports what this ingress sent before, so the local
        increments restart from zero."""
        self.states[state.name] = state
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

    def load(self, name: str) -> int:
        s = self.states[name]
        return s.waiting + s.running + self.pending_reqs[name]

    # ---- routing ---------------------------------------------------------------------------------
    def candidates(self, adapter: str | None) -> list[str]:
        """Preference order for an adapter: groups holding it resident (in hash order), then the rest of
        the hash order. Base-model requests (no adapter) prefer the least loaded group."""
        healthy = [n for n in self.names if self.states[n].healthy] or list(self.names)
        if adapter is None:
            return sorted(healthy, key=lambda n: (self.load(n), self.names.index(n)))
        order = rendezvous_order(adapter, healthy)
        resident = [n for n in order if adapter in self.states[n].resident]
        return resident + [n for n in order if n not in resident]

    def choose(self, adapter: str | None, n: int = 1) -> str:
        """Bounded-load choice: the first candidate whose load after taking `n` more requests stays within
        ceil((1 + eps) x the mean load after the same addition)."""
        order = self.candidates(adapter)
        total = sum(self.load(g) for g in order) + n
        bound = math.ceil((1 + self.eps) * total / len(order))
        for g in order:
            if self.load(g) + n <= max(bound, n):
                return g
        return min(order, key=self.load)

    # ---- admission -------------------------------------------------------------------------------
    def predict_ttft(self, name: str, prompt_tokens: int) -> float:
        s = self.states[name]
        step = s.step_time_s if s.step_time_s is not None else DEFAULT_STEP_S
        rate = s.prefill_tps if s.prefill_tps else DEFAULT_PREFILL_TPS
        tokens = s.queued_prefill_tokens + self.pending_tokens[name] + prompt_tokens
        t = tokens / rate + step
        # All slots taken: the request also waits for running ones to finish; assume the queue ahead of
        # it drains one slot per step at best.
        over = s.running + s.waiting + self.pending_reqs[name] - s.max_num_seqs
        if over >= 0:
            t += (over + 1) * step
        return t

    def admit(self, name: str, prompt_tokens: int) -> Decision:
        t = self.predict_ttft(name, prompt_tokens)
        if self.ttft_slo_s is None or t <= self.ttft_slo_s:
            return Decision(True, t)
        return Decision(False, t, retry_after_s=max(1, math.ceil(t - self.ttft_slo_s)))
