"""The Serve layer's settings: the ingress's (`IngressSettings`) and a TP group's (`GroupSettings`).

With `EngineConfig` (app/config.py) they make the one config tree that `BuildArgs` (deployments/builder.py)
nests: every setting is declared once, here or there, with its default and its description.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class IngressSettings(BaseModel):
    """The OpenAI ingress: access keys, request limits, routing and admission control."""

    model_config = ConfigDict(extra="forbid")
    api_keys: list[str] | None = Field(
        None,
        description="inference keys: when set, /v1 completions, chat and models need 'Authorization: Bearer <key>'",
    )
    admin_api_keys: list[str] | None = Field(
        None,
        description="keys for /v1/load_lora_adapter and /v1/unload_lora_adapter (and every other route); "
        "with api_keys set and no admin keys, run-time loads and unloads are refused (403)",
    )
    metrics_api_keys: list[str] | None = Field(
        None, description="keys for /metrics (admin keys work too); needed once any key is configured"
    )
    metrics_open: bool = Field(
        False, description="/metrics without a key even when keys are configured (a private scrape listener)"
    )
    max_body_bytes: int = Field(
        8 << 20, ge=1, description="request bodies above this many bytes get 413 without being read"
    )
    max_choices_per_request: int = Field(256, ge=1, description="prompts x n of one request (400 above)")
    max_request_tokens: int = Field(
        1 << 20, ge=1, description="prompt tokens + max_tokens summed over a request's prompts x n (400 above)"
    )
    admission_ttft_slo_s: float | None = Field(
        None,
        gt=0,
        description="admission control: refuse (429 + Retry-After) requests whose predicted time to first "
        "token exceeds this; None = admit all (the engine's early abort is scheduler.early_abort_ttft_slo_s)",
    )
    request_start_header: str | None = Field(
        "X-Request-Start",
        description="a load balancer's stamp of when it received the request (nginx: "
        'proxy_set_header X-Request-Start "t=${msec}"); admission counts the time since then against '
        "admission_ttft_slo_s. None: count from the handler's start",
    )
    access_log_exclude: list[str] | None = Field(
        default_factory=lambda: ["/health", "/metrics"],
        description="ingress routes without an access log line (probes and scrapes); none (or []) logs every route",
    )
    dynamic_lora_loading_path: str | None = Field(
        None,
        description="a directory of adapter directories loaded on demand (Ray Serve LLM's setting of that "
        "name): a request naming an adapter that is not loaded but has a directory of that name there loads it "
        "on every group first, once however many requests ask at the same time; also an allowed adapter root",
    )
    generation_config: Literal["auto", "vllm"] = Field(
        "auto",
        description="auto: a request's unset temperature, top_p, top_k, min_p and repetition_penalty take the "
        "model's generation_config.json values (vLLM's default, --generation-config auto); vllm: the API's own "
        "defaults (temperature 1, no filters)",
    )
    max_dynamic_adapters: int | None = Field(
        None,
        ge=1,
        description="at most this many adapters loaded on demand (dynamic_lora_loading_path) by one ingress "
        "replica: before it loads another, it unloads the least recently requested one that no running request "
        "uses (Ray Serve LLM's max_num_adapters_per_replica); None: no limit",
    )
    reasoning_parser: Literal["qwen3", "deepseek_r1"] | None = Field(
        None,
        description="chat answers' <think>...</think> part returned as the message's `reasoning` (and "
        "`reasoning_content`) apart from its content, as vLLM's --reasoning-parser (app/reasoning.py)",
    )
    routing_eps: float = Field(0.25, ge=0, description="bounded load: a group may take (1+eps) x the mean")
    stats_poll_interval_s: float = Field(
        0.25, gt=0, description="how often the ingress polls a group's stats while the group has work"
    )
    stats_idle_poll_interval_s: float = Field(
        2.0,
        gt=0,
        description="how often it polls a group that is idle: its last stats showed no request running or "
        "waiting and this replica has sent it none since (a poll costs the group ~5 ms of CPU in Serve's "
        "request path); a request sent there brings back the fast polls within stats_poll_interval_s",
    )
    stats_poll_timeout_s: float = Field(5.0, gt=0, description="a group that does not answer a poll in time is down")


class GroupSettings(BaseModel):
    """One TP group (`deployments/group.py` `SLoRAGroup`): its size and how it streams."""

    model_config = ConfigDict(extra="forbid")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs (rank actors) of one group")
    stream_interval_s: float = Field(
        0.05,
        ge=0,
        description="a stream sends its new tokens at most this often (its first tokens and its end at once): "
        "Ray Serve LLM's default of 50 ms; it costs far less CPU per token in the group, the ingress and Serve's "
        "proxy (at 8 req/s on an H200, HTTP TTFT p50 over in-process 248 -> 46 ms, benchmarks/results/issue16). "
        "0: one chunk per engine step, for tools that time every token (guidellm's inter-token latency)",
    )
