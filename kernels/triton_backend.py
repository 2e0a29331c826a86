"""The Triton kernel backend: the launch wrappers of kernels/lora.py and kernels/attention.py, which take
the same arguments as the torch references. Runs on CUDA, or on the CPU under TRITON_INTERPRET=1."""

from __future__ import annotations

from kernels import KernelBackend
from kernels.attention import kv_append, paged_attention
from kernels.lora import lora_apply, lora_decode_plan, lora_expand, lora_shrink


def triton_backend() -> KernelBackend:
    return KernelBackend("triton", lora_shrink, lora_expand, paged_attention, kv_append, lora_apply, lora_decode_plan)
