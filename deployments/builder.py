"""`build_app(args) -> Application`: the Ray Serve entry point (`import_path: deployments.builder:build_app`).

In:  `BuildArgs` (typed; from serve_config.yaml `args:` or `serve run deployments.builder:build_app k=v ...`,
     where every value arrives as a string and pydantic coerces it).
Out: the application: `num_groups` TP-group deployments (`SLoRAGroup-<i>`, one replica each, so that the
     ingress can route to a chosen group) bound into the OpenAI ingress (`OpenAIIngress`).
The flat user-facing arguments map onto the one `EngineConfig` tree (app/config.py); `engine:` is a
nested override of that tree for everything else (e.g. `engine: {pool: {page_size: 32}}`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.serve import Application

from app.config import DType, EngineConfig

DEMO = "demo"


class BuildArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEMO, description="Hugging Face model directory, or 'demo' for the embedded demo model")
    served_model_name: str | None = Field(None, description="the base model's `model` id (default: dir name)")
    tokenizer: str | None = None
    adapter_dir: str | None = Field(
        None,
        description="directory of PEFT adapter dirs loaded at start (default: the demo's adapters for the demo model)",
    )
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: DType = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    num_groups: int = Field(1, ge=1, description="TP-group replicas (each a full copy of the model)")
    max_num_seqs: int | None = Field(None, ge=1, description="None: 256 on a GPU, 64 on the CPU")
    max_num_batched_tokens: int | None = Field(None, ge=16)
    max_model_len: int | None = Field(None, ge=2)
    gpu_memory_fraction: float = Field(0.85, gt=0, le=1, description="share of free GPU memory for the pool")
    max_lora_rank: int = Field(64, ge=1, le=1024)
    max_loras_per_batch: int | None = Field(None, ge=1)
    ttft_slo_s: float | None = Field(
        None,
        gt=0,
        description="admission control: refuse (429) requests whose predicted time to first token exceeds this",
    )
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
    allowed_adapter_roots: list[str] | None = Field(
        None, description="run-time loads must come from under these (default: [adapter_dir])"
    )
    max_body_bytes: int = Field(
        8 << 20, ge=1, description="request bodies above this many bytes get 413 without being read"
    )
    max_choices_per_request: int = Field(256, ge=1, description="prompts x n of one request (400 above)")
    max_request_tokens: int = Field(
        1 << 20, ge=1, description="prompt tokens + max_tokens summed over a request's prompts x n (400 above)"
    )
    routing_eps: float = Field(0.25, ge=0, description="bounded load: a group may take (1+eps) x the mean")
    stats_poll_interval_s: float = Field(0.25, gt=0)
    stream_interval_s: float = Field(
        0.0,
        ge=0,
        description="0 (default): one chunk per engine step, so that token-latency tools read every token's time; "
        "> 0: a stream sends its new tokens at most this often (first tokens and the end at once), which costs "
        "less CPU per token in the group and the ingress",
    )
    access_log_exclude: list[str] | None = Field(
        default_factory=lambda: ["/health", "/metrics"],
        description="ingress routes without an access log line (probes and scrapes); none (or []) logs every route",
    )
    num_ingress_replicas: int = Field(1, ge=1)
    ingress_num_cpus: float = Field(
        0.0, ge=0, description="CPUs reserved for an ingress replica (light: tokenization and HTTP)"
    )
    group_num_cpus: float | None = Field(
        None,
        ge=0,
        description="CPUs of a group replica (default: 1 for TP=1; 0 for TP>1, whose rank actors hold the CPUs)",
    )
    engine: dict[str, Any] = Field(default_factory=dict, description="nested EngineConfig override")

    @field_validator(
        "api_keys", "admin_api_keys", "metrics_api_keys", "allowed_adapter_roots", "access_log_exclude", mode="before"
    )
    @classmethod
    def _list_from_cli(cls, v):
        """`key=a,b` or `key=["a","b"]` on the command line."""
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [x for x in (s.strip() for s in v.split(",")) if x] or None
        return v

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_from_cli(cls, v):
        return json.loads(v) if isinstance(v, str) else v

    @field_validator("ttft_slo_s", "served_model_name", "adapter_dir", "tokenizer", mode="before")
    @classmethod
    def _none_from_cli(cls, v):
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "null") else v


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(args: BuildArgs) -> tuple[EngineConfig, dict[str, str], str]:
    """(EngineConfig, {adapter name: path} loaded at start, served model name)."""
    from app.llm import adapter_dirs

    model, adapter_dir, served = args.model, args.adapter_dir, args.served_model_name
    if model == DEMO:
        from app.demo import build_demo

        root = build_demo()
        model = str(root / "model")
        adapter_dir = adapter_dir or str(root / "adapters")
        served = served or "sloray-demo"
    served = served or Path(model).name
    roots = (
        args.allowed_adapter_roots if args.allowed_adapter_roots is not None else ([adapter_dir] if adapter_dir else [])
    )
    flat: dict[str, Any] = {
        "model": model,
        "tokenizer": args.tokenizer,
        "dtype": args.dtype,
        "device": args.device,
        "pool": {"gpu_memory_fraction": args.gpu_memory_fraction},
        "scheduler": {"max_num_seqs": args.max_num_seqs},  # None: sized for the device (EngineConfig)
        "lora": {"max_lora_rank": args.max_lora_rank, "allowed_adapter_roots": [str(Path(r)) for r in roots]},
    }
    if args.max_num_batched_tokens:
        flat["scheduler"]["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.max_model_len:
        flat["scheduler"]["max_model_len"] = args.max_model_len
    if args.max_loras_per_batch:
        flat["lora"]["max_loras_per_batch"] = args.max_loras_per_batch
    cfg = EngineConfig(**_deep_merge(flat, args.engine))
    return cfg, adapter_dirs(adapter_dir), served


def _uses_gpu(cfg: EngineConfig) -> bool:
    if cfg.device != "auto":
        return cfg.device == "cuda"
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def build_app(args: BuildArgs | dict) -> Application:
    from app.model.llama import ModelArgs
    from deployments.group import GroupDeployment
    from deployments.ingress import IngressConfig, IngressDeployment

    if not isinstance(args, BuildArgs):
        args = BuildArgs(**args)
    cfg, adapters, served = resolve(args)
    tp = args.tensor_parallel_size
    gpu = _uses_gpu(cfg)
    # TP=1: the engine runs in the group replica itself, which takes the GPU. TP>1: the TPExecutor makes
    # its own STRICT_PACK placement group of `tp` GPU bundles and rank actors; the replica only schedules.
    num_cpus = args.group_num_cpus if args.group_num_cpus is not None else (1.0 if tp == 1 else 0.0)
    actor_opts = {"num_cpus": num_cpus, "num_gpus": 1 if gpu and tp == 1 else 0}
    groups = [
        GroupDeployment.options(name=f"SLoRAGroup-{i}", num_replicas=1, ray_actor_options=actor_opts).bind(
            name=f"SLoRAGroup-{i}",
            cfg=cfg.model_dump(),
            adapters=adapters,
            tensor_parallel_size=tp,
            num_threads=max(1, int(num_cpus)) if not gpu and tp == 1 else None,
            stream_interval_s=args.stream_interval_s,
            served_model_name=served,
        )
        for i in range(args.num_groups)
    ]
    max_model_len = cfg.scheduler.max_model_len or ModelArgs.from_dir(cfg.model).max_position_embeddings
    ingress_cfg = IngressConfig(
        served_model_name=served,
        model_path=cfg.model,
        tokenizer_path=cfg.tokenizer or cfg.model,
        max_model_len=max_model_len,
        api_keys=args.api_keys,
        admin_api_keys=args.admin_api_keys,
        metrics_api_keys=args.metrics_api_keys,
        metrics_open=args.metrics_open,
        allowed_adapter_roots=cfg.lora.allowed_adapter_roots,
        ttft_slo_s=args.ttft_slo_s,
        max_body_bytes=args.max_body_bytes,
        max_choices_per_request=args.max_choices_per_request,
        max_request_tokens=args.max_request_tokens,
        routing_eps=args.routing_eps,
        poll_interval_s=args.stats_poll_interval_s,
        access_log_exclude=args.access_log_exclude or [],
    )
    return IngressDeployment.options(
        num_replicas=args.num_ingress_replicas,
        ray_actor_options={"num_cpus": args.ingress_num_cpus},
    ).bind(groups, ingress_cfg.model_dump())
