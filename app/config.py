"""The one typed config tree (pydantic): model, pool, scheduler, LoRA and parallelism settings.

`EngineConfig` is what `LLM(...)` and the Ray Serve builder construct; presets live in `configs/`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DType = Literal["float32", "float16", "bfloat16", "auto"]


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    page_size: int = Field(16, ge=1, description="tokens per KV page")
    num_pages: int | None = Field(None, ge=2, description="pages in the pool; None = size from memory")
    gpu_memory_fraction: float = Field(
        0.85, gt=0, le=1.0, description="share of free GPU memory given to the pool (CUDA)"
    )
    cpu_pool_bytes: int = Field(256 << 20, description="pool size when running on the CPU and num_pages is None")


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_num_seqs: int = Field(64, ge=1, description="requests running at once")
    max_num_batched_tokens: int = Field(2048, ge=16, description="tokens per step (prefill chunks + decodes)")
    max_model_len: int | None = Field(None, ge=2, description="prompt + output tokens; None = model's limit")
    ttft_slo_s: float | None = Field(
        None,
        gt=0,
        description="early abort (S-LoRA): a queued request that has "
        "produced no token and waited longer than this is dropped; None = FCFS",
    )


class LoRAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_lora_rank: int = Field(256, ge=1, le=1024)
    max_loras_per_batch: int = Field(64, ge=1, description="distinct adapters in one step")
    prefetch: bool = Field(
        True,
        description="copy adapters of queued requests into free pages ahead of admission, overlapping the running step",
    )
    allowed_adapter_roots: list[str] = Field(
        default_factory=list, description="run-time loads must come from under these roots"
    )
    load_timeout_s: float = Field(
        120.0, gt=0, description="time budget to read and validate one adapter loaded at run time"
    )


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="Hugging Face model directory")
    tokenizer: str | None = None
    dtype: DType = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    kernel_backend: Literal["auto", "torch", "triton"] = "auto"
    cuda_graphs: bool = Field(
        True, description="replay captured CUDA graphs for decode-only steps (Triton backend, one GPU)"
    )
    warmup: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run every kernel variant and capture every CUDA graph once at start (Engine.warmup), "
        "so that the first requests do not wait for Triton compiles; auto = on CUDA only",
    )
    seed: int = 0
    pool: PoolConfig = Field(default_factory=PoolConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup_from_yaml(cls, v):
        """YAML reads a bare `on` / `off` as a boolean."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_backend(self) -> str:
        if self.kernel_backend != "auto":
            return self.kernel_backend
        return "triton" if self.resolved_device() == "cuda" else "torch"
