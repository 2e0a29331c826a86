"""Kernels: each op has a pure-torch reference and (on CUDA) a Triton kernel with the same signature.

`get_backend(name)` returns a `KernelBackend`, the one object the engine calls:
    lora_shrink, lora_expand   (kernels/lora.py)
    lora_apply                 (shrink then expand with no collective between; one launch where it can)
    lora_decode_plan           (segments grouped by adapter for the decode kernels; None for torch)
    paged_attention, kv_append (kernels/attention.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class KernelBackend:
    name: str
    lora_shrink: Callable
    lora_expand: Callable
    paged_attention: Callable
    kv_append: Callable
    lora_apply: Callable
    lora_decode_plan: Callable = lambda seg_indptr, seg_slot, n_slots: None


def get_backend(name: str) -> KernelBackend:
    """`torch` (references, any device) or `triton` (GPU, or the CPU under TRITON_INTERPRET=1)."""
    if name == "torch":
        from kernels.attention import kv_append_ref, paged_attention_ref
        from kernels.lora import lora_apply_ref, lora_expand_ref, lora_shrink_ref

        return KernelBackend(
            "torch", lora_shrink_ref, lora_expand_ref, paged_attention_ref, kv_append_ref, lora_apply_ref
        )
    if name == "triton":
        from kernels.triton_backend import triton_backend

        return triton_backend()
    raise ValueError(f"unknown kernel backend {name!r}: expected 'torch' or 'triton'")
