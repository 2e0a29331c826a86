"""The one config tree: EngineConfig (app/config.py), IngressSettings and GroupSettings (deployments/config.py)
nested in the builder's BuildArgs, the flat shorthands, the YAML presets, and the context limit derived once
(no Ray cluster needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from app.config import EngineConfig, LoRAConfig, PoolConfig, SchedulerConfig
from app.engine import Engine
from app.request import SamplingParams
from deployments.builder import FLAT_KEYS, BuildArgs, ingress_config, resolve
from deployments.config import GroupSettings, IngressSettings
from deployments.ingress import IngressConfig

REPO = Path(__file__).resolve().parents[1]


def test_build_args_from_cli_strings():
    """`serve run deployments.builder:build_app k=v` passes strings: pydantic coerces them."""
    a = BuildArgs(
        **{
            "tensor_parallel_size": "2",
            "num_groups": "3",
            "admission_ttft_slo_s": "0.5",
            "api_keys": "k1,k2",
            "allowed_adapter_roots": '["/a", "/b"]',
            "engine": '{"pool": {"page_size": 32}}',
            "gpu_memory_fraction": "0.5",
            "device": "cpu",
            "dtype": "float32",
        }
    )
    assert (a.group.tensor_parallel_size, a.num_groups, a.ingress.admission_ttft_slo_s, a.ingress.api_keys) == (
        2,
        3,
        0.5,
        ["k1", "k2"],
    )
    assert a.engine == {
        "pool": {"page_size": 32, "gpu_memory_fraction": "0.5"},
        "lora": {"allowed_adapter_roots": ["/a", "/b"]},
        "device": "cpu",
        "dtype": "float32",
    }
    assert BuildArgs(admission_ttft_slo_s="none").ingress.admission_ttft_slo_s is None
    b = BuildArgs(admin_api_keys="a1", metrics_api_keys='["m1", "m2"]', metrics_open="true", max_body_bytes="1024")
    assert (b.ingress.admin_api_keys, b.ingress.metrics_api_keys, b.ingress.metrics_open, b.ingress.max_body_bytes) == (
        ["a1"],
        ["m1", "m2"],
        True,
        1024,
    )
    with pytest.raises(ValidationError):
        BuildArgs(no_such_arg=1)
    with pytest.raises(ValidationError):
        BuildArgs(device="tpu")  # checked against EngineConfig when BuildArgs is made
    with pytest.raises(ValidationError):
        BuildArgs(max_num_seqs="many")
    with pytest.raises(ValidationError):
        BuildArgs(ttft_slo_s=1.0)  # the old name: admission_ttft_slo_s or scheduler.early_abort_ttft_slo_s


def test_build_args_map_onto_engine_config():
    cfg, adapters, served = resolve(
        BuildArgs(
            max_num_seqs="8",
            max_lora_rank="16",
            gpu_memory_fraction="0.5",
            max_model_len="512",
            early_abort_ttft_slo_s="2.5",
            engine={"pool": {"page_size": 32}, "seed": 7},
        )
    )
    assert served == "sloray-demo" and "demo-r4-attn" in adapters
    assert (
        cfg.scheduler.max_num_seqs,
        cfg.lora.max_lora_rank,
        cfg.pool.gpu_memory_fraction,
        cfg.scheduler.max_model_len,
        cfg.scheduler.early_abort_ttft_slo_s,
        cfg.pool.page_size,
        cfg.seed,
    ) == (8, 16, 0.5, 512, 2.5, 32, 7)
    assert cfg.lora.allowed_adapter_roots == [str(Path(next(iter(adapters.values()))).parent)]
    with pytest.raises(ValidationError):
        BuildArgs(engine={"pool": {"no_such_field": 1}})
    with pytest.raises(ValidationError, match="given twice"):
        BuildArgs(max_num_seqs=8, engine={"scheduler": {"max_num_seqs": 16}})


def test_every_setting_has_one_name_and_one_default():
    """BuildArgs declares only the deployment's shape: every other setting is a field of exactly one tree,
    its flat shorthand is that field's own name, and its default is that field's default."""
    trees: list[type[BaseModel]] = [
        EngineConfig,
        PoolConfig,
        SchedulerConfig,
        LoRAConfig,
        IngressSettings,
        GroupSettings,
    ]
    names = [n for t in trees for n in t.model_fields if n not in ("model", "pool", "scheduler", "lora")]
    assert len(names) == len(set(names)) and set(names) == set(FLAT_KEYS)
    assert not set(BuildArgs.model_fields) & set(FLAT_KEYS)
    # what the ingress takes from elsewhere, filled by build_app (ingress_config), not settings of its own
    derived = set(IngressConfig.model_fields) - set(IngressSettings.model_fields)
    assert derived == {
        "served_model_name",
        "model_path",
        "tokenizer_path",
        "max_model_len",
        "allowed_adapter_roots",
        "ingress_replicas",
        "priority_scheduling",
    }
    cfg, _, _ = resolve(BuildArgs())
    assert cfg.lora.max_lora_rank == LoRAConfig().max_lora_rank
    assert cfg.pool.gpu_memory_fraction == PoolConfig().gpu_memory_fraction
    assert BuildArgs().ingress == IngressSettings() and BuildArgs().group == GroupSettings()


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(REPO)) for p in [REPO / "serve_config.yaml", *(REPO / "configs").glob("*.yaml")])
)
def test_serve_configs_are_valid(path):
    """Every preset parses into the tree (the engine part is checked against EngineConfig)."""
    doc = yaml.safe_load((REPO / path).read_text())
    assert doc["http_options"]["host"] == "127.0.0.1"  # private; exposed through a load balancer
    for app in doc["applications"]:
        assert app["import_path"] == "deployments.builder:build_app"
        args = BuildArgs(**app["args"])
        EngineConfig(**{**args.engine, "model": args.model})
        for key, value in app["args"].items():
            if key in FLAT_KEYS and value is not None:
                node: object = args
                for part in FLAT_KEYS[key]:
                    node = node[part] if isinstance(node, dict) else getattr(node, part)
                assert node == value or str(node) == str(value), (key, node, value)


def test_served_context_limit_reaches_the_ingress(demo, tmp_path):
    """A model served below its max_position_embeddings (LongRoPE: up to its pretraining length) has the same
    context limit in the ingress as in the engine, so the ingress refuses the prompts the engine would (it
    used max_position_embeddings)."""
    model = tmp_path / "model"
    shutil.copytree(demo / "model", model)
    c = json.loads((model / "config.json").read_text())
    half = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"]) // 2
    longrope = {"rope_type": "longrope", "short_factor": [1.0] * half, "long_factor": [2.0] * half,
                "original_max_position_embeddings": 48}  # fmt: skip
    c.update(max_position_embeddings=4096, rope_parameters={"rope_theta": 10000.0, **longrope})
    (model / "config.json").write_text(json.dumps(c))
    args = BuildArgs(model=str(model), adapter_dir=str(demo / "adapters"), device="cpu", dtype="float32")
    cfg, _, served = resolve(args)
    engine = Engine(cfg)
    assert engine.max_model_len == 48
    ing = ingress_config(args, cfg, served)
    assert ing.max_model_len == 48 and ing.allowed_adapter_roots == cfg.lora.allowed_adapter_roots
    with pytest.raises(ValueError, match="maximum context length 48"):
        engine.add_request(list(range(3, 51)), SamplingParams(max_tokens=1))  # 48 + 1 tokens
    capped, _, _ = resolve(BuildArgs(model=str(model), max_model_len=32, device="cpu", dtype="float32"))
    assert ingress_config(args, capped, served).max_model_len == 32
