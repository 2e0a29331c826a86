"""Multi-LoRA shrink and expand over adapter weights stored in the unified paged pool.

Pool layout (one layer's slice, `pool`: [num_pages, page_elems]):
an adapter owns a list of page ids (`page_table[s, :]`). Its weights for one layer form a *virtual*
element buffer laid across those pages in order: virtual element `o` lives at
`pool[page_table[s, o // page_elems], o % page_elems]`. Rows may straddle page boundaries.
Inside the virtual buffer, for a target module g:
  * LoRA A (PEFT `lora_A.weight`, [r, K]) is stored row-major starting at `a_offsets[s, g]`:
    A[j, k] at virtual element `a_offsets[s, g] + j * K + k`;
  * LoRA B transposed (PEFT `lora_B.weight` is [N_g, r]; we store B^T, [r, N_g]) row-major from
    `b_offsets[s, g]`: B^T[j, n] at `b_offsets[s, g] + j * N_g + n`.

A batch is a list of token segments; segment i covers tokens `[seg_indptr[i], seg_indptr[i+1])` and
uses adapter slot `seg_slot[i]` (a row of page_table/ranks/...; -1 = no LoRA). Decode is the case
where every segment has one token. A group of G targets shares the same input x (q/k/v: G=3,
gate/up: G=2, o or down: G=1).

shrink (S-LoRA MBGMM/MBGMV "shrink", punica `lora_a`):
    v[t, g, c * r + j] = sum_k x[t, k] * A_g[j, k]   for j < r = ranks[s, g], c = col_mult
    v[t, g, :] = 0 elsewhere (every element of v is written)
expand (punica `lora_b`), fused scale and accumulation into the base output y:
    y[t, out_offsets[g] + n] += scales[s] * sum_{j < r} v[t, g, j] * B^T_g[j, n]
    for n < out_offsets[g+1] - out_offsets[g], r = ranks[s, g]; rows of y without LoRA are untouched.

`col_mult` serves S-LoRA tensor parallelism for column-parallel layers: each rank holds rows
[tp_rank * r, (tp_rank + 1) * r) of A, writes them at that column offset, and a sum all-reduce of v
assembles the full x @ A^T.

This file holds the torch references; the Triton kernels implement the same signatures.
"""

from __future__ import annotations

import torch


def check_lora_args(x_or_v: torch.Tensor, pool: torch.Tensor, page_table: torch.Tensor,
                    offsets: torch.Tensor, ranks: torch.Tensor, seg_indptr: torch.Tensor,
                    seg_slot: torch.Tensor) -> None:
    if pool.dim() != 2:
        raise ValueError(f"pool must be [num_pages, page_elems], got {tuple(pool.shape)}")
    if page_table.dim() != 2 or offsets.dim() != 2 or ranks.shape != offsets.shape:
        raise ValueError("page_table [S, P], offsets [S, G] and ranks [S, G] expected")
    if seg_indptr.dim() != 1 or seg_slot.shape[0] != seg_indptr.shape[0] - 1:
        raise ValueError("seg_indptr [n+1] and seg_slot [n] expected")
    if x_or_v.dtype != pool.dtype:
        raise ValueError(f"dtype mismatch: {x_or_v.dtype} vs pool {pool.dtype}")


def gather_virtual(pool: torch.Tensor, pages: torch.Tensor, offset: int, rows: int, cols: int) -> torch.Tensor:
    """Reads a [rows, cols] row-major matrix starting at virtual element `offset` of an adapter whose
    pages are `pages` (reference helper; the Triton kernels never build this copy)."""
    page_elems = pool.shape[1]
    idx = offset + torch.arange(rows * cols, device=pool.device)
    phys = pages.long()[idx // page_elems] * page_elems + idx % page_elems
    return pool.reshape(-1)[phys].view(rows, cols)


def _segments(seg_indptr: torch.Tensor, seg_slot: torch.Tensor):
    bounds = seg_indptr.tolist()
    slots = seg_slot.tolist()
    for i, s in enumerate(slots):
        if s >= 0 and bounds[i + 1] > bounds[i]:
            yield bounds[i], bounds[i + 1], s


def lora_shrink_ref(x: torch.Tensor, pool: torch.Tensor, page_table: torch.Tensor,
                    a_offsets: torch.Tensor, ranks: torch.Tensor, seg_indptr: torch.Tensor,
                    seg_slot: torch.Tensor, out: torch.Tensor, col_mult: int = 0,
                    max_seg_len: int | None = None) -> torch.Tensor:
    """x: [T, K]; out: [T, G, R] (fully written). See the module docstring for the formula."""
    check_lora_args(x, pool, page_table, a_offsets, ranks, seg_indptr, seg_slot)
    T, K = x.shape
    G = a_offsets.shape[1]
    if out.shape[0] != T or out.shape[1] != G:
        raise ValueError(f"out must be [T={T}, G={G}, R], got {tuple(out.shape)}")
    out.zero_()
    offs = a_offsets.tolist()
    rks = ranks.tolist()
    for lo, hi, s in _segments(seg_indptr, seg_slot):
        for g in range(G):
            r = rks[s][g]
            if r == 0:
                continue
            a = gather_virtual(pool, page_table[s], offs[s][g], r, K)
            c0 = col_mult * r
            out[lo:hi, g, c0:c0 + r] = (x[lo:hi].float() @ a.float().t()).to(out.dtype)
    return out


def lora_expand_ref(y: torch.Tensor, v: torch.Tensor, pool: torch.Tensor, page_table: torch.Tensor,
                    b_offsets: torch.Tensor, ranks: torch.Tensor, scales: torch.Tensor,
                    seg_indptr: torch.Tensor, seg_slot: torch.Tensor, out_offsets: list[int],
                    max_seg_len: int | None = None) -> torch.Tensor:
    """y: [T, N_total] (updated in place; may be a column-slice view); v: [T, G, R]."""
    check_lora_args(v, pool, page_table, b_offsets, ranks, seg_indptr, seg_slot)
    G = b_offsets.shape[1]
    if len(out_offsets) != G + 1 or out_offsets[-1] > y.shape[1]:
        raise ValueError(f"out_offsets must have G+1={G + 1} entries within y's {y.shape[1]} columns")
    offs = b_offsets.tolist()
    rks = ranks.tolist()
    scl = scales.tolist()
    for lo, hi, s in _segments(seg_indptr, seg_slot):
        for g in range(G):
            r = rks[s][g]
            if r == 0:
                continue
            n = out_offsets[g + 1] - out_offsets[g]
            bt = gather_virtual(pool, page_table[s], offs[s][g], r, n)
            delta = (v[lo:hi, g, :r].float() @ bt.float()) * scl[s]
            cols = slice(out_offsets[g], out_offsets[g + 1])
            y[lo:hi, cols] = (y[lo:hi, cols].float() + delta).to(y.dtype)
    return y
