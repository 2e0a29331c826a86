"""Torch references of the multi-LoRA shrink and expand (formulas in kernels/lora.py), and the argument
checks the references and the Triton wrappers share. The references loop over segments and gather each
adapter's A / B^T into a contiguous copy (`gather_virtual`): slow and obviously right."""

from __future__ import annotations

import torch

MAX_G = 8  # targets per launch (q/k/v = 3, gate/up = 2); out_offsets travel as scalar kernel arguments


def check_lora_args(
    x_or_v: torch.Tensor,
    pool: torch.Tensor,
    page_table: torch.Tensor,
    offsets: torch.Tensor,
    ranks: torch.Tensor,
    seg_indptr: torch.Tensor,
    seg_slot: torch.Tensor,
    float32_ok: bool = False,
) -> None:
    """float32_ok: x_or_v may be float32 whatever the pool dtype (the shrink output v, see lora_shrink)."""
    if pool.dim() != 2:
        raise ValueError(f"pool must be [num_pages, page_elems], got {tuple(pool.shape)}")
    if page_table.dim() != 2 or offsets.dim() != 2 or ranks.shape != offsets.shape:
        raise ValueError("page_table [S, P], offsets [S, G] and ranks [S, G] expected")
    if seg_indptr.dim() != 1 or seg_slot.shape[0] != seg_indptr.shape[0] - 1:
        raise ValueError("seg_indptr [n+1] and seg_slot [n] expected")
    if x_or_v.dtype != pool.dtype and not (float32_ok and x_or_v.dtype == torch.float32):
        raise ValueError(f"dtype mismatch: {x_or_v.dtype} vs pool {pool.dtype}")


def check_scales(scales: torch.Tensor, page_table: torch.Tensor) -> None:
    if scales.dim() != 1 or scales.shape[0] != page_table.shape[0]:
        raise ValueError(f"scales must be [S={page_table.shape[0]}], got {tuple(scales.shape)}")


def check_out_offsets(out_offsets: list[int], G: int, y: torch.Tensor) -> list[int]:
    """The G+1 column offsets of the targets in y: non-decreasing, from >= 0 to <= y's width."""
    out_offsets = [int(o) for o in out_offsets]
    if len(out_offsets) != G + 1 or out_offsets[-1] > y.shape[1]:
        raise ValueError(f"out_offsets must have G+1={G + 1} entries within y's {y.shape[1]} columns")
    if any(b < a for a, b in zip(out_offsets, out_offsets[1:])) or out_offsets[0] < 0:
        raise ValueError(f"out_offsets must be non-decreasing and >= 0, got {out_offsets}")
    return out_offsets


def gather_virtual(pool: torch.Tensor, pages: torch.Tensor, offset: int, rows: int, cols: int) -> torch.Tensor:
    """Reads a [rows, cols] row-major matrix starting at virtual element `offset` of an adapter whose
    pages are `pages` (reference helper; the Triton kernels never build this copy)."""
    page_elems = pool.shape[1]
    idx = offset + torch.arange(rows * cols, device=pool.device)
    phys = pages.long()[idx // page_elems] * page_elems + idx % page_elems
    return pool.reshape(-1)[phys].view(rows, cols)


def _slot_tokens(seg_indptr: torch.Tensor, seg_slot: torch.Tensor, device) -> dict[int, torch.Tensor]:
    """{slot: the indices of its tokens} over the segments with a LoRA (each adapter's weights are then
    gathered once per call, not once per segment)."""
    bounds = seg_indptr.tolist()
    spans: dict[int, list[range]] = {}
    for i, s in enumerate(seg_slot.tolist()):
        if s >= 0 and bounds[i + 1] > bounds[i]:
            spans.setdefault(s, []).append(range(bounds[i], bounds[i + 1]))
    return {s: torch.tensor([t for r in rs for t in r], dtype=torch.long, device=device) for s, rs in spans.items()}


def lora_shrink_ref(
    x: torch.Tensor,
    pool: torch.Tensor,
    page_table: torch.Tensor,
    a_offsets: torch.Tensor,
    ranks: torch.Tensor,
    seg_indptr: torch.Tensor,
    seg_slot: torch.Tensor,
    out: torch.Tensor,
    col_mult: int = 0,
    max_seg_len: int | None = None,
    *,
    aligned: bool = False,
    plan: torch.Tensor | None = None,
) -> torch.Tensor:
    """x: [T, K]; out: [T, G, R]: the rows of tokens with a LoRA are fully written (zeros outside
    [c0, c0 + r)), the others zeroed here (the Triton kernels leave them unspecified). Formula: kernels/lora.py.
    `aligned` and `plan` are the Triton kernels' performance hints; the reference ignores them."""
    check_lora_args(x, pool, page_table, a_offsets, ranks, seg_indptr, seg_slot)
    T, K = x.shape
    G = a_offsets.shape[1]
    if out.shape[0] != T or out.shape[1] != G:
        raise ValueError(f"out must be [T={T}, G={G}, R], got {tuple(out.shape)}")
    out.zero_()
    offs = a_offsets.tolist()
    rks = ranks.tolist()
    for s, tok in _slot_tokens(seg_indptr, seg_slot, x.device).items():
        xs = x[tok].float()
        for g in range(G):
            r = rks[s][g]
            if r == 0:
                continue
            a = gather_virtual(pool, page_table[s], offs[s][g], r, K)
            c0 = col_mult * r
            out[tok, g, c0 : c0 + r] = (xs @ a.float().t()).to(out.dtype)
    return out


def lora_expand_ref(
    y: torch.Tensor,
    v: torch.Tensor,
    pool: torch.Tensor,
    page_table: torch.Tensor,
    b_offsets: torch.Tensor,
    ranks: torch.Tensor,
    scales: torch.Tensor,
    seg_indptr: torch.Tensor,
    seg_slot: torch.Tensor,
    out_offsets: list[int],
    max_seg_len: int | None = None,
    *,
    aligned: bool = False,
    plan: torch.Tensor | None = None,
) -> torch.Tensor:
    """y: [T, N_total] (updated in place; may be a column-slice view); v: [T, G, R]. Rows of v of tokens
    without a LoRA are not read.
    `aligned` and `plan` are the Triton kernels' performance hints; the reference ignores them."""
    check_lora_args(v, pool, page_table, b_offsets, ranks, seg_indptr, seg_slot, float32_ok=True)
    G = b_offsets.shape[1]
    out_offsets = check_out_offsets(out_offsets, G, y)
    offs = b_offsets.tolist()
    rks = ranks.tolist()
    scl = scales.tolist()
    for s, tok in _slot_tokens(seg_indptr, seg_slot, y.device).items():
        for g in range(G):
            r = rks[s][g]
            if r == 0:
                continue
            n = out_offsets[g + 1] - out_offsets[g]
            bt = gather_virtual(pool, page_table[s], offs[s][g], r, n)
            delta = (v[tok, g, :r].float() @ bt.float()) * scl[s]
            cols = slice(out_offsets[g], out_offsets[g + 1])
            y[tok, cols] = (y[tok, cols].float() + delta).to(y.dtype)
    return y


def lora_apply_ref(
    y: torch.Tensor,
    x: torch.Tensor,
    v: torch.Tensor,
    pool: torch.Tensor,
    page_table: torch.Tensor,
    a_offsets: torch.Tensor,
    b_offsets: torch.Tensor,
    ranks: torch.Tensor,
    scales: torch.Tensor,
    seg_indptr: torch.Tensor,
    seg_slot: torch.Tensor,
    out_offsets: list[int],
    max_seg_len: int | None = None,
    *,
    aligned: bool = False,
    plan: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference of a whole LoRA step without tensor-parallel collectives in between: `lora_shrink_ref`
    into v (float32 [T, G, R]), then `lora_expand_ref` into y (one ranks tensor for both)."""
    lora_shrink_ref(x, pool, page_table, a_offsets, ranks, seg_indptr, seg_slot, v, max_seg_len=max_seg_len)
    return lora_expand_ref(
        y, v, pool, page_table, b_offsets, ranks, scales, seg_indptr, seg_slot, out_offsets, max_seg_len=max_seg_len
    )
