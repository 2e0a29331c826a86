"""`build_app(args) -> Application`: the Ray Serve entry point (`import_path: deployments.builder:build_app`).

In:  `BuildArgs` (typed; from serve_config.yaml `args:` or `serve run deployments.builder:build_app k=v ...`,
     where every value arrives as a string and pydantic coerces it).
Out: the application: `num_groups` TP-group deployments (`SLoRAGroup-<i>`, one replica each, so that the
     ingress can route to a chosen group) bound into the OpenAI ingress (`OpenAIIngress`).

`BuildArgs` declares only the deployment's shape; every other setting is declared once in the config tree
it belongs to and nested here: `engine:` (EngineConfig, app/config.py), `ingress:` (IngressSettings) and
`group:` (GroupSettings, deployments/config.py). A flat key that names a setting of one of those trees is
a shorthand for it (`max_num_seqs: 64` = `engine: {scheduler: {max_num_seqs: 64}}`, `api_keys: [k]` =
`ingress: {api_keys: [k]}`): `FLAT_KEYS` lists them, derived from the trees, so no setting has two names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray.serve import Application

from app.config import EngineConfig, LoRAConfig, PoolConfig, SchedulerConfig
from deployments.config import GroupSettings, IngressSettings

if TYPE_CHECKING:
    from deployments.ingress import IngressConfig

DEMO = "demo"


def _flat_keys() -> dict[str, tuple[str, ...]]:
    """{setting name: its path in BuildArgs}: the fields of EngineConfig (and of its pool, scheduler and
    lora sections), IngressSettings and GroupSettings. A name in two trees would be ambiguous: refused."""
    keys: dict[str, tuple[str, ...]] = {}
    sections = {"pool", "scheduler", "lora"}
    trees: list[tuple[tuple[str, ...], type[BaseModel]]] = [
        (("engine",), EngineConfig),
        (("engine", "pool"), PoolConfig),
        (("engine", "scheduler"), SchedulerConfig),
        (("engine", "lora"), LoRAConfig),
        (("ingress",), IngressSettings),
        (("group",), GroupSettings),
    ]
    for path, model in trees:
        for name in model.model_fields:
            if path == ("engine",) and (name in sections or name == "model"):
                continue  # sections are listed field by field; `model` is BuildArgs' own (it may be "demo")
            if name in keys:
                raise RuntimeError(f"setting {name!r} is declared twice: {keys[name]} and {path}")
            keys[name] = (*path, name)
    return keys


FLAT_KEYS = _flat_keys()
# Values that `serve run ... k=v` passes as text: comma-separated or JSON lists, and "none" for None.
_LIST_KEYS = {"api_keys", "admin_api_keys", "metrics_api_keys", "allowed_adapter_roots", "access_log_exclude"}
_NONE_KEYS = {
    "admission_ttft_slo_s",
    "tokenizer",
    "request_start_header",
    "reasoning_parser",
    "dynamic_lora_loading_path",
}


def _from_cli(key: str, v: Any) -> Any:
    if not isinstance(v, str):
        return v
    if key in _LIST_KEYS:
        v = v.strip()
        if v.startswith("["):
            return json.loads(v)
        return [x for x in (s.strip() for s in v.split(",")) if x] or None
    if key in _NONE_KEYS and v.strip().lower() in ("", "none", "null"):
        return None
    return v


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class BuildArgs(BaseModel):
    """The application's arguments: the deployment's shape, and the nested config trees (see the module
    docstring for the flat shorthands)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEMO, description="Hugging Face model directory, or 'demo' for the embedded demo model")
    served_model_name: str | None = Field(None, description="the base model's `model` id (default: dir name)")
    adapter_dir: str | None = Field(
        None,
        description="directory of PEFT adapter dirs loaded at start (default: the demo's adapters for the demo "
        "model); also the default of lora.allowed_adapter_roots",
    )
    num_groups: int = Field(1, ge=1, description="TP-group replicas (each a full copy of the model)")
    num_ingress_replicas: int = Field(1, ge=1)
    ingress_num_cpus: float = Field(
        0.0, ge=0, description="CPUs reserved for an ingress replica (light: tokenization and HTTP)"
    )
    group_num_cpus: float | None = Field(
        None,
        ge=0,
        description="CPUs of a group replica (default: 1 for TP=1; 0 for TP>1, whose rank actors hold the CPUs)",
    )
    engine: dict[str, Any] = Field(
        default_factory=dict, description="EngineConfig (app/config.py) without `model`, nested; checked here"
    )
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    group: GroupSettings = Field(default_factory=GroupSettings)

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, data: Any) -> Any:
        """Moves each flat shorthand key (FLAT_KEYS) to its place in the nested trees (a setting given both
        flat and nested is refused)."""
        if not isinstance(data, dict):
            return data
        out = {k: v for k, v in data.items() if k not in FLAT_KEYS}
        for key in ("engine", "ingress", "group"):
            if isinstance(out.get(key), str):  # `engine='{"pool": ...}'` on the command line
                out[key] = json.loads(out[key])
            elif isinstance(out.get(key), BaseModel):
                out[key] = out[key].model_dump(exclude_unset=True)
        for key, value in data.items():
            if key not in FLAT_KEYS:
                continue
            *parents, name = FLAT_KEYS[key]
            node = out
            for p in parents:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ValueError(f"{key}: {p} is not a mapping")
            if name in node:
                raise ValueError(f"{key} is given twice (flat and in {'.'.join(parents)})")
            node[name] = _from_cli(key, value)
        return out

    @field_validator("served_model_name", "adapter_dir", mode="before")
    @classmethod
    def _none_from_cli(cls, v):
        return None if isinstance(v, str) and v.strip().lower() in ("", "none", "null") else v

    @model_validator(mode="after")
    def _check_engine(self) -> BuildArgs:
        """The engine overrides must make a valid EngineConfig (the model directory is read later)."""
        EngineConfig(**{**self.engine, "model": self.model})
        return self


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
    lora = dict(args.engine.get("lora") or {})
    roots = lora.get("allowed_adapter_roots")
    if roots is None:
        roots = [adapter_dir] if adapter_dir else []
    dynamic = args.ingress.dynamic_lora_loading_path
    lora["allowed_adapter_roots"] = [str(Path(r)) for r in [*roots, *([dynamic] if dynamic else [])]]
    cfg = EngineConfig(**{**args.engine, "lora": lora, "model": model})
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
    from deployments.group import GroupDeployment
    from deployments.ingress import IngressDeployment

    if not isinstance(args, BuildArgs):
        args = BuildArgs(**args)
    cfg, adapters, served = resolve(args)
    tp = args.group.tensor_parallel_size
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
            settings=args.group.model_dump(),
            served_model_name=served,
            num_threads=max(1, int(num_cpus)) if not gpu and tp == 1 else None,
        )
        for i in range(args.num_groups)
    ]
    return IngressDeployment.options(
        num_replicas=args.num_ingress_replicas,
        ray_actor_options={"num_cpus": args.ingress_num_cpus},
    ).bind(groups, ingress_config(args, cfg, served).model_dump())


def ingress_config(args: BuildArgs, cfg: EngineConfig, served: str) -> IngressConfig:
    """The ingress's settings with what it takes from the engine: the model's context limit as the engine
    computes it (ModelArgs.max_model_len: a sliding-window model's window included) and the adapter roots."""
    from app.model.llama import ModelArgs
    from deployments.ingress import IngressConfig

    return IngressConfig(
        **args.ingress.model_dump(),
        served_model_name=served,
        model_path=cfg.model,
        tokenizer_path=cfg.tokenizer or cfg.model,
        max_model_len=ModelArgs.from_dir(cfg.model).max_model_len(cfg.scheduler.max_model_len),
        allowed_adapter_roots=cfg.lora.allowed_adapter_roots,
        ingress_replicas=args.num_ingress_replicas,
        priority_scheduling=cfg.scheduler.queue_order == "priority",
    )
