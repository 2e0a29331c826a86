"""The LoRA plan of one step: the step's tokens grouped by adapter slot and cut into tiles, built on the
device (two launches, no host synchronisation, CUDA-graph safe) and used by every LoRA launch of the step.

In:  seg_indptr [S+1], seg_slot [S] (segment i = tokens [seg_indptr[i], seg_indptr[i+1]) of adapter slot
     seg_slot[i], -1 = no LoRA), the number of adapter slots, the step's token count T (a host integer)
     and the tile size M (tokens of one adapter per kernel program).
Out: `LoRAPlan`: `data`, int32 [PLAN_ROWS, T]. Sorted positions p in [0, T) list the tokens with a LoRA
     first, grouped by slot in slot order (a segment's tokens in order, segments of one slot in batch order),
     then the tokens without one:
       data[0, p]  token at position p              data[1, p]  its slot (-1: no LoRA)
       data[2, p]  first position of p's slot run   data[3, p]  end of p's slot run
     A tile is <= M consecutive positions of one slot's run, cut every M positions from the run's start
     (a long prefill segment gives several full tiles; the decode tokens of one adapter share a tile):
       data[4, i]  tile i's first position (-1 past the last tile)
       data[5, i]  tile i's slot (-1 past the last tile)
       data[6, i]  the end of tile i's slot run (the tile is [data[4, i], min(data[4, i] + M, data[6, i])))
     Positions past the tokens the segments cover are unspecified; kernels launch `max_tiles` programs
     (a static bound on the tiles: each of the <= n_slots runs adds at most one partial tile).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

PLAN_ROWS = 7


@dataclass(frozen=True)
class LoRAPlan:
    data: torch.Tensor  # int32 [PLAN_ROWS, num_tokens]
    num_tokens: int  # T: the row stride of `data`
    tile_m: int  # M: tokens per tile
    max_tiles: int  # grid bound of the tiled kernels

    @property
    def device(self) -> torch.device:
        return self.data.device


def max_tiles(num_tokens: int, n_slots: int, tile_m: int) -> int:
    """Static bound on the tiles of a plan: sum over slots of ceil(count_s / M) <= (T + n_slots (M-1)) / M."""
    return min(num_tokens, (num_tokens + n_slots * (tile_m - 1)) // tile_m)


@triton.jit(do_not_specialize=["n_seg", "S", "T"])
def _plan_positions_kernel(
    indptr_ptr, slot_ptr, plan_ptr, n_seg, S, T, BLOCK: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_T: tl.constexpr
):
    """Program: BLOCK segments. Segment i (key = its slot, or S without a LoRA) starts at sorted position
    sum of the lengths of segments with a smaller key or the same key and a smaller index; its slot run is
    [sum of lengths with a smaller key, + sum of lengths with its key). Then writes rows 0..3 of its tokens."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    im = i < n_seg
    si = tl.load(slot_ptr + i, mask=im, other=-1)
    lo = tl.load(indptr_ptr + i, mask=im, other=0)
    hi = tl.load(indptr_ptr + i + 1, mask=im, other=0)
    n_i = tl.maximum(hi - lo, 0)
    key_i = tl.where(si >= 0, si, S)
    less = tl.zeros([BLOCK], dtype=tl.int32)
    before = tl.zeros([BLOCK], dtype=tl.int32)
    same = tl.zeros([BLOCK], dtype=tl.int32)
    for j0 in range(0, n_seg, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        jm = j < n_seg
        sj = tl.load(slot_ptr + j, mask=jm, other=-1)
        n_j = tl.maximum(tl.load(indptr_ptr + j + 1, mask=jm, other=0) - tl.load(indptr_ptr + j, mask=jm, other=0), 0)
        key_j = tl.where(sj >= 0, sj, S)
        w = n_j[None, :]
        lt = key_j[None, :] < key_i[:, None]
        eq = key_j[None, :] == key_i[:, None]
        less += tl.sum(tl.where(lt, w, 0), axis=1)
        before += tl.sum(tl.where(eq & (j[None, :] < i[:, None]), w, 0), axis=1)
        same += tl.sum(tl.where(eq, w, 0), axis=1)
    pos = less + before
    slot_out = tl.where(si >= 0, si, -1)
    for k0 in range(0, tl.max(n_i, axis=0), BLOCK_T):
        k = k0 + tl.arange(0, BLOCK_T)
        m = im[:, None] & (k[None, :] < n_i[:, None])
        p = pos[:, None] + k[None, :]
        tl.store(plan_ptr + p, lo[:, None] + k[None, :], mask=m)
        tl.store(plan_ptr + T + p, tl.broadcast_to(slot_out[:, None], [BLOCK, BLOCK_T]), mask=m)
        tl.store(plan_ptr + 2 * T + p, tl.broadcast_to(less[:, None], [BLOCK, BLOCK_T]), mask=m)
        tl.store(plan_ptr + 3 * T + p, tl.broadcast_to((less + same)[:, None], [BLOCK, BLOCK_T]), mask=m)


@triton.jit(do_not_specialize=["n_seg", "T", "n_tiles"])
def _plan_tiles_kernel(indptr_ptr, plan_ptr, n_seg, T, n_tiles, TILE_M: tl.constexpr, BLOCK: tl.constexpr):
    """One program: rows 4..6, the tiles in position order (a LoRA slot's run cut every TILE_M positions),
    then -1 up to n_tiles."""
    covered = tl.load(indptr_ptr + n_seg) - tl.load(indptr_ptr)
    carry = 0
    for p0 in range(0, T, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        pm = p < covered
        slot = tl.load(plan_ptr + T + p, mask=pm, other=-1)
        rs = tl.load(plan_ptr + 2 * T + p, mask=pm, other=0)
        start = pm & (slot >= 0) & ((p - rs) % TILE_M == 0)
        idx = carry + tl.cumsum(start.to(tl.int32), 0) - 1
        tl.store(plan_ptr + 4 * T + idx, p, mask=start)
        tl.store(plan_ptr + 5 * T + idx, slot, mask=start)
        tl.store(plan_ptr + 6 * T + idx, tl.load(plan_ptr + 3 * T + p, mask=pm, other=0), mask=start)
        carry += tl.sum(start.to(tl.int32), 0)
    for k0 in range(0, n_tiles, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        rest = (k < n_tiles) & (k >= carry)
        tl.store(plan_ptr + 4 * T + k, tl.full([BLOCK], -1, tl.int32), mask=rest)
        tl.store(plan_ptr + 5 * T + k, tl.full([BLOCK], -1, tl.int32), mask=rest)


def _npow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def lora_plan(seg_indptr: torch.Tensor, seg_slot: torch.Tensor, n_slots: int, num_tokens: int, tile_m: int) -> LoRAPlan:
    """The step's plan (module docstring), computed on seg_slot's device in two launches."""
    if seg_indptr.dim() != 1 or seg_slot.dim() != 1 or seg_indptr.shape[0] != seg_slot.shape[0] + 1:
        raise ValueError("seg_indptr [n+1] and seg_slot [n] expected")
    if tile_m < 1 or tile_m & (tile_m - 1):
        raise ValueError(f"tile_m must be a power of two, got {tile_m}")
    n_seg, T = seg_slot.shape[0], int(num_tokens)
    data = torch.empty(PLAN_ROWS, max(T, 1), dtype=torch.int32, device=seg_slot.device)
    plan = LoRAPlan(data=data, num_tokens=max(T, 1), tile_m=tile_m, max_tiles=max_tiles(T, n_slots, tile_m))
    if n_seg == 0 or T == 0:
        data[4:6] = -1
        return plan
    seg_indptr, seg_slot = seg_indptr.contiguous(), seg_slot.contiguous()
    block = 32
    _plan_positions_kernel[(triton.cdiv(n_seg, block),)](
        seg_indptr, seg_slot, data, n_seg, int(n_slots), T,
        BLOCK=block, BLOCK_J=_npow2(n_seg, 32, 256), BLOCK_T=64, num_warps=4,
    )  # fmt: skip
    # two block sizes only (decode-sized steps, and the rest in blocks of 1024): a block per power of two of T
    # made Triton build a variant mid-serving for whatever T warm-up had not met (session-2026-12-04f)
    _plan_tiles_kernel[(1,)](
        seg_indptr, data, n_seg, T, plan.max_tiles, TILE_M=tile_m, BLOCK=64 if T <= 64 else 1024, num_warps=4
    )
    return plan


def lora_plan_ref(
    seg_indptr: torch.Tensor, seg_slot: torch.Tensor, n_slots: int, num_tokens: int, tile_m: int
) -> torch.Tensor:
    """Torch reference of `lora_plan(...).data` on the positions the segments cover and the tile rows."""
    bounds, slots = seg_indptr.tolist(), seg_slot.tolist()
    segs = sorted(range(len(slots)), key=lambda i: (slots[i] if slots[i] >= 0 else n_slots, i))
    T = max(int(num_tokens), 1)
    data = torch.full((PLAN_ROWS, T), -1, dtype=torch.int32)
    p = 0
    for i in segs:
        key = slots[i] if slots[i] >= 0 else n_slots
        run = [j for j in segs if (slots[j] if slots[j] >= 0 else n_slots) == key]
        run_lo = sum(max(0, bounds[j + 1] - bounds[j]) for j in segs[: segs.index(run[0])])
        run_hi = run_lo + sum(max(0, bounds[j + 1] - bounds[j]) for j in run)
        for t in range(bounds[i], max(bounds[i], bounds[i + 1])):
            data[:4, p] = torch.tensor([t, slots[i] if slots[i] >= 0 else -1, run_lo, run_hi])
            p += 1
    tiles = [q for q in range(p) if data[1, q] >= 0 and (q - data[2, q]) % tile_m == 0]
    for k, q in enumerate(tiles):
        data[4:7, k] = torch.tensor([q, data[1, q], data[3, q]])
    return data
