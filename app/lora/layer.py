"""The LoRA step a model layer calls: y += scale * (x @ A^T) @ B^T for every token's adapter, through
the kernel backend, with S-LoRA's tensor-parallel collectives. Two calls around the group's base matmul:
`lora_start` launches the shrink v = x @ A^T (on a side stream when configured, overlapping the matmul),
`lora_finish` adds the expand v @ B^T into the matmul's output.

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
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from app.model.context import ForwardContext, LoRAMeta

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


@dataclass
class PendingLoRA:
    """A group's shrink, launched before the base matmul: v = x @ A^T (float32 [T, G, R]), on the context's
    LoRA side stream when it has one (then `lora_finish` makes the current stream wait for it)."""

    group: str
    meta: LoRAMeta  # the step's (ctx.lora)
    v: torch.Tensor


def lora_start(ctx: ForwardContext, layer: int, group: str, x: torch.Tensor) -> PendingLoRA | None:
    """Launches the shrink of `group` for x [T, K] (the group's input on this rank); None when the step has
    no LoRA or none of its adapters targets the group. With `ctx.lora_stream` the shrink runs there, beside
    the base matmul the caller launches next (it reads only x, which the caller keeps alive until
    `lora_finish`): the two overlap, which hides the shrink's latency at small batches."""
    meta = ctx.lora
    if meta is None or group not in meta.groups:
        return None
    g = meta.groups[group]
    # v in float32: the decode shrink may split K and add partial sums atomically (kernels/lora.py)
    v = torch.empty(x.shape[0], len(LORA_GROUPS[group]), meta.max_rank, dtype=torch.float32, device=x.device)
    side = ctx.lora_stream
    if side is not None:
        side.wait_stream(torch.cuda.current_stream())  # x and v are ready for the side stream
    with torch.cuda.stream(side) if side is not None else nullcontext():
        ctx.backend.lora_shrink(
            x,
            ctx.pool[layer],
            meta.page_table,
            g.a_offsets,
            g.ranks_a,
            meta.seg_indptr,
            meta.seg_slot,
            v,
            # a column-parallel group's rank holds rows col_mult * r_n.. of A; a row-parallel one all of them
            col_mult=0 if group in ROW_PARALLEL_GROUPS else ctx.tp.rank,
            max_seg_len=meta.max_seg_len,
            aligned=True,  # packed offsets are 64-aligned (app/lora/adapter.py)
            plan=meta.plan,
        )
    return PendingLoRA(group, meta, v)


def lora_finish(
    ctx: ForwardContext, layer: int, pending: PendingLoRA | None, y: torch.Tensor, out_sizes: list[int]
) -> None:
    """y [T, sum(out_sizes)] += the group's LoRA delta, in place: y is its base output on this rank;
    `out_sizes`: each target's output columns within y as this rank's LoRA B shard sees them. Waits for
    the side stream's shrink first; a column-parallel group at TP > 1 sums v over the ranks (S-LoRA)."""
    if pending is None:
        return
    meta = pending.meta
    g = meta.groups[pending.group]
    if ctx.lora_stream is not None:
        torch.cuda.current_stream().wait_stream(ctx.lora_stream)
    if pending.group not in ROW_PARALLEL_GROUPS:
        ctx.tp.all_reduce(pending.v)  # each rank computed its rank columns of v
    offsets = [0]
    for n in out_sizes:
        offsets.append(offsets[-1] + n)
    ctx.backend.lora_expand(
        y,
        pending.v,
        ctx.pool[layer],
        meta.page_table,
        g.b_offsets,
        g.ranks_b,
        meta.scales,
        meta.seg_indptr,
        meta.seg_slot,
        offsets,
        max_seg_len=meta.max_seg_len,
        aligned=True,
        plan=meta.plan,
    )
