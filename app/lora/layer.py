"""The LoRA step a model layer calls: y += scale * (x @ A^T) @ B^T for every token's adapter, through
the kernel backend (shrink, then expand), with S-LoRA's tensor-parallel collectives.

Column-parallel group (qkv, gate_up): each rank computes its rows of x @ A^T into its columns of v;
a sum all-reduce of the small v [T, G, r] assembles it (an all-gather by another name); then each rank
expands into its own output slice y (already this rank's columns).
Row-parallel group (o, down): x is this rank's input shard, so v_n = x_n @ A_n^T is a partial sum. Each
rank expands its partial v_n through the whole B into its (not yet reduced) base partial sum; the base
model's all-reduce then sums sum_n v_n @ B^T = v @ B^T. LoRA sends nothing of its own there: its
communication rides entirely in the base all-reduce (S-LoRA all-reduces v first; on 2 x H200 a tiny
all-reduce costs about as much as the base one, measured in benchmarks/results/tp.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from app.model.context import ForwardContext

# Targets sharing one input, computed by one shrink/expand launch (and one fused base matmul); adapters
# are packed in this order (app/lora/adapter.py).
LORA_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
ROW_PARALLEL_GROUPS = {"o", "down"}


def targeted_groups(modules: Iterable[str]) -> tuple[str, ...]:
    """The LoRA groups (in LORA_GROUPS order) of which an adapter targeting `modules` holds some module: what
    a step's LoRA kernels and its decode graph run for it."""
    mods = set(modules)
    return tuple(g for g, ms in LORA_GROUPS.items() if mods.intersection(ms))


def apply_lora(
    ctx: ForwardContext, layer: int, group: str, x: torch.Tensor, y: torch.Tensor, out_sizes: list[int]
) -> None:
    """x: [T, K] input of the group; y: [T, sum(out_sizes)] its base output on this rank (in place).
    `out_sizes`: each target's output columns within y as this rank's LoRA B shard sees them."""
    meta = ctx.lora
    if meta is None or group not in meta.groups:  # no LoRA in the step, or none of its adapters targets it
        return
    g = meta.groups[group]
    pool = ctx.pool[layer]
    tp = ctx.tp
    row_parallel = group in ROW_PARALLEL_GROUPS
    # v in float32: the decode shrink may split K and add partial sums atomically (kernels/lora.py)
    v = torch.empty(x.shape[0], len(LORA_GROUPS[group]), meta.max_rank, dtype=torch.float32, device=x.device)
    hints = dict(aligned=True, plan=meta.plan)  # packed offsets are 64-aligned (app/lora/adapter.py)
    offsets = [0]
    for n in out_sizes:
        offsets.append(offsets[-1] + n)
    if row_parallel or tp.world_size == 1:  # no collective between shrink and expand (ranks_a == ranks_b)
        ctx.backend.lora_apply(
            y,
            x,
            v,
            pool,
            meta.page_table,
            g.a_offsets,
            g.b_offsets,
            g.ranks_a,
            meta.scales,
            meta.seg_indptr,
            meta.seg_slot,
            offsets,
            max_seg_len=meta.max_seg_len,
            **hints,
        )
        return
    ctx.backend.lora_shrink(
        x,
        pool,
        meta.page_table,
        g.a_offsets,
        g.ranks_a,
        meta.seg_indptr,
        meta.seg_slot,
        v,
        col_mult=tp.rank,
        max_seg_len=meta.max_seg_len,
        **hints,
    )
    tp.all_reduce(v)
    ctx.backend.lora_expand(
        y,
        v,
        pool,
        meta.page_table,
        g.b_offsets,
        g.ranks_b,
        meta.scales,
        meta.seg_indptr,
        meta.seg_slot,
        offsets,
        max_seg_len=meta.max_seg_len,
        **hints,
    )
