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

A group's LoRA is two calls around its base matmul: `lora_begin` launches the shrink (it reads only x), on
`ForwardContext.lora_stream` when one is set, so that it runs concurrently with the base matmul the caller
issues next; `lora_end` joins that stream and expands into the base output. Without a side stream (the
CPU, or EngineConfig.lora.overlap_shrink off) the shrink runs in order on the current stream.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

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


@dataclass
class PendingLoRA:
    """A group's LoRA between `lora_begin` and `lora_end`: the shrink output v (being written on `stream`,
    None: already in order on the current stream) and its input x, kept alive until the join."""

    layer: int
    group: str
    x: torch.Tensor
    v: torch.Tensor
    stream: torch.cuda.Stream | None


def lora_begin(ctx: ForwardContext, layer: int, group: str, x: torch.Tensor) -> PendingLoRA | None:
    """Launches the shrink of group `group` of layer `layer` on x [T, K] (the group's input); None when the
    step has no LoRA or none of its adapters targets the group. On `ctx.lora_stream` (when set) the shrink
    waits for the work queued so far on the current stream and runs beside what the caller queues next."""
    meta = ctx.lora
    if meta is None or group not in meta.groups:  # no LoRA in the step, or none of its adapters targets it
        return None
    g = meta.groups[group]
    # v in float32: the decode shrink may split K and add partial sums atomically (kernels/lora.py)
    v = torch.empty(x.shape[0], len(LORA_GROUPS[group]), meta.max_rank, dtype=torch.float32, device=x.device)
    row_parallel = group in ROW_PARALLEL_GROUPS
    col_mult = 0 if row_parallel or ctx.tp.world_size == 1 else ctx.tp.rank
    stream = ctx.lora_stream
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(stream) if stream is not None else nullcontext():
        ctx.backend.lora_shrink(
            x,
            ctx.pool[layer],
            meta.page_table,
            g.a_offsets,
            g.ranks_a,
            meta.seg_indptr,
            meta.seg_slot,
            v,
            col_mult=col_mult,
            max_seg_len=meta.max_seg_len,
            aligned=True,  # packed offsets are 64-aligned (app/lora/adapter.py)
            plan=meta.plan,
        )
    return PendingLoRA(layer, group, x, v, stream)


def lora_end(ctx: ForwardContext, pending: PendingLoRA | None, y: torch.Tensor, out_sizes: list[int]) -> None:
    """Finishes `lora_begin`'s group into y [T, sum(out_sizes)], its base output on this rank (in place):
    joins the shrink's stream, all-reduces v for a column-parallel group under TP, expands.
    `out_sizes`: each target's output columns within y as this rank's LoRA B shard sees them."""
    meta = ctx.lora
    if pending is None or meta is None:
        return
    g = meta.groups[pending.group]
    if pending.stream is not None:
        torch.cuda.current_stream(y.device).wait_stream(pending.stream)
    row_parallel = pending.group in ROW_PARALLEL_GROUPS
    if not row_parallel and ctx.tp.world_size > 1:  # column-parallel: each rank wrote its rows of A's columns
        ctx.tp.all_reduce(pending.v)
    offsets = [0]
    for n in out_sizes:
        offsets.append(offsets[-1] + n)
    # ranks_b: the full (TP-padded) rank of B^T; equal to ranks_a without a collective in between
    ctx.backend.lora_expand(
        y,
        pending.v,
        ctx.pool[pending.layer],
        meta.page_table,
        g.b_offsets,
        g.ranks_a if row_parallel or ctx.tp.world_size == 1 else g.ranks_b,
        meta.scales,
        meta.seg_indptr,
        meta.seg_slot,
        offsets,
        max_seg_len=meta.max_seg_len,
        aligned=True,
        plan=meta.plan,
    )
