"""Kernels: each op has a pure-torch reference and (on CUDA) a Triton kernel with the same signature.

`get_backend(name, lora_config)` returns a `KernelBackend`, the one object the engine calls:
    lora_shrink, lora_expand   (kernels/lora.py; references in kernels/lora_ref.py)
    lora_apply                 (shrink then expand with no collective between)
    lora_plan                  (the step's tokens grouped by adapter into tiles, kernels/lora_plan.py; None
                                for torch): lora_plan(seg_indptr, seg_slot, n_slots, num_tokens, max_seg_len)
    paged_attention, kv_append (kernels/attention.py)
    rms_norm, add_rms_norm, silu_mul, gelu_mul, rope   (kernels/elementwise.py: a layer's elementwise work)
The Triton backend carries its LoRA launch configuration (`kernels.lora.LoRAKernelConfig`), bound into its
LoRA functions: chosen once, never changed behind the engine's back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _no_plan(seg_indptr, seg_slot, n_slots, num_tokens, max_seg_len):
    return None


@dataclass(frozen=True)
class KernelBackend:
    name: str
    lora_shrink: Callable
    lora_expand: Callable
    paged_attention: Callable
    kv_append: Callable
    lora_apply: Callable
    rms_norm: Callable
    add_rms_norm: Callable
    silu_mul: Callable
    rope: Callable
    gelu_mul: Callable
    lora_plan: Callable = _no_plan
    lora_config: Any = None  # kernels.lora.LoRAKernelConfig of the Triton backend


def get_backend(name: str, lora_config: Any = None) -> KernelBackend:
    """`torch` (references, any device) or `triton` (GPU, or the CPU under TRITON_INTERPRET=1), the latter
    with `lora_config` (a kernels.lora.LoRAKernelConfig; default: its defaults)."""
    if name == "torch":
        from kernels.attention import kv_append_ref, paged_attention_ref
        from kernels.elementwise import add_rms_norm_ref, gelu_mul_ref, rms_norm_ref, rope_ref, silu_mul_ref
        from kernels.lora_ref import lora_apply_ref, lora_expand_ref, lora_shrink_ref

        return KernelBackend(
            "torch",
            lora_shrink_ref,
            lora_expand_ref,
            paged_attention_ref,
            kv_append_ref,
            lora_apply_ref,
            rms_norm_ref,
            add_rms_norm_ref,
            silu_mul_ref,
            rope_ref,
            gelu_mul_ref,
        )
    if name == "triton":
        from kernels.triton_backend import triton_backend

        return triton_backend(lora_config)
    raise ValueError(f"unknown kernel backend {name!r}: expected 'torch' or 'triton'")
