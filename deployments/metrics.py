"""Prometheus metrics with a `sloray_` prefix, named after vLLM's (`vllm:time_to_first_token_seconds` ->
`sloray_time_to_first_token_seconds`, ...).

Two exports of the same figures:
  * `GroupMetrics` lives in each TP-group replica: it records the engine-side figures (latencies from the
    requests' timestamps, counters, pool pages) into plain histograms/counters that travel in
    `group.stats()`, and into `ray.util.metrics` so that the Ray dashboard (and Ray's Prometheus
    endpoint) shows them.
  * `ServiceCollector` lives in each ingress replica: a prometheus_client collector rendering a snapshot
    of every group's figures (the ingress polls all groups), so `/metrics` shows the whole service
    whichever ingress replica answers behind the load balancer.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
]
ITL_BUCKETS = [
    0.001,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
]
ADAPTERS_BUCKETS: list[float] = [0, 1, 2, 4, 8, 16, 32, 64, 128]

# name -> (help, buckets)
HISTOGRAMS: dict[str, tuple[str, list[float]]] = {
    "time_to_first_token_seconds": ("Time to first token (arrival at the group to first token).", LATENCY_BUCKETS),
    "inter_token_latency_seconds": ("Time between successive output tokens of a request.", ITL_BUCKETS),
    "e2e_request_latency_seconds": ("Arrival at the group to the last token.", LATENCY_BUCKETS),
    "request_queue_time_seconds": ("Arrival at the group to first scheduled.", LATENCY_BUCKETS),
    "distinct_adapters_per_batch": ("Distinct adapters in one engine step.", ADAPTERS_BUCKETS),
}
# name -> help (monotonic counters)
COUNTERS = {
    "request_success": "Requests finished (stop or length).",
    "requests_aborted": "Requests aborted (client disconnect or error).",
    "requests_rejected": "Requests refused by admission control (429).",
    "prompt_tokens": "Prompt tokens of admitted requests.",
    "generation_tokens": "Generated tokens.",
    "adapter_loads": "Adapter weight copies into the pool (cache misses).",
    "adapter_hits": "Admissions whose adapter was already resident (cache hits).",
    "adapter_evictions": "Adapters evicted from the pool.",
    "adapter_prefetches": "Adapters copied into free pages ahead of their requests' admission (prefetch).",
    "preemptions": "Running requests preempted (recomputed later) because the pool ran out of pages.",
    "engine_steps": "Engine steps.",
}
GAUGES = {
    "num_requests_running": "Requests in the running batch.",
    "num_requests_waiting": "Requests waiting to be scheduled.",
    "queued_prefill_tokens": "Prompt tokens not yet prefilled.",
    "resident_adapters": "Adapters whose weights are in the pool.",
    "registered_adapters": "Adapters registered (host memory).",
}


@dataclass
class Hist:
    buckets: list[float]
    counts: list[int] = field(default_factory=list)  # per bucket, plus +Inf last (not cumulative)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self):
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def to_dict(self) -> dict:
        return {"buckets": self.buckets, "counts": list(self.counts), "sum": self.sum, "count": self.count}


class GroupMetrics:
    """Engine-side figures of one group; `snapshot()` is the plain dict sent in `stats()`."""

    def __init__(self, group: str, model: str, ray_export: bool = True):
        self.group, self.model = group, model
        self.hists = {n: Hist(b) for n, (_, b) in HISTOGRAMS.items()}
        self.counters: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self._ray = None
        if ray_export:
            self._ray = _RayMetrics(group, model)

    def observe(self, name: str, v: float) -> None:
        self.hists[name].observe(v)
        if self._ray:
            self._ray.hists[name].observe(v)

    def inc(self, name: str, n: int | float = 1) -> None:
        if n <= 0:
            return
        self.counters[name] += n
        if self._ray:
            self._ray.counters[name].inc(n)

    def set_counter(self, name: str, value: int) -> None:
        """For counters kept by the engine (pool loads/hits/evictions): export the increase."""
        self.inc(name, value - self.counters[name])

    def set_gauges(self, gauges: dict[str, float], pool: dict[str, int]) -> None:
        if self._ray:
            for k, v in gauges.items():
                self._ray.gauges[k].set(v)
            for kind in ("kv", "adapter", "free"):
                self._ray.pool.set(pool[kind], tags={"kind": kind})

    def snapshot(self) -> dict:
        return {"histograms": {n: h.to_dict() for n, h in self.hists.items()}, "counters": dict(self.counters)}


class _RayMetrics:
    """The same figures through ray.util.metrics (shown by the Ray dashboard / Ray's Prometheus port)."""

    def __init__(self, group: str, model: str):
        from ray.util import metrics as m

        tags = {"group": group, "model_name": model}
        keys = ("group", "model_name")
        self.hists = {
            n: m.Histogram(f"sloray_{n}", description=h, boundaries=[b for b in bs if b > 0], tag_keys=keys)
            for n, (h, bs) in HISTOGRAMS.items()
        }
        self.counters = {n: m.Counter(f"sloray_{n}_total", description=h, tag_keys=keys) for n, h in COUNTERS.items()}
        self.gauges = {n: m.Gauge(f"sloray_{n}", description=h, tag_keys=keys) for n, h in GAUGES.items()}
        self.pool = m.Gauge(
            "sloray_pool_pages", description="Pool pages by kind (kv, adapter, free).", tag_keys=keys + ("kind",)
        )
        for x in [*self.hists.values(), *self.counters.values(), *self.gauges.values(), self.pool]:
            x.set_default_tags(tags)


class ServiceCollector:
    """prometheus_client collector over the latest stats() of every group
    (`snapshots()` -> {group name: its last stats() dict, or None when its last poll failed})."""

    def __init__(self, snapshots, model: str):
        self.snapshots = snapshots
        self.model = model

    def collect(self):
        by_group = self.snapshots()
        snaps = [s for s in by_group.values() if s]
        labels = ["model_name", "group"]
        up = GaugeMetricFamily("sloray_group_up", "1 if the group answered the last stats poll.", labels=labels)
        for name, s in by_group.items():
            up.add_metric([self.model, name], 1.0 if s else 0.0)
        yield up
        for n, (help_, _) in HISTOGRAMS.items():
            hist = HistogramMetricFamily(f"sloray_{n}", help_, labels=labels)
            for s in snaps:
                h = s["metrics"]["histograms"][n]
                cum, acc = [], 0
                for b, c in zip(h["buckets"] + [float("inf")], h["counts"]):
                    acc += c
                    cum.append(("+Inf" if b == float("inf") else str(float(b)), acc))
                hist.add_metric([self.model, s["name"]], cum, h["sum"])
            yield hist
        for n, help_ in COUNTERS.items():
            fam = CounterMetricFamily(f"sloray_{n}", help_, labels=labels)
            for s in snaps:
                fam.add_metric([self.model, s["name"]], s["metrics"]["counters"][n])
            yield fam
        gauges = {n: GaugeMetricFamily(f"sloray_{n}", h, labels=labels) for n, h in GAUGES.items()}
        pool = GaugeMetricFamily(
            "sloray_pool_pages", "Pool pages by kind (kv, adapter, adapter_pinned, free).", labels=labels + ["kind"]
        )
        frag = GaugeMetricFamily(
            "sloray_kv_fragmentation", "Share of allocated KV slots holding no token.", labels=labels
        )
        for s in snaps:
            lab = [self.model, s["name"]]
            for k, v in s["gauges"].items():
                gauges[k].add_metric(lab, v)
            for kind in ("kv", "adapter", "adapter_pinned", "free"):
                pool.add_metric(lab + [kind], s["pool"][kind])
            frag.add_metric(lab, s["pool"]["kv_fragmentation"])
        yield from gauges.values()
        yield pool
        yield frag
