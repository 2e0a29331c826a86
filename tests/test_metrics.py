"""deployments/metrics.py without Ray: the per-adapter label bound, the finish reasons, and the ingress
collector's text (sloray_ and vllm: series) read back with prometheus_client's parser."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deployments.metrics import MAX_ADAPTER_LABELS, OTHER_ADAPTERS, GroupMetrics, ServiceCollector


def _snapshot(m: GroupMetrics, name: str = "g0") -> dict:
    gauges = dict.fromkeys(
        ("num_requests_running", "num_requests_waiting", "queued_prefill_tokens", "resident_adapters"), 0
    )
    return {
        "name": name,
        "metrics": m.snapshot(),
        "gauges": gauges | {"registered_adapters": 3},
        "pool": {
            "total": 200,
            "kv": 50,
            "adapter": 10,
            "adapter_pinned": 2,
            "free": 130,
            "kv_cached": 10,
            "kv_fragmentation": 0.1,
        },
        "lora": {"running": ["a1", "a2"], "waiting": ["a3"], "max_lora": 8},
        "time": 1234.5,
    }


def test_adapter_labels_are_bounded_and_never_move():
    m = GroupMetrics("g0", "base", ray_export=False)
    m.adapter_request(None, 7)  # the base model: under its model name
    for i in range(MAX_ADAPTER_LABELS + 10):
        m.adapter_request(f"a{i}", 3)
    m.adapter_tokens("a0", 5)
    m.adapter_tokens(f"a{MAX_ADAPTER_LABELS + 5}", 4)  # a late adapter: "other"
    labels = set(m.adapters)
    assert len(labels) == MAX_ADAPTER_LABELS + 1 and OTHER_ADAPTERS in labels and "base" in labels
    assert m.adapters["base"] == {"adapter_requests": 1, "adapter_prompt_tokens": 7, "adapter_generation_tokens": 0}
    assert m.adapters["a0"]["adapter_generation_tokens"] == 5
    # base + a0..a30 have labels; a31.. (11 adapters) count under other
    assert (
        m.adapters[OTHER_ADAPTERS]["adapter_requests"] == 11
        and m.adapters[OTHER_ADAPTERS]["adapter_generation_tokens"] == 4
    )
    m.adapter_request("a0", 1)  # an adapter with a label keeps it
    assert m.adapters["a0"]["adapter_requests"] == 2 and set(m.adapters) == labels


def test_collector_renders_sloray_and_vllm_series():
    m = GroupMetrics("g0", "base", ray_export=False)
    m.request_finished("stop")
    m.request_finished("length")
    m.request_finished("length")
    m.inc("requests_aborted")
    m.observe("inter_token_latency_seconds", 0.012)
    m.adapter_request("a1", 4)
    m.set_counter("prefix_cache_queries", 300)
    m.set_counter("prefix_cache_hits", 128)
    registry = CollectorRegistry()
    registry.register(ServiceCollector(lambda: {"g0": _snapshot(m), "g1": None}, "served"))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}

    def values(name: str, sample: str, key: str) -> dict:
        return {s.labels[key]: s.value for s in fams[name].samples if s.name == sample}

    assert values("vllm:request_success", "vllm:request_success_total", "finished_reason") == {
        "stop": 1,
        "length": 2,
        "abort": 1,
    }
    assert values("sloray_request_finished", "sloray_request_finished_total", "finished_reason") == {
        "stop": 1,
        "length": 2,
    }
    assert values("vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc", "group") == {"g0": 0.25}
    tpot = values("vllm:time_per_output_token_seconds", "vllm:time_per_output_token_seconds_count", "group")
    assert tpot == {"g0": 1.0}
    assert values("sloray_group_up", "sloray_group_up", "group") == {"g0": 1.0, "g1": 0.0}
    (info,) = fams["vllm:lora_requests_info"].samples
    assert info.value == 1234.5 and info.labels["running_lora_adapters"] == "a1,a2"
    assert info.labels["waiting_lora_adapters"] == "a3" and info.labels["max_lora"] == "8"
    assert info.labels["model_name"] == "served"
    assert values("sloray_adapter_requests", "sloray_adapter_requests_total", "adapter") == {"a1": 1.0}
    assert values("sloray_pool_pages", "sloray_pool_pages", "kind") == {
        "kv": 50, "adapter": 10, "adapter_pinned": 2, "free": 130, "kv_cached": 10
    }  # fmt: skip
    for name, want in (("prefix_cache_queries", 300), ("prefix_cache_hits", 128)):
        assert values(f"vllm:{name}", f"vllm:{name}_total", "group") == {"g0": want}
        assert values(f"sloray_{name}", f"sloray_{name}_total", "group") == {"g0": want}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:prompt_tokens",
        "vllm:num_preemptions",
    ):
        assert next(s.value for s in fams[name].samples if s.labels["group"] == "g0") == 0  # at zero from start
