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
    enable_prefix_caching: bool = Field(
        True,
        description="automatic prefix caching (vLLM's): full KV pages stay cached after their request, keyed by "
        "adapter and token ids, and a request with the same adapter and leading tokens reuses them instead of "
        "prefilling them; idle cached pages are evicted first when pages are needed",
    )


class SchedulerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_num_seqs: int | None = Field(
        None, ge=1, description="requests running at once; None: 256 on a GPU, 64 on the CPU"
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="tokens per step (prefill chunks + decodes); None: 4096 on a GPU, 2048 on the CPU"
    )
    max_model_len: int | None = Field(None, ge=2, description="prompt + output tokens; None = model's limit")
    early_abort_ttft_slo_s: float | None = Field(
        None,
        gt=0,
        description="early abort (S-LoRA): the first-token deadline of a request, counted from its arrival; a "
        "queued request that has produced no token and can no longer meet it is dropped (see early_abort); "
        "None = no abort (admission control at the ingress: ingress.admission_ttft_slo_s)",
    )
    early_abort: Literal["expired", "predicted"] = Field(
        "expired",
        description="with early_abort_ttft_slo_s: expired = drop queued requests whose deadline has passed; "
        "predicted = the paper's early abort: also drop those whose wait predicted from the measured admission "
        "rate misses the deadline, and serve the newest first while requests arrive faster than they are admitted",
    )
    queue_order: Literal["fcfs", "lcfs", "priority"] = Field(
        "fcfs",
        description="order in which waiting requests are admitted: first come first served, last come first "
        "served (preempted requests go first in both), or priority (vLLM's scheduling policy: lowest "
        "SamplingParams.priority first, then oldest, preempted requests among them; a running request that needs "
        "a page preempts those of lowest priority first)",
    )
    admission_headroom_pages: int = Field(
        1,
        ge=0,
        description="a waiting request is admitted while a request runs only if, once its adapter and first "
        "chunk are placed, the pool keeps at least this many allocatable pages per running request (room for "
        "their growth, so an admission rarely forces a preemption by recompute); 0 = admit whatever fits",
    )


class LoRAKernelOverrides(BaseModel):
    """Overrides of the Triton LoRA kernels' launch configuration per regime (kernels/lora.py
    LoRATileConfig fields: tile_m, shrink_r, shrink_k, shrink_split, shrink_programs, expand_r, expand_n, *_warps,
    *_stages),
    e.g. `{"mixed": {"tile_m": 32}}`; unset fields keep kernels/lora.py's defaults."""

    model_config = ConfigDict(extra="forbid")
    decode: dict[str, int] = Field(default_factory=dict, description="steps whose segments are all one token")
    mixed: dict[str, int] = Field(default_factory=dict, description="every other step")

    def config(self):
        """The kernels.lora.LoRAKernelConfig these overrides give (ValueError for an unknown field)."""
        import dataclasses

        from kernels.lora import DEFAULT_CONFIG

        try:
            return dataclasses.replace(
                DEFAULT_CONFIG,
                decode=dataclasses.replace(DEFAULT_CONFIG.decode, **self.decode),
                mixed=dataclasses.replace(DEFAULT_CONFIG.mixed, **self.mixed),
            )
        except TypeError as e:
            raise ValueError(f"lora.kernels: {e}") from None


class LoRAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_lora_rank: int = Field(
        64, ge=1, le=1024, description="largest adapter rank accepted (CUDA graphs and warm-up are sized by it)"
    )
    max_loras_per_batch: int | None = Field(
        None, ge=1, description="distinct adapters in one step; None: max_num_seqs (the kernels take any mix)"
    )
    prefetch: bool = Field(
        True,
        description="copy adapters of queued requests into free pages ahead of admission, overlapping the running step "
        "(as far ahead as the next step can admit: the queued prompts of one step's token budget)",
    )
    cluster_min_adapters: int | None = Field(
        None,
        ge=1,
        description="adapter clustering (S-LoRA): once the running batch holds this many distinct adapters, "
        "waiting requests whose adapter is already in it are admitted before the others; None = off",
    )
    cluster_max_wait_s: float = Field(
        2.0,
        ge=0,
        description="aging bound of clustering: a request that has waited this long keeps its place in the queue "
        "order, so that no adapter starves",
    )
    keep_idle_adapters: bool = Field(
        True,
        description="keep an adapter's pages after its last request finishes (a cache, evicted LRU when pages "
        "are needed); False frees them at once, as S-LoRA does",
    )
    static_adapter_pages: int | None = Field(
        None,
        ge=1,
        description="a static split of the pool: adapters may hold at most this many pages and KV the rest; "
        "None = one unified pool (any free page serves either)",
    )
    allowed_adapter_roots: list[str] = Field(
        default_factory=list, description="run-time loads must come from under these roots"
    )
    load_timeout_s: float = Field(
        120.0, gt=0, description="time budget to read and validate one adapter loaded at run time"
    )
    overlap_shrink: bool = Field(
        True,
        description="in the decode CUDA graphs, launch each LoRA shrink on a second CUDA stream beside the base matmul "
        "of the same input, so that the two overlap (the expand follows the matmul on the main stream): +4% req/s on "
        "a 32-request burst over 8 adapters on an H100; eager steps with prefill keep one stream (the overlap made "
        "them slower), benchmarks/results/session-2026-12-06e/",
    )
    kernels: LoRAKernelOverrides = Field(default_factory=LoRAKernelOverrides)


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
    cuda_graph_slot_bounds: tuple[int, ...] = Field(
        (16,),
        description="adapter counts below max_loras_per_batch for which every decode graph is also captured with its "
        "LoRA plan built for that many adapter slots: a step of at most that many adapters replays it, and its LoRA "
        "kernels launch no programs for the empty tiles of a full-size plan (one adapter: +1.5% req/s in saturated "
        "S2 on an H100, benchmarks/results/session-2026-12-06d/); each graph keeps its own [batch bucket, vocab] "
        "float32 logits, so a bound costs that much GPU memory per bucket above it and LoRA group set; () = one "
        "graph per bucket and group set",
    )
    warmup: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run every kernel variant and capture every CUDA graph once at start (Engine.warmup), "
        "so that the first requests do not wait for Triton compiles; auto = on CUDA only",
    )
    async_scheduling: bool | None = Field(
        None,
        description="schedule and launch step N+1 before reading step N's sampled tokens (they stay on the device "
        "and feed N+1's inputs there), so the GPU's queue does not drain while the host schedules; steps whose "
        "next step needs token values on the host (penalties, logit bias, structured output) run synchronously; "
        "tensor-parallel executors always do; None = on CUDA only",
    )
    warmup_prompt_lens: tuple[int, ...] = Field(
        (1, 9, 17, 40, 100, 600),
        description="prompt lengths of the warm-up prefills, one length per step (kernels pick their variants "
        "from a step's longest prompt): 1 (decode), <= 16 and > 16 query rows (attention prefill tiles), "
        "prompts of one and of several LoRA tiles, > 512 keys (split decode attention)",
    )
    warmup_ranks: tuple[int, ...] = Field(
        (16, 32, 64),
        description="ranks of the warm-up adapters (capped at max_lora_rank): the LoRA kernels' rank-block "
        "variants (kernels/lora.py: blocks of v's width)",
    )
    seed: int = 0
    load_format: Literal["safetensors", "dummy"] = Field(
        "safetensors",
        description="dummy: random weights (std 0.02) made on the device instead of read from the model "
        "directory (which then needs only config.json and a tokenizer): benchmarks, as vLLM's --load-format dummy",
    )
    pool: PoolConfig = Field(default_factory=PoolConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)

    @field_validator("cuda_graph_slot_bounds")
    @classmethod
    def _slot_bounds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 1 for n in v):
            raise ValueError(f"cuda_graph_slot_bounds must be positive adapter counts, got {v}")
        return tuple(sorted(set(v)))

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

    def with_device_defaults(self, device: str | None = None) -> EngineConfig:
        """This config with its unset sizes (None) filled for the device it runs on (`device`, default
        `resolved_device()`): max_num_seqs 256 and max_num_batched_tokens 4096 on CUDA (an H200 keeps 256
        7B-model sequences and a 4096-token prefill chunk busy without queueing decodes behind it), 64 and
        2048 on the CPU; max_loras_per_batch = max_num_seqs. Engine, ModelRunner and the TP group apply it."""
        gpu = (device or self.resolved_device()) == "cuda"
        sch, lora = self.scheduler, self.lora
        seqs = sch.max_num_seqs or (256 if gpu else 64)
        return self.model_copy(
            update={
                "scheduler": sch.model_copy(
                    update={
                        "max_num_seqs": seqs,
                        "max_num_batched_tokens": sch.max_num_batched_tokens or (4096 if gpu else 2048),
                    }
                ),
                "lora": lora.model_copy(update={"max_loras_per_batch": lora.max_loras_per_batch or seqs}),
            }
        )

    def resolved_async_scheduling(self, device: str | None = None) -> bool:
        """`async_scheduling`, with None resolved for the device the engine runs on (on for CUDA)."""
        if self.async_scheduling is not None:
            return self.async_scheduling
        return (device or self.resolved_device()) == "cuda"

    def lora_kernel_config(self):
        """The Triton LoRA kernels' launch configuration (kernels.lora.LoRAKernelConfig)."""
        return self.lora.kernels.config()

    def resolved_backend(self) -> str:
        if self.kernel_backend != "auto":
            return self.kernel_backend
        return "triton" if self.resolved_device() == "cuda" else "torch"
