"""Prometheus metrics with a `sloray_` prefix, named after vLLM's (`vllm:time_to_first_token_seconds` ->
`sloray_time_to_first_token_seconds`, ...), and the `vllm:` series a vLLM dashboard reads.

Two exports of the same figures:
  * `GroupMetrics` lives in each TP-group replica: it records the engine-side figures (latencies from the
    requests' timestamps, counters, pool pages) into plain histograms/counters that travel in
    `group.stats()`, and into `ray.util.metrics` so that the Ray dashboard (and Ray's Prometheus
    endpoint) shows them. Ray's export puts its namespace in front of every name: `sloray_x` there is
    `ray_sloray_x`, with the same `model_name` and `group` labels (and Ray's own: node, worker, ...).
  * `ServiceCollector` lives in each ingress replica: a prometheus_client collector rendering a snapshot
    of every group's figures (the ingress polls all groups), so `/metrics` shows the whole service
    whichever ingress replica answers behind the load balancer. Besides the `sloray_` series it renders
    `VLLM_*` under vLLM's names (`vllm:num_requests_running`, `vllm:kv_cache_usage_perc`,
    `vllm:time_per_output_token_seconds`, `vllm:request_success_total{finished_reason}`,
    `vllm:lora_requests_info`, ...), only there: Ray's export refuses `:` in names.

Per-adapter counters (`sloray_adapter_requests_total{adapter}`, prompt and generation tokens) keep their label
set bounded: in each group, the first `MAX_ADAPTER_LABELS` adapters to get a request (the base model counts
under its model name) keep a label of their own for the group's lifetime, every later one counts under
`adapter="other"`. Labels never move, so every series stays monotonic.
Every series a group reports exists (at zero) from the group's first stats poll on.
"""

from __future__ import annotations

import bisect
import time
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
    "prefix_cache_queries": "Prompt tokens of admitted requests that looked up the prefix cache.",
    "prefix_cache_hits": "Of those, tokens found in the prefix cache (their KV was not computed again).",
    "engine_steps": "Engine steps.",
}
FINISH_REASONS = ("stop", "length", "abort")  # vLLM's finished_reason values, exported from zero at the ingress
MAX_ADAPTER_LABELS = 32  # per group: adapters with a label of their own in the per-adapter counters
OTHER_ADAPTERS = "other"
# name -> help (per-adapter counters, label `adapter`)
ADAPTER_COUNTERS = {
    "adapter_requests": "Requests admitted, by adapter (the base model under its name; see MAX_ADAPTER_LABELS).",
    "adapter_prompt_tokens": "Prompt tokens of admitted requests, by adapter.",
    "adapter_generation_tokens": "Generated tokens, by adapter.",
}
# vLLM's name -> ours (histograms and counters rendered twice by ServiceCollector)
VLLM_HISTOGRAMS = {
    "time_to_first_token_seconds": "time_to_first_token_seconds",
    "time_per_output_token_seconds": "inter_token_latency_seconds",
    "inter_token_latency_seconds": "inter_token_latency_seconds",
    "e2e_request_latency_seconds": "e2e_request_latency_seconds",
    "request_queue_time_seconds": "request_queue_time_seconds",
}
VLLM_COUNTERS = {
    "prompt_tokens": "prompt_tokens",
    "generation_tokens": "generation_tokens",
    "num_preemptions": "preemptions",
    "prefix_cache_queries": "prefix_cache_queries",
    "prefix_cache_hits": "prefix_cache_hits",
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
        self.finished = dict.fromkeys(FINISH_REASONS[:2], 0)  # by finish reason (abort: requests_aborted)
        self.adapters: dict[str, dict[str, int]] = {}  # adapter label -> ADAPTER_COUNTERS
        self._ray = None
        if ray_export:
            self._ray = _RayMetrics(group, model)

    def request_finished(self, reason: str) -> None:
        """A request ended with `reason` (not an abort: those are `requests_aborted`)."""
        self.inc("request_success")
        self.finished[reason] = self.finished.get(reason, 0) + 1
        if self._ray:
            self._ray.finished.inc(1, tags={"finished_reason": reason})

    def _adapter_label(self, adapter: str | None) -> str:
        name = adapter or self.model
        if name not in self.adapters:
            if len(self.adapters) >= MAX_ADAPTER_LABELS + (OTHER_ADAPTERS in self.adapters):
                name = OTHER_ADAPTERS
            self.adapters.setdefault(name, dict.fromkeys(ADAPTER_COUNTERS, 0))
        return name

    def adapter_request(self, adapter: str | None, prompt_tokens: int) -> None:
        """A request of `adapter` (None: the base model) with `prompt_tokens` was admitted."""
        self._adapter_inc(adapter, "adapter_requests", 1)
        self._adapter_inc(adapter, "adapter_prompt_tokens", prompt_tokens)

    def adapter_tokens(self, adapter: str | None, n: int) -> None:
        self._adapter_inc(adapter, "adapter_generation_tokens", n)

    def _adapter_inc(self, adapter: str | None, name: str, n: int) -> None:
        label = self._adapter_label(adapter)
        if n <= 0:
            return
        self.adapters[label][name] += n
        if self._ray:
            self._ray.adapters[name].inc(n, tags={"adapter": label})

    def observe(self, name: str, v: float) -> None:
        self.hists[name].observe(v)
        if self._ray:
            self._ray.hists[name].observe(v)

    def inc(self, name: str, n: float = 1) -> None:
        if n <= 0:
            return
        self.counters[name] += n
        if self._ray:
            self._ray.counters[name].inc(n)

    def set_counter(self, name: str, value: int) -> None:
        """For counters kept by the engine (pool loads/hits/evictions): export the increase."""
        self.inc(name, value - self.counters[name])

    def set_gauges(self, gauges: dict[str, float], pool: dict[str, float]) -> None:
        if self._ray:
            self._ray.set_gauges(gauges, pool)

    def keep_alive(self) -> None:
        """Re-reports the Ray gauges' last values (at most once a second): Ray's export drops a gauge that has
        not been set for a couple of report intervals, e.g. while the group is idle (call it from stats())."""
        if self._ray:
            self._ray.keep_alive()

    def snapshot(self) -> dict:
        return {
            "histograms": {n: h.to_dict() for n, h in self.hists.items()},
            "counters": dict(self.counters),
            "finished": dict(self.finished),
            "adapters": {a: dict(c) for a, c in self.adapters.items()},
        }


POOL_KINDS = ("kv", "adapter", "adapter_pinned", "free", "kv_cached")
HELP_POOL = (
    "Pool pages by kind (kv: held by requests, adapter, adapter_pinned, free, kv_cached: idle prefix-cache pages, "
    "evicted first when pages are needed)."
)
HELP_FRAGMENTATION = "Share of allocated KV slots holding no token."
HELP_KV_USAGE = "Share of the pool's pages holding KV cache (0 to 1; the pool also holds adapter weights)."
HELP_UP = "1 if the group answered the last stats poll."
HELP_FINISHED = "Requests finished, by finish reason (stop, length, error; vllm: also abort)."
VLLM_GAUGES = ("num_requests_running", "num_requests_waiting")


def kv_cache_usage(pool: dict) -> float:
    return pool["kv"] / pool["total"] if pool.get("total") else 0.0


class _RayMetrics:
    """The `sloray_` figures through ray.util.metrics (shown by the Ray dashboard / Ray's Prometheus port,
    which adds `ray_` in front), gauges at zero from the start and re-reported while idle (`keep_alive`); the
    per-adapter counters and the finish reasons as `sloray_adapter_*_total{adapter}` and
    `sloray_request_finished_total{finished_reason}`."""

    def __init__(self, group: str, model: str):
        from ray.util import metrics as m

        tags = {"group": group, "model_name": model}
        keys = ("group", "model_name")
        self.hists = {
            n: m.Histogram(f"sloray_{n}", description=h, boundaries=[b for b in bs if b > 0], tag_keys=keys)
            for n, (h, bs) in HISTOGRAMS.items()
        }
        self.counters = {n: m.Counter(f"sloray_{n}", description=h, tag_keys=keys) for n, h in COUNTERS.items()}
        self.finished = m.Counter(
            "sloray_request_finished", description=HELP_FINISHED, tag_keys=keys + ("finished_reason",)
        )
        self.adapters = {
            n: m.Counter(f"sloray_{n}", description=h, tag_keys=keys + ("adapter",))
            for n, h in ADAPTER_COUNTERS.items()
        }
        self.gauges = {n: m.Gauge(f"sloray_{n}", description=h, tag_keys=keys) for n, h in GAUGES.items()}
        self.pool = m.Gauge("sloray_pool_pages", description=HELP_POOL, tag_keys=keys + ("kind",))
        self.fragmentation = m.Gauge("sloray_kv_fragmentation", description=HELP_FRAGMENTATION, tag_keys=keys)
        self.kv_usage = m.Gauge("sloray_kv_cache_usage_perc", description=HELP_KV_USAGE, tag_keys=keys)
        self.up = m.Gauge("sloray_group_up", description=HELP_UP, tag_keys=keys)
        gauges = [*self.gauges.values(), self.pool, self.fragmentation, self.kv_usage, self.up]
        for x in [*self.hists.values(), *self.counters.values(), self.finished, *self.adapters.values(), *gauges]:
            x.set_default_tags(tags)
        self.last: tuple[dict[str, float], dict[str, float]] = (
            dict.fromkeys(GAUGES, 0.0),
            dict.fromkeys(POOL_KINDS, 0) | {"kv_fragmentation": 0.0, "total": 0},
        )
        self.reported = float("-inf")
        self.keep_alive()

    def set_gauges(self, gauges: dict[str, float], pool: dict[str, float]) -> None:
        self.last = (gauges, pool)
        self.reported = time.monotonic()
        for k, v in gauges.items():
            self.gauges[k].set(v)
        for kind in POOL_KINDS:
            self.pool.set(pool[kind], tags={"kind": kind})
        self.fragmentation.set(pool["kv_fragmentation"])
        self.kv_usage.set(kv_cache_usage(pool))
        self.up.set(1.0)  # this group's own export: it is up while it exports

    def keep_alive(self) -> None:
        if time.monotonic() - self.reported >= 1.0:
            self.set_gauges(*self.last)


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
        up = GaugeMetricFamily("sloray_group_up", HELP_UP, labels=labels)
        for name, s in by_group.items():
            up.add_metric([self.model, name], 1.0 if s else 0.0)
        yield up
        for prefix, names in (("sloray_", {n: n for n in HISTOGRAMS}), ("vllm:", VLLM_HISTOGRAMS)):
            for name, ours in names.items():
                hist = HistogramMetricFamily(prefix + name, HISTOGRAMS[ours][0], labels=labels)
                for s in snaps:
                    hist.add_metric([self.model, s["name"]], *_cumulative(s["metrics"]["histograms"][ours]))
                yield hist
        for prefix, names in (("sloray_", {n: n for n in COUNTERS}), ("vllm:", VLLM_COUNTERS)):
            for name, ours in names.items():
                fam = CounterMetricFamily(prefix + name, COUNTERS[ours], labels=labels)
                for s in snaps:
                    fam.add_metric([self.model, s["name"]], s["metrics"]["counters"][ours])
                yield fam
        for name in ("sloray_request_finished", "vllm:request_success"):
            fam = CounterMetricFamily(name, HELP_FINISHED, labels=labels + ["finished_reason"])
            for s in snaps:
                m = s["metrics"]
                reasons = dict.fromkeys(FINISH_REASONS[:2], 0) | m["finished"]
                if name.startswith("vllm:"):  # vLLM counts aborted requests here too
                    reasons["abort"] = m["counters"]["requests_aborted"]
                for reason, v in sorted(reasons.items()):
                    fam.add_metric([self.model, s["name"], reason], v)
            yield fam
        for name, help_ in ADAPTER_COUNTERS.items():
            fam = CounterMetricFamily(f"sloray_{name}", help_, labels=labels + ["adapter"])
            for s in snaps:
                for adapter, counts in sorted(s["metrics"]["adapters"].items()):
                    fam.add_metric([self.model, s["name"], adapter], counts[name])
            yield fam
        yield from self._gauges(snaps, labels)

    def _gauges(self, snaps: list[dict], labels: list[str]):
        gauges = {n: GaugeMetricFamily(f"sloray_{n}", h, labels=labels) for n, h in GAUGES.items()}
        vllm = {n: GaugeMetricFamily(f"vllm:{n}", GAUGES[n], labels=labels) for n in VLLM_GAUGES}
        pool = GaugeMetricFamily("sloray_pool_pages", HELP_POOL, labels=labels + ["kind"])
        frag = GaugeMetricFamily("sloray_kv_fragmentation", HELP_FRAGMENTATION, labels=labels)
        usage = [
            GaugeMetricFamily(f"{p}kv_cache_usage_perc", HELP_KV_USAGE, labels=labels) for p in ("sloray_", "vllm:")
        ]
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running and waiting adapters (comma-separated) and max_lora; the value is the time of the report.",
            labels=labels + ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        for s in snaps:
            lab = [self.model, s["name"]]
            for k, v in s["gauges"].items():
                gauges[k].add_metric(lab, v)
                if k in vllm:
                    vllm[k].add_metric(lab, v)
            for kind in POOL_KINDS:
                pool.add_metric(lab + [kind], s["pool"][kind])
            frag.add_metric(lab, s["pool"]["kv_fragmentation"])
            for fam in usage:
                fam.add_metric(lab, kv_cache_usage(s["pool"]))
            lo = s.get("lora", {})
            running, waiting = ",".join(lo.get("running", [])), ",".join(lo.get("waiting", []))
            lora.add_metric(lab + [str(lo.get("max_lora", 0)), running, waiting], s.get("time", 0.0))
        yield from gauges.values()
        yield from vllm.values()
        yield from (pool, frag, *usage, lora)


def _cumulative(h: dict) -> tuple[list[tuple[str, int]], float]:
    """(cumulative buckets, sum) of a `Hist.to_dict()` in prometheus_client's form."""
    cum, acc = [], 0
    for b, c in zip(h["buckets"] + [float("inf")], h["counts"]):
        acc += c
        cum.append(("+Inf" if b == float("inf") else str(float(b)), acc))
    return cum, h["sum"]
