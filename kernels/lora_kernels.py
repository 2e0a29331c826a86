"""Triton kernels of the multi-LoRA shrink and expand over the paged pool, run over a step's `LoRAPlan`
(kernels/lora_plan.py): one program per (tile of <= BLOCK_M tokens of one adapter slot, target g, block of
columns). The formulas, the pool layout and the launch wrappers are in kernels/lora.py.

A program reads its adapter's rows of A (shrink) or B^T (expand) once for the whole tile and multiplies
with tl.dot (tensor cores once the tile holds enough tokens). Rows of A / B^T are found through the
adapter's page table: a row chunk of BLOCK <= PAGE_ELEMS elements touches at most two pages, so it costs
two page-table reads per row (`_chunk_offsets`); with ALIGNED (every offset, K, every N_g and PAGE_ELEMS
multiples of 64, as app/lora/adapter.py packs them) every 64-run is contiguous and 64-aligned, so loads
are 16-byte vectors. Pages smaller than the block (never with real models) fall back to a page-table
read per element.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _chunk_offsets(
    pt_row_ptr, o_row, rmask, n_valid, BLOCK: tl.constexpr, PAGE_ELEMS: tl.constexpr, ALIGNED: tl.constexpr
):
    """Pool offsets [rows, BLOCK] of virtual elements o_row[:, None] + arange(BLOCK) of an adapter whose
    page-table row starts at pt_row_ptr: two page-table reads per row when BLOCK <= PAGE_ELEMS, else one
    per element."""
    if BLOCK <= PAGE_ELEMS:
        p_i = o_row // PAGE_ELEMS
        w0 = o_row % PAGE_ELEMS
        p_lo = tl.load(pt_row_ptr + p_i, mask=rmask, other=0).to(tl.int64)
        p_hi = tl.load(pt_row_ptr + p_i + 1, mask=rmask & (w0 + n_valid > PAGE_ELEMS), other=0).to(tl.int64)
        w = w0[:, None] + tl.arange(0, BLOCK)[None, :]
        off = tl.where(w < PAGE_ELEMS, p_lo[:, None] * PAGE_ELEMS + w, p_hi[:, None] * PAGE_ELEMS + (w - PAGE_ELEMS))
        if ALIGNED:
            off = tl.max_contiguous(tl.multiple_of(off, [1, 64]), [1, 64])
    else:
        o = o_row[:, None] + tl.arange(0, BLOCK)[None, :]
        m = rmask[:, None] & (tl.arange(0, BLOCK)[None, :] < n_valid)
        page = tl.load(pt_row_ptr + o // PAGE_ELEMS, mask=m, other=0).to(tl.int64)
        off = page * PAGE_ELEMS + o % PAGE_ELEMS
    return off


@triton.jit
def _plan_tile(plan_ptr, T, pid, BLOCK_M: tl.constexpr):
    """(slot, tokens [BLOCK_M] as int64, token mask) of the pid-th tile of the plan (slot -1: no such tile).
    The three plan reads are independent: the slot (first link of the weights' lookup chain) waits on none."""
    ps = tl.maximum(tl.load(plan_ptr + 4 * T + pid), 0)
    slot = tl.load(plan_ptr + 5 * T + pid)
    re = tl.where(slot >= 0, tl.load(plan_ptr + 6 * T + pid), 0)
    m = ps + tl.arange(0, BLOCK_M)
    mm = m < re
    tok = tl.load(plan_ptr + m, mask=mm, other=0)
    return slot, tok.to(tl.int64), mm


@triton.jit
def _pick(g, o0, o1, o2, o3, o4, o5, o6, o7, o8):
    """out_offsets[g] from scalar arguments (no device copy of a host list: CUDA-graph safe)."""
    return tl.where(g == 0, o0, tl.where(g == 1, o1, tl.where(g == 2, o2, tl.where(g == 3, o3, tl.where(
        g == 4, o4, tl.where(g == 5, o5, tl.where(g == 6, o6, tl.where(g == 7, o7, o8))))))))  # fmt: skip


@triton.jit
def _shrink_acc(
    x_ptr, pool_ptr, pt_row, a_off, j, jmask, tok, mm, k_lo, k_end, K, stride_xt, stride_xk,
    PAGE_ELEMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ALIGNED: tl.constexpr, ROW_IN_TWO_PAGES: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """sum over k in [k_lo, k_end) of x[tok, k] * A[j, k] (A row j at virtual a_off + j * K; rows outside
    jmask are zero): the [BLOCK_M, BLOCK_R] float32 block of a shrink tile."""
    o_row = a_off + tl.where(jmask, j, 0) * K
    if ROW_IN_TWO_PAGES:  # K <= PAGE_ELEMS: a whole row of A lies in <= 2 pages, looked up once
        p_i = o_row // PAGE_ELEMS
        w0 = o_row % PAGE_ELEMS
        p_lo = tl.load(pt_row + p_i, mask=jmask, other=0).to(tl.int64) * PAGE_ELEMS
        p_hi = tl.load(pt_row + p_i + 1, mask=jmask & (w0 + K > PAGE_ELEMS), other=0).to(tl.int64) * PAGE_ELEMS
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for k0 in range(k_lo, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        xv = tl.load(x_ptr + tok[:, None] * stride_xt + k[None, :] * stride_xk, mask=mm[:, None] & kmask[None, :],
                     other=0.0)  # fmt: skip
        if ROW_IN_TWO_PAGES:
            w = w0[:, None] + k[None, :]
            a_offs = tl.where(w < PAGE_ELEMS, p_lo[:, None] + w, p_hi[:, None] + (w - PAGE_ELEMS))
            if ALIGNED:
                a_offs = tl.max_contiguous(tl.multiple_of(a_offs, [1, 64]), [1, 64])
        else:
            a_offs = _chunk_offsets(pt_row, o_row + k0, jmask, tl.minimum(K - k0, BLOCK_K), BLOCK_K, PAGE_ELEMS,
                                    ALIGNED)  # fmt: skip
        a = tl.load(pool_ptr + a_offs, mask=jmask[:, None] & kmask[None, :], other=0.0)  # A [BLOCK_R, BLOCK_K]
        acc = tl.dot(xv, tl.trans(a), acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit(do_not_specialize=["T", "R", "col_mult", "stride_pt", "stride_ot", "stride_og"])
def lora_shrink_kernel(
    x_ptr, pool_ptr, pt_ptr, off_ptr, rank_ptr, plan_ptr, out_ptr,
    T, K, R, G, col_mult,
    stride_xt, stride_xk, stride_pt, stride_ot, stride_og, stride_or,
    n_split,
    PAGE_ELEMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ALIGNED: tl.constexpr, SPLIT_ATOMIC: tl.constexpr, ROW_IN_TWO_PAGES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Shrink, program (tile of the plan, g, block of out columns x K split): the tile's <= BLOCK_M tokens
    of one slot times that adapter's A rows, read once; tl.dot of the gathered x tile [BLOCK_M, BLOCK_K]
    and A^T [BLOCK_K, BLOCK_R]. Columns outside [c0, c0 + r) of the tile's tokens get zeros.
    Split-K (n_split > 1, SPLIT_ATOMIC): each program sums one K range and atomically adds it into `out`,
    which the wrapper zeroed (float32); otherwise every program stores its columns, zeros included."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    pid_r = tl.program_id(2) // n_split
    ks = tl.program_id(2) % n_split
    slot, tok, mm = _plan_tile(plan_ptr, T, pid, BLOCK_M)
    if slot < 0:
        return
    cols = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cmask = cols < R
    out_cols = out_ptr + g * stride_og + cols * stride_or
    r = tl.load(rank_ptr + slot * G + g)
    a_off = tl.load(off_ptr + slot * G + g)
    pt_row = pt_ptr + slot.to(tl.int64) * stride_pt
    c0 = col_mult * r
    j = cols - c0  # row of A behind each output column
    jmask = (j >= 0) & (j < r)
    live = (r > 0) & (pid_r * BLOCK_R < c0 + r) & (pid_r * BLOCK_R + BLOCK_R > c0)
    if SPLIT_ATOMIC and not live:
        return  # out is zero there already
    k_per = tl.cdiv(tl.cdiv(K, BLOCK_K), n_split) * BLOCK_K
    k_lo = ks * k_per
    k_end = tl.where(live, tl.minimum(K, k_lo + k_per), k_lo)  # blocks outside [c0, c0 + r): zeros
    acc = _shrink_acc(x_ptr, pool_ptr, pt_row, a_off, j, jmask, tok, mm, k_lo, k_end, K, stride_xt, stride_xk,
                      PAGE_ELEMS, BLOCK_M, BLOCK_R, BLOCK_K, ALIGNED, ROW_IN_TWO_PAGES, INPUT_PRECISION)  # fmt: skip
    if SPLIT_ATOMIC:
        tl.atomic_add(out_cols[None, :] + tok[:, None] * stride_ot, acc, mask=mm[:, None] & cmask[None, :],
                      sem="relaxed")  # fmt: skip
    else:
        tl.store(out_cols[None, :] + tok[:, None] * stride_ot, acc.to(out_ptr.dtype.element_ty),
                 mask=mm[:, None] & cmask[None, :])  # fmt: skip


@triton.jit(do_not_specialize=["T", "stride_vt", "stride_vg", "stride_pt"])
def lora_expand_kernel(
    y_ptr, v_ptr, pool_ptr, pt_ptr, off_ptr, rank_ptr, scale_ptr, plan_ptr,
    T, G, o0, o1, o2, o3, o4, o5, o6, o7, o8,
    stride_yt, stride_yn, stride_vt, stride_vg, stride_vr, stride_pt,
    PAGE_ELEMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    ALIGNED: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Expand, program (tile of the plan, g, block of BLOCK_N output columns): the tile's <= BLOCK_M tokens
    of one slot; loops over that adapter's rank in BLOCK_R rows of B^T [BLOCK_R, BLOCK_N], read once per
    tile; y[tok, n_lo + n] += scale * acc. The y read is issued before the B^T reads (its latency overlaps)."""
    g = tl.program_id(1)
    pid_n = tl.program_id(2)
    slot, tok, mm = _plan_tile(plan_ptr, T, tl.program_id(0), BLOCK_M)
    s = tl.maximum(slot, 0)
    r = tl.where(slot >= 0, tl.load(rank_ptr + s * G + g), 0)
    if r == 0:
        return
    n_lo = _pick(g, o0, o1, o2, o3, o4, o5, o6, o7, o8)
    n_g = _pick(g + 1, o0, o1, o2, o3, o4, o5, o6, o7, o8) - n_lo
    if pid_n * BLOCK_N >= n_g:
        return
    b_off = tl.load(off_ptr + s * G + g)
    scale = tl.load(scale_ptr + s).to(tl.float32)
    pt_row = pt_ptr + s.to(tl.int64) * stride_pt
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < n_g
    yp = y_ptr + tok[:, None] * stride_yt + (n_lo + n)[None, :] * stride_yn
    ym = mm[:, None] & nmask[None, :]
    yv = tl.load(yp, mask=ym, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for j0 in range(0, r, BLOCK_R):
        j = j0 + tl.arange(0, BLOCK_R)
        jm = j < r
        vv = tl.load(v_ptr + g * stride_vg + tok[:, None] * stride_vt + j[None, :] * stride_vr,
                     mask=mm[:, None] & jm[None, :], other=0.0)  # fmt: skip
        b_offs = _chunk_offsets(pt_row, b_off + tl.where(jm, j, 0) * n_g + pid_n * BLOCK_N, jm,
                                tl.minimum(n_g - pid_n * BLOCK_N, BLOCK_N), BLOCK_N, PAGE_ELEMS, ALIGNED)  # fmt: skip
        bt = tl.load(pool_ptr + b_offs, mask=jm[:, None] & nmask[None, :], other=0.0)
        acc = tl.dot(vv.to(bt.dtype), bt, acc, input_precision=INPUT_PRECISION)
    tl.store(yp, (yv.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=ym)
