"""The Triton kernel backend: the launch wrappers of kernels/lora.py (bound to one LoRAKernelConfig) and
kernels/attention.py and kernels/elementwise.py, which take the same arguments as the torch references. Runs on
CUDA, or on the CPU under TRITON_INTERPRET=1."""

from __future__ import annotations

from functools import partial

from kernels import KernelBackend
from kernels.attention import kv_append, paged_attention
from kernels.elementwise import add_rms_norm, gelu_mul, rms_norm, rope, silu_mul
from kernels.lora import DEFAULT_CONFIG, LoRAKernelConfig, lora_apply, lora_expand, lora_shrink, plan_for_step


def triton_backend(lora_config: LoRAKernelConfig | None = None) -> KernelBackend:
    c = lora_config or DEFAULT_CONFIG
    return KernelBackend(
        "triton",
        partial(lora_shrink, config=c),
        partial(lora_expand, config=c),
        paged_attention,
        kv_append,
        partial(lora_apply, config=c),
        rms_norm,
        add_rms_norm,
        silu_mul,
        rope,
        gelu_mul,
        partial(plan_for_step, config=c),
        c,
    )
