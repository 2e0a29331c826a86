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

Decode (every segment one token; picked with max_seg_len == 1) runs a BGMV-like kernel: one program per
(segment, target g, block of rank columns), a dot product per row of A, no tensor cores. Prefill runs an
SGMV-like kernel: one program per (segment, tile of its tokens x block of columns, g) with tl.dot.
Rank blocks beyond a segment's rank do no work (shrink writes zeros there; expand loops only up to r).
Rows of A / B^T are found element by element through the adapter's page table (no contiguous copy).

Aligned decode fast path (`aligned=True`: every offset a multiple of 64, as app/lora/adapter.py packs
them; K, every N_g and page_elems multiples of 64, checked by the wrappers; otherwise the generic kernels
above run): `lora_decode_plan` sorts the segments by adapter slot and lists the tiles (<= DECODE_TILE_M
tokens of one slot) on the device (two launches, no host sync; build it once per decode step and pass
`plan=`); one program per (tile, g, column block) reads that adapter's A / B^T rows once for the whole
tile and multiplies with tl.dot. The grid holds a static bound on the tiles (CUDA-graph safe), not one
program per token: on an H100 that made the 64-adapter layer 7-13% faster (benchmarks/results/tune/).
A 64-element run of a row never straddles a page, so each row chunk costs two page-table reads and the loads are 16-byte vectors (`tl.multiple_of` / `tl.max_contiguous` hints).

`lora_apply` is shrink then expand when no tensor-parallel collective sits between them (TP=1, or the
row-parallel o/down). With DECODE_CFG["fused"] its aligned decode case is one launch,
`_lora_decode_fused_kernel`: shrink programs first, then expand programs that each wait on a counter
in the plan until their tile's shrink programs are done, so one group costs one launch instead of two
and a tile's expand overlaps other tiles' shrinks. Off until timed on a GPU.

This file holds the Triton kernels, their launch wrappers (`lora_shrink`, `lora_expand`, `lora_apply`,
same signatures as the references, no host synchronisation) and the torch references.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_G = 8  # targets per launch (q/k/v = 3, gate/up = 2); out_offsets travel as scalar kernel arguments


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _virtual_ptrs(pool_ptr, pt_row_ptr, o, mask, PAGE_ELEMS: tl.constexpr):
    """Pointers to virtual elements `o` of the adapter whose page-table row starts at `pt_row_ptr`."""
    page = tl.load(pt_row_ptr + o // PAGE_ELEMS, mask=mask, other=0)
    return pool_ptr + page.to(tl.int64) * PAGE_ELEMS + o % PAGE_ELEMS


@triton.jit
def _row_chunk_ptrs(pool_ptr, pt_row_ptr, o_row, kk, rmask, n_valid, PAGE_ELEMS: tl.constexpr):
    """Pointers [rows, BLOCK] to virtual elements o_row[:, None] + kk[None, :] (kk < n_valid), where a
    chunk (BLOCK <= PAGE_ELEMS) touches at most two pages: two page-table reads per row, not per element."""
    p_i = o_row // PAGE_ELEMS
    w0 = o_row % PAGE_ELEMS
    p_lo = tl.load(pt_row_ptr + p_i, mask=rmask, other=0).to(tl.int64)
    p_hi = tl.load(pt_row_ptr + p_i + 1, mask=rmask & (w0 + n_valid > PAGE_ELEMS), other=0).to(tl.int64)
    w = w0[:, None] + kk[None, :]
    return pool_ptr + tl.where(
        w < PAGE_ELEMS, p_lo[:, None] * PAGE_ELEMS + w, p_hi[:, None] * PAGE_ELEMS + (w - PAGE_ELEMS)
    )


@triton.jit
def _pick(g, o0, o1, o2, o3, o4, o5, o6, o7, o8):
    """out_offsets[g] from scalar arguments (no device copy of a host list: CUDA-graph safe)."""
    return tl.where(
        g == 0,
        o0,
        tl.where(
            g == 1,
            o1,
            tl.where(
                g == 2,
                o2,
                tl.where(
                    g == 3,
                    o3,
                    tl.where(g == 4, o4, tl.where(g == 5, o5, tl.where(g == 6, o6, tl.where(g == 7, o7, o8)))),
                ),
            ),
        ),
    )


@triton.jit
def _segment_rank(slot_ptr, rank_ptr, off_ptr, pt_ptr, seg, g, G, stride_pt):
    """(rank, virtual offset, page-table row pointer) of target g of segment `seg`; rank 0 if no LoRA."""
    slot = tl.load(slot_ptr + seg)
    s = tl.maximum(slot, 0)
    r = tl.load(rank_ptr + s * G + g)
    r = tl.where(slot >= 0, r, 0)
    off = tl.load(off_ptr + s * G + g)
    return r, off, pt_ptr + s.to(tl.int64) * stride_pt


@triton.jit
def _zero_outside_segments(out_cols, cmask, indptr_ptr, n_seg, T, stride_ot, BLOCK_R: tl.constexpr):
    """Shrink writes every output element: zeroes these columns of the tokens before the first segment
    and after the last one (run by one extra program per launch)."""
    zeros = tl.zeros([BLOCK_R], dtype=out_cols.dtype.element_ty)
    for t in range(0, tl.load(indptr_ptr)):
        tl.store(out_cols + tl.cast(t, tl.int64) * stride_ot, zeros, mask=cmask)
    for t in range(tl.load(indptr_ptr + n_seg), T):
        tl.store(out_cols + tl.cast(t, tl.int64) * stride_ot, zeros, mask=cmask)


@triton.jit(do_not_specialize=["T", "R", "n_seg", "col_mult", "stride_pt", "stride_ot", "stride_og"])
def _lora_shrink_decode_kernel(
    x_ptr,
    pool_ptr,
    pt_ptr,
    off_ptr,
    rank_ptr,
    indptr_ptr,
    slot_ptr,
    out_ptr,
    T,
    K,
    R,
    G,
    n_seg,
    col_mult,
    stride_xt,
    stride_xk,
    stride_pt,
    stride_ot,
    stride_og,
    stride_or,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """BGMV shrink: program (segment, g, block of output columns); one dot product per row of A."""
    seg = tl.program_id(0)
    g = tl.program_id(1)
    pid_r = tl.program_id(2)
    cols = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cmask = cols < R
    out_cols = out_ptr + g * stride_og + cols * stride_or
    if seg == n_seg:  # the extra program zeroes tokens outside every segment
        _zero_outside_segments(out_cols, cmask, indptr_ptr, n_seg, T, stride_ot, BLOCK_R)
        return
    t0 = tl.load(indptr_ptr + seg)
    t1 = tl.load(indptr_ptr + seg + 1)
    r, a_off, pt_row = _segment_rank(slot_ptr, rank_ptr, off_ptr, pt_ptr, seg, g, G, stride_pt)
    c0 = col_mult * r
    j = cols - c0  # row of A behind each output column
    jmask = (j >= 0) & (j < r)
    live = (r > 0) & (pid_r * BLOCK_R < c0 + r) & (pid_r * BLOCK_R + BLOCK_R > c0)
    k_end = tl.where(live, K, 0)  # rank blocks outside [c0, c0 + r) do no work
    for t in range(t0, t1):
        acc2 = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)  # reduced once, after the K loop
        for k0 in range(0, k_end, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < K
            xv = tl.load(x_ptr + tl.cast(t, tl.int64) * stride_xt + k * stride_xk, mask=kmask, other=0.0)
            m = jmask[:, None] & kmask[None, :]
            if BLOCK_K <= PAGE_ELEMS:
                a_ptrs = _row_chunk_ptrs(
                    pool_ptr,
                    pt_row,
                    a_off + j * K + k0,
                    tl.arange(0, BLOCK_K),
                    jmask,
                    tl.minimum(K - k0, BLOCK_K),
                    PAGE_ELEMS,
                )
            else:
                a_ptrs = _virtual_ptrs(pool_ptr, pt_row, a_off + j[:, None] * K + k[None, :], m, PAGE_ELEMS)
            a = tl.load(a_ptrs, mask=m, other=0.0)
            acc2 += a.to(tl.float32) * xv.to(tl.float32)[None, :]
        acc = tl.sum(acc2, axis=1)
        tl.store(out_cols + tl.cast(t, tl.int64) * stride_ot, acc.to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit(do_not_specialize=["T", "R", "n_seg", "col_mult", "stride_pt", "stride_ot", "stride_og"])
def _lora_shrink_prefill_kernel(
    x_ptr,
    pool_ptr,
    pt_ptr,
    off_ptr,
    rank_ptr,
    indptr_ptr,
    slot_ptr,
    out_ptr,
    T,
    K,
    R,
    G,
    n_seg,
    col_mult,
    stride_xt,
    stride_xk,
    stride_pt,
    stride_ot,
    stride_og,
    stride_or,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """SGMV shrink: program (segment, token tile x column block, g); tl.dot of x tile and A^T tile."""
    seg = tl.program_id(0)
    pid1 = tl.program_id(1)
    g = tl.program_id(2)
    n_rb = tl.cdiv(R, BLOCK_R)
    tile = pid1 // n_rb
    pid_r = pid1 % n_rb
    cols = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cmask = cols < R
    out_cols = out_ptr + g * stride_og + cols * stride_or
    if seg == n_seg:
        if tile == 0:
            _zero_outside_segments(out_cols, cmask, indptr_ptr, n_seg, T, stride_ot, BLOCK_R)
        return
    t0 = tl.load(indptr_ptr + seg)
    t1 = tl.load(indptr_ptr + seg + 1)
    if t0 + tile * BLOCK_T >= t1:
        return
    tok = t0 + tile * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = tok < t1
    r, a_off, pt_row = _segment_rank(slot_ptr, rank_ptr, off_ptr, pt_ptr, seg, g, G, stride_pt)
    c0 = col_mult * r
    j = cols - c0
    jmask = (j >= 0) & (j < r)
    live = (r > 0) & (pid_r * BLOCK_R < c0 + r) & (pid_r * BLOCK_R + BLOCK_R > c0)
    k_end = tl.where(live, K, 0)
    acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
    for k0 in range(0, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        xv = tl.load(
            x_ptr + tok.to(tl.int64)[:, None] * stride_xt + k[None, :] * stride_xk,
            mask=tmask[:, None] & kmask[None, :],
            other=0.0,
        )
        m = kmask[:, None] & jmask[None, :]
        a = tl.load(
            _virtual_ptrs(pool_ptr, pt_row, a_off + j[None, :] * K + k[:, None], m, PAGE_ELEMS), mask=m, other=0.0
        )  # A^T tile [BLOCK_K, BLOCK_R]
        acc = tl.dot(xv, a, acc, input_precision=INPUT_PRECISION)
    tl.store(
        out_cols[None, :] + tok.to(tl.int64)[:, None] * stride_ot,
        acc.to(out_ptr.dtype.element_ty),
        mask=tmask[:, None] & cmask[None, :],
    )


@triton.jit(do_not_specialize=["stride_vt", "stride_vg", "stride_pt"])
def _lora_expand_decode_kernel(
    y_ptr,
    v_ptr,
    pool_ptr,
    pt_ptr,
    off_ptr,
    rank_ptr,
    scale_ptr,
    indptr_ptr,
    slot_ptr,
    G,
    o0,
    o1,
    o2,
    o3,
    o4,
    o5,
    o6,
    o7,
    o8,
    stride_yt,
    stride_yn,
    stride_vt,
    stride_vg,
    stride_vr,
    stride_pt,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """BGMV expand: program (segment, g, block of output columns); loops over rank blocks up to r."""
    seg = tl.program_id(0)
    g = tl.program_id(1)
    pid_n = tl.program_id(2)
    r, b_off, pt_row = _segment_rank(slot_ptr, rank_ptr, off_ptr, pt_ptr, seg, g, G, stride_pt)
    if r == 0:
        return
    n_lo = _pick(g, o0, o1, o2, o3, o4, o5, o6, o7, o8)
    n_g = _pick(g + 1, o0, o1, o2, o3, o4, o5, o6, o7, o8) - n_lo
    if pid_n * BLOCK_N >= n_g:
        return
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < n_g
    scale = tl.load(scale_ptr + tl.maximum(tl.load(slot_ptr + seg), 0)).to(tl.float32)
    t0 = tl.load(indptr_ptr + seg)
    t1 = tl.load(indptr_ptr + seg + 1)
    for t in range(t0, t1):
        acc2 = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)  # reduced once, after the rank loop
        for j0 in range(0, r, BLOCK_R):
            j = j0 + tl.arange(0, BLOCK_R)
            jm = j < r
            vv = tl.load(v_ptr + tl.cast(t, tl.int64) * stride_vt + g * stride_vg + j * stride_vr, mask=jm, other=0.0)
            m = jm[:, None] & nmask[None, :]
            if BLOCK_N <= PAGE_ELEMS:
                b_ptrs = _row_chunk_ptrs(
                    pool_ptr,
                    pt_row,
                    b_off + j * n_g + pid_n * BLOCK_N,
                    tl.arange(0, BLOCK_N),
                    jm,
                    tl.minimum(n_g - pid_n * BLOCK_N, BLOCK_N),
                    PAGE_ELEMS,
                )
            else:
                b_ptrs = _virtual_ptrs(pool_ptr, pt_row, b_off + j[:, None] * n_g + n[None, :], m, PAGE_ELEMS)
            bt = tl.load(b_ptrs, mask=m, other=0.0)
            acc2 += vv.to(tl.float32)[:, None] * bt.to(tl.float32)
        acc = tl.sum(acc2, axis=0)
        yp = y_ptr + tl.cast(t, tl.int64) * stride_yt + (n_lo + n) * stride_yn
        yv = tl.load(yp, mask=nmask, other=0.0)
        tl.store(yp, (yv.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=nmask)


@triton.jit(do_not_specialize=["n_nb", "stride_vt", "stride_vg", "stride_pt"])
def _lora_expand_prefill_kernel(
    y_ptr,
    v_ptr,
    pool_ptr,
    pt_ptr,
    off_ptr,
    rank_ptr,
    scale_ptr,
    indptr_ptr,
    slot_ptr,
    G,
    n_nb,
    o0,
    o1,
    o2,
    o3,
    o4,
    o5,
    o6,
    o7,
    o8,
    stride_yt,
    stride_yn,
    stride_vt,
    stride_vg,
    stride_vr,
    stride_pt,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """SGMV expand: program (segment, token tile x column block, g); tl.dot over rank blocks up to r."""
    seg = tl.program_id(0)
    pid1 = tl.program_id(1)
    g = tl.program_id(2)
    tile = pid1 // n_nb
    pid_n = pid1 % n_nb
    r, b_off, pt_row = _segment_rank(slot_ptr, rank_ptr, off_ptr, pt_ptr, seg, g, G, stride_pt)
    if r == 0:
        return
    t0 = tl.load(indptr_ptr + seg)
    t1 = tl.load(indptr_ptr + seg + 1)
    if t0 + tile * BLOCK_T >= t1:
        return
    n_lo = _pick(g, o0, o1, o2, o3, o4, o5, o6, o7, o8)
    n_g = _pick(g + 1, o0, o1, o2, o3, o4, o5, o6, o7, o8) - n_lo
    if pid_n * BLOCK_N >= n_g:
        return
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < n_g
    tok = t0 + tile * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = tok < t1
    scale = tl.load(scale_ptr + tl.maximum(tl.load(slot_ptr + seg), 0)).to(tl.float32)
    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    for j0 in range(0, r, BLOCK_R):
        j = j0 + tl.arange(0, BLOCK_R)
        jm = j < r
        vv = tl.load(
            v_ptr + tok.to(tl.int64)[:, None] * stride_vt + g * stride_vg + j[None, :] * stride_vr,
            mask=tmask[:, None] & jm[None, :],
            other=0.0,
        )
        m = jm[:, None] & nmask[None, :]
        bt = tl.load(
            _virtual_ptrs(pool_ptr, pt_row, b_off + j[:, None] * n_g + n[None, :], m, PAGE_ELEMS), mask=m, other=0.0
        )
        acc = tl.dot(vv.to(bt.dtype), bt, acc, input_precision=INPUT_PRECISION)
    yp = y_ptr + tok.to(tl.int64)[:, None] * stride_yt + (n_lo + n)[None, :] * stride_yn
    ym = tmask[:, None] & nmask[None, :]
    yv = tl.load(yp, mask=ym, other=0.0)
    tl.store(yp, (yv.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=ym)


@triton.jit(do_not_specialize=["n_seg", "S"])
def _decode_plan_kernel(indptr_ptr, slot_ptr, plan_ptr, n_seg, S, BLOCK: tl.constexpr, BLOCK_J: tl.constexpr):
    """Counting sort of decode segments by adapter slot (no host sync). For segment i at sorted position
    p (segments with a LoRA first, by slot; then the rest, in order):
      plan[0, p] token of the segment (-1 if empty), plan[1, p] slot (-1: no LoRA or empty),
      plan[2, p] / plan[3, p] first / end position of the run of positions with the same slot."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    im = i < n_seg
    si = tl.load(slot_ptr + i, mask=im, other=-1)
    lo = tl.load(indptr_ptr + i, mask=im, other=0)
    hi = tl.load(indptr_ptr + i + 1, mask=im, other=0)
    vi = im & (si >= 0) & (hi > lo)
    key_i = tl.where(vi, si, S)
    less = tl.zeros([BLOCK], dtype=tl.int32)
    eqb = tl.zeros([BLOCK], dtype=tl.int32)
    cnt = tl.zeros([BLOCK], dtype=tl.int32)
    for j0 in range(0, n_seg, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        jm = j < n_seg
        sj = tl.load(slot_ptr + j, mask=jm, other=-1)
        loj = tl.load(indptr_ptr + j, mask=jm, other=0)
        hij = tl.load(indptr_ptr + j + 1, mask=jm, other=0)
        key_j = tl.where(jm, tl.where((sj >= 0) & (hij > loj), sj, S), S + 1)
        lt = key_j[None, :] < key_i[:, None]
        eq = key_j[None, :] == key_i[:, None]
        less += tl.sum(lt.to(tl.int32), axis=1)
        eqb += tl.sum((eq & (j[None, :] < i[:, None])).to(tl.int32), axis=1)
        cnt += tl.sum(eq.to(tl.int32), axis=1)
    pos = less + eqb
    tl.store(plan_ptr + pos, tl.where(hi > lo, lo, -1), mask=im)
    tl.store(plan_ptr + n_seg + pos, tl.where(vi, key_i, -1), mask=im)
    tl.store(plan_ptr + 2 * n_seg + pos, less, mask=im)
    tl.store(plan_ptr + 3 * n_seg + pos, less + cnt, mask=im)


@triton.jit(do_not_specialize=["n_seg"])
def _decode_tiles_kernel(plan_ptr, n_seg, TILE_M: tl.constexpr, BLOCK: tl.constexpr, N_COUNTERS: tl.constexpr):
    """One program: plan[4, :] = the sorted positions where a tile starts (a LoRA slot's run, cut every
    TILE_M positions), in order, then -1; plan[5, i] / plan[6, i] = tile i's slot (-1: no tile i) and the
    end of its slot's run, so a decode program reads its slot without first reading its start. The decode
    kernels launch one program per tile (up to a static bound), not one per position: programs that would
    exit at once still hold an SM slot while they run.
    plan[7:7 + N_COUNTERS, :] = 0 (the fused kernel's counters, per target g and tile)."""
    carry = 0
    for p0 in range(0, n_seg, BLOCK):
        p = p0 + tl.arange(0, BLOCK)
        pm = p < n_seg
        slot = tl.load(plan_ptr + n_seg + p, mask=pm, other=-1)
        rs = tl.load(plan_ptr + 2 * n_seg + p, mask=pm, other=0)
        start = pm & (slot >= 0) & ((p - rs) % TILE_M == 0)
        idx = carry + tl.cumsum(start.to(tl.int32), 0) - 1
        tl.store(plan_ptr + 4 * n_seg + idx, p, mask=start)
        tl.store(plan_ptr + 5 * n_seg + idx, slot, mask=start)
        tl.store(plan_ptr + 6 * n_seg + idx, tl.load(plan_ptr + 3 * n_seg + p, mask=pm, other=0), mask=start)
        carry += tl.sum(start.to(tl.int32), 0)
    for k0 in range(0, n_seg, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        tl.store(plan_ptr + 4 * n_seg + k, tl.full([BLOCK], -1, tl.int32), mask=(k < n_seg) & (k >= carry))
        tl.store(plan_ptr + 5 * n_seg + k, tl.full([BLOCK], -1, tl.int32), mask=(k < n_seg) & (k >= carry))
    for k0 in range(0, N_COUNTERS * n_seg, BLOCK):  # the fused kernel's per-(tile, g) counters start at 0
        k = k0 + tl.arange(0, BLOCK)
        tl.store(plan_ptr + 7 * n_seg + k, tl.zeros([BLOCK], tl.int32), mask=k < N_COUNTERS * n_seg)


@triton.jit
def _chunk_offsets(
    pt_row_ptr, o_row, rmask, n_valid, BLOCK: tl.constexpr, PAGE_ELEMS: tl.constexpr, ALIGNED: tl.constexpr
):
    """Pool offsets [rows, BLOCK] of virtual elements o_row[:, None] + arange(BLOCK) (BLOCK <= PAGE_ELEMS:
    at most two pages per row, two page-table reads per row). ALIGNED: o_row and PAGE_ELEMS are
    multiples of 64, so every 64-run is contiguous in one page and 64-aligned (vectorised loads)."""
    p_i = o_row // PAGE_ELEMS
    w0 = o_row % PAGE_ELEMS
    p_lo = tl.load(pt_row_ptr + p_i, mask=rmask, other=0).to(tl.int64)
    p_hi = tl.load(pt_row_ptr + p_i + 1, mask=rmask & (w0 + n_valid > PAGE_ELEMS), other=0).to(tl.int64)
    w = w0[:, None] + tl.arange(0, BLOCK)[None, :]
    off = tl.where(w < PAGE_ELEMS, p_lo[:, None] * PAGE_ELEMS + w, p_hi[:, None] * PAGE_ELEMS + (w - PAGE_ELEMS))
    if ALIGNED:
        off = tl.max_contiguous(tl.multiple_of(off, [1, 64]), [1, 64])
    return off


@triton.jit
def _plan_tile(plan_ptr, n_seg, pid, BLOCK_M: tl.constexpr):
    """(slot, tokens [BLOCK_M], token mask) of the pid-th tile of the plan (slot -1: no such tile). The
    three plan reads are independent: the slot (first link of the weights' lookup chain) waits on none."""
    ps = tl.maximum(tl.load(plan_ptr + 4 * n_seg + pid), 0)
    slot = tl.load(plan_ptr + 5 * n_seg + pid)
    re = tl.where(slot >= 0, tl.load(plan_ptr + 6 * n_seg + pid), 0)
    m = ps + tl.arange(0, BLOCK_M)
    mm = m < re
    tok = tl.load(plan_ptr + m, mask=mm, other=0)
    return slot, tok.to(tl.int64), mm


@triton.jit
def _zero_no_lora(plan_ptr, n_seg, out_cols, cmask, stride_ot, BLOCK_R: tl.constexpr):
    """Zeroes these columns of the tokens of segments without a LoRA (the plan's last positions)."""
    for p0 in range(0, n_seg, 64):
        p = p0 + tl.arange(0, 64)
        pm = p < n_seg
        slot = tl.load(plan_ptr + n_seg + p, mask=pm, other=0)
        tok = tl.load(plan_ptr + p, mask=pm, other=-1)
        m = pm & (slot < 0) & (tok >= 0)
        tl.store(
            out_cols[None, :] + tok.to(tl.int64)[:, None] * stride_ot,
            tl.zeros([64, BLOCK_R], dtype=out_cols.dtype.element_ty),
            mask=m[:, None] & cmask[None, :],
        )


@triton.jit
def _shrink_acc(
    x_ptr,
    pool_ptr,
    pt_row,
    a_off,
    j,
    jmask,
    tok,
    mm,
    k_lo,
    k_end,
    K,
    stride_xt,
    stride_xk,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ALIGNED: tl.constexpr,
    ROW_IN_TWO_PAGES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """sum over k in [k_lo, k_end) of x[tok, k] * A[j, k] (A row j at virtual a_off + j * K; rows outside
    jmask are zero): the [BLOCK_M, BLOCK_R] float32 block of a decode shrink tile."""
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
        xv = tl.load(
            x_ptr + tok[:, None] * stride_xt + k[None, :] * stride_xk, mask=mm[:, None] & kmask[None, :], other=0.0
        )
        if ROW_IN_TWO_PAGES:
            w = w0[:, None] + k[None, :]
            a_offs = tl.where(w < PAGE_ELEMS, p_lo[:, None] + w, p_hi[:, None] + (w - PAGE_ELEMS))
            if ALIGNED:
                a_offs = tl.max_contiguous(tl.multiple_of(a_offs, [1, 64]), [1, 64])
        else:
            a_offs = _chunk_offsets(
                pt_row, o_row + k0, jmask, tl.minimum(K - k0, BLOCK_K), BLOCK_K, PAGE_ELEMS, ALIGNED
            )
        a = tl.load(pool_ptr + a_offs, mask=jmask[:, None] & kmask[None, :], other=0.0)  # A [BLOCK_R, BLOCK_K]
        acc = tl.dot(xv, tl.trans(a), acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit(do_not_specialize=["T", "R", "n_seg", "col_mult", "stride_pt", "stride_ot", "stride_og", "n_tiles"])
def _lora_shrink_grouped_kernel(
    x_ptr,
    pool_ptr,
    pt_ptr,
    off_ptr,
    rank_ptr,
    indptr_ptr,
    plan_ptr,
    out_ptr,
    T,
    K,
    R,
    G,
    n_seg,
    col_mult,
    stride_xt,
    stride_xk,
    stride_pt,
    stride_ot,
    stride_og,
    stride_or,
    n_split,
    n_tiles,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ALIGNED: tl.constexpr,
    SPLIT_ATOMIC: tl.constexpr,
    ROW_IN_TWO_PAGES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Decode shrink, tokens grouped by adapter: program (tile of the plan, g, block of out columns x
    K split) handles the <= BLOCK_M tokens of one slot; A is read once per tile, tl.dot of the gathered
    x tile [BLOCK_M, BLOCK_K] and A^T [BLOCK_K, BLOCK_R]. Program n_tiles writes the zeros of tokens
    without a LoRA or outside every segment.
    Split-K (n_split > 1, SPLIT_ATOMIC): each program sums one K range and atomically adds it into `out`,
    which the wrapper zeroed (float32); otherwise every program stores its columns, zeros included."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    pid_r = tl.program_id(2) // n_split
    ks = tl.program_id(2) % n_split
    cols = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cmask = cols < R
    out_cols = out_ptr + g * stride_og + cols * stride_or
    if pid == n_tiles:
        if not SPLIT_ATOMIC and ks == 0:
            _zero_outside_segments(out_cols, cmask, indptr_ptr, n_seg, T, stride_ot, BLOCK_R)
            _zero_no_lora(plan_ptr, n_seg, out_cols, cmask, stride_ot, BLOCK_R)
        return
    slot, tok, mm = _plan_tile(plan_ptr, n_seg, pid, BLOCK_M)
    if slot < 0:
        return
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
    acc = _shrink_acc(
        x_ptr,
        pool_ptr,
        pt_row,
        a_off,
        j,
        jmask,
        tok,
        mm,
        k_lo,
        k_end,
        K,
        stride_xt,
        stride_xk,
        PAGE_ELEMS,
        BLOCK_M,
        BLOCK_R,
        BLOCK_K,
        ALIGNED,
        ROW_IN_TWO_PAGES,
        INPUT_PRECISION,
    )
    if SPLIT_ATOMIC:
        tl.atomic_add(
            out_cols[None, :] + tok[:, None] * stride_ot, acc, mask=mm[:, None] & cmask[None, :], sem="relaxed"
        )
    else:
        tl.store(
            out_cols[None, :] + tok[:, None] * stride_ot,
            acc.to(out_ptr.dtype.element_ty),
            mask=mm[:, None] & cmask[None, :],
        )


@triton.jit
def _expand_tile(
    plan_ptr,
    n_seg,
    tile,
    rank_ptr,
    off_ptr,
    scale_ptr,
    pt_ptr,
    stride_pt,
    G,
    g,
    o0,
    o1,
    o2,
    o3,
    o4,
    o5,
    o6,
    o7,
    o8,
    BLOCK_M: tl.constexpr,
):
    """(tokens, token mask, rank r, B^T offset, page-table row, scale, first column n_lo, width n_g) of
    tile `tile` of the plan and target g in a decode expand; r = 0 when there is no such tile or the
    adapter has no target g (nothing to do)."""
    slot, tok, mm = _plan_tile(plan_ptr, n_seg, tile, BLOCK_M)
    s = tl.maximum(slot, 0)
    r = tl.where(slot >= 0, tl.load(rank_ptr + s * G + g), 0)
    b_off = tl.load(off_ptr + s * G + g)
    scale = tl.load(scale_ptr + s).to(tl.float32)
    n_lo = _pick(g, o0, o1, o2, o3, o4, o5, o6, o7, o8)
    n_g = _pick(g + 1, o0, o1, o2, o3, o4, o5, o6, o7, o8) - n_lo
    return tok, mm, r, b_off, pt_ptr + s.to(tl.int64) * stride_pt, scale, n_lo, n_g


@triton.jit
def _y_block(y_ptr, tok, mm, n_lo, n_g, pid_n, stride_yt, stride_yn, BLOCK_N: tl.constexpr):
    """Pointers, mask and current values of the [BLOCK_M, BLOCK_N] block of y that a decode expand program
    updates (columns n_lo + block pid_n of a target n_g wide). The y read is issued before the B^T reads,
    so its latency overlaps theirs."""
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    yp = y_ptr + tok[:, None] * stride_yt + (n_lo + n)[None, :] * stride_yn
    ym = mm[:, None] & (n < n_g)[None, :]
    return yp, ym, tl.load(yp, mask=ym, other=0.0)


@triton.jit
def _expand_acc(
    v_ptr,
    pool_ptr,
    pt_row,
    b_off,
    r,
    tok,
    mm,
    n_g,
    pid_n,
    stride_vt,
    stride_vr,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ALIGNED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """sum over j < r of v[tok, j] * B^T[j, n] for the columns n of block pid_n (B^T row j at virtual
    b_off + j * n_g): the [BLOCK_M, BLOCK_N] float32 block of a decode expand tile."""
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < n_g
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for j0 in range(0, r, BLOCK_R):
        j = j0 + tl.arange(0, BLOCK_R)
        jm = j < r
        vv = tl.load(
            v_ptr + tok[:, None] * stride_vt + j[None, :] * stride_vr, mask=mm[:, None] & jm[None, :], other=0.0
        )
        b_offs = _chunk_offsets(
            pt_row,
            b_off + tl.where(jm, j, 0) * n_g + pid_n * BLOCK_N,
            jm,
            tl.minimum(n_g - pid_n * BLOCK_N, BLOCK_N),
            BLOCK_N,
            PAGE_ELEMS,
            ALIGNED,
        )
        bt = tl.load(pool_ptr + b_offs, mask=jm[:, None] & nmask[None, :], other=0.0)
        acc = tl.dot(vv.to(bt.dtype), bt, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit(do_not_specialize=["n_seg", "stride_vt", "stride_vg", "stride_pt"])
def _lora_expand_grouped_kernel(
    y_ptr,
    v_ptr,
    pool_ptr,
    pt_ptr,
    off_ptr,
    rank_ptr,
    scale_ptr,
    plan_ptr,
    G,
    n_seg,
    o0,
    o1,
    o2,
    o3,
    o4,
    o5,
    o6,
    o7,
    o8,
    stride_yt,
    stride_yn,
    stride_vt,
    stride_vg,
    stride_vr,
    stride_pt,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ALIGNED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Decode expand, tokens grouped by adapter: program (tile of the plan, g, block of N) handles the
    <= BLOCK_M tokens of one slot; B^T [BLOCK_R, BLOCK_N] tiles read once per tile."""
    g = tl.program_id(1)
    pid_n = tl.program_id(2)
    tok, mm, r, b_off, pt_row, scale, n_lo, n_g = _expand_tile(
        plan_ptr,
        n_seg,
        tl.program_id(0),
        rank_ptr,
        off_ptr,
        scale_ptr,
        pt_ptr,
        stride_pt,
        G,
        g,
        o0,
        o1,
        o2,
        o3,
        o4,
        o5,
        o6,
        o7,
        o8,
        BLOCK_M,
    )
    if r == 0:
        return
    if pid_n * BLOCK_N >= n_g:
        return
    yp, ym, yv = _y_block(y_ptr, tok, mm, n_lo, n_g, pid_n, stride_yt, stride_yn, BLOCK_N)
    acc = _expand_acc(
        v_ptr + g * stride_vg,
        pool_ptr,
        pt_row,
        b_off,
        r,
        tok,
        mm,
        n_g,
        pid_n,
        stride_vt,
        stride_vr,
        PAGE_ELEMS,
        BLOCK_M,
        BLOCK_R,
        BLOCK_N,
        ALIGNED,
        INPUT_PRECISION,
    )
    tl.store(yp, (yv.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=ym)


@triton.jit(do_not_specialize=["n_seg", "stride_vt", "stride_vg", "stride_pt"])
def _lora_expand_stream_kernel(
    y_ptr,
    v_ptr,
    pool_ptr,
    pt_ptr,
    off_ptr,
    rank_ptr,
    scale_ptr,
    plan_ptr,
    G,
    n_seg,
    o0,
    o1,
    o2,
    o3,
    o4,
    o5,
    o6,
    o7,
    o8,
    stride_yt,
    stride_yn,
    stride_vt,
    stride_vg,
    stride_vr,
    stride_pt,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    N_PER: tl.constexpr,
    ALIGNED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Decode expand, tokens grouped by adapter, streaming over N: program (tile of the plan, g, range of
    N_PER output columns) keeps the tile's v [BLOCK_M, BLOCK_R] in registers and walks its columns in
    BLOCK_N steps (a pipelined loop: several B^T reads in flight), each step updating y. Ranks above
    BLOCK_R take further passes over the columns (a barrier between passes: the next pass reads y back)."""
    g = tl.program_id(1)
    tok, mm, r, b_off, pt_row, scale, n_lo, n_g = _expand_tile(
        plan_ptr,
        n_seg,
        tl.program_id(0),
        rank_ptr,
        off_ptr,
        scale_ptr,
        pt_ptr,
        stride_pt,
        G,
        g,
        o0,
        o1,
        o2,
        o3,
        o4,
        o5,
        o6,
        o7,
        o8,
        BLOCK_M,
    )
    if r == 0:
        return
    n_start = tl.program_id(2) * N_PER
    if n_start >= n_g:
        return
    n_stop = tl.minimum(n_g, n_start + N_PER)
    for j0 in range(0, r, BLOCK_R):
        j = j0 + tl.arange(0, BLOCK_R)
        jm = j < r
        vv = tl.load(
            v_ptr + tok[:, None] * stride_vt + g * stride_vg + j[None, :] * stride_vr,
            mask=mm[:, None] & jm[None, :],
            other=0.0,
        )
        vb = vv.to(pool_ptr.dtype.element_ty)
        o_row = b_off + tl.where(jm, j, 0) * n_g
        for n0 in range(n_start, n_stop, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nmask = n < n_stop
            b_offs = _chunk_offsets(pt_row, o_row + n0, jm, tl.minimum(n_g - n0, BLOCK_N), BLOCK_N, PAGE_ELEMS, ALIGNED)
            bt = tl.load(pool_ptr + b_offs, mask=jm[:, None] & nmask[None, :], other=0.0)
            acc = tl.dot(vb, bt, input_precision=INPUT_PRECISION)
            yp = y_ptr + tok[:, None] * stride_yt + (n_lo + n)[None, :] * stride_yn
            ym = mm[:, None] & nmask[None, :]
            yv = tl.load(yp, mask=ym, other=0.0)
            tl.store(yp, (yv.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=ym)
        tl.debug_barrier()


@triton.jit(
    do_not_specialize=[
        "K",
        "G",
        "n_seg",
        "n_tiles",
        "n_rb",
        "n_nb",
        "R",
        "stride_xt",
        "stride_yt",
        "stride_vt",
        "stride_vg",
        "stride_pt",
    ]
)
def _lora_decode_fused_kernel(
    x_ptr,
    y_ptr,
    v_ptr,
    pool_ptr,
    pt_ptr,
    a_off_ptr,
    b_off_ptr,
    rank_ptr,
    scale_ptr,
    plan_ptr,
    K,
    G,
    n_seg,
    n_tiles,
    n_rb,
    n_nb,
    R,
    o0,
    o1,
    o2,
    o3,
    o4,
    o5,
    o6,
    o7,
    o8,
    stride_xt,
    stride_xk,
    stride_yt,
    stride_yn,
    stride_vt,
    stride_vg,
    stride_vr,
    stride_pt,
    PAGE_ELEMS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    SHRINK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EXPAND_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ROW_IN_TWO_PAGES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    MAX_SPINS: tl.constexpr,
):
    """Decode shrink and expand in one launch: y[tok, cols of g] += scale * (x[tok] @ A_g^T) @ B_g^T.

    Programs [0, n_tiles * G * n_rb) are shrink items (tile, g, block of SHRINK_R rank rows): each sums
    over all of K and stores its block of v (float32 scratch), then counts itself done in the plan's
    counter for (tile, g) (a barrier, then a release atomic). The programs after them are expand items
    (tile, g, block of BLOCK_N columns): each looks up its tile, target and pages, waits (acquire) until
    all cdiv(r, SHRINK_R) shrink items of (tile, g) are done, and adds its block into y. The last expand
    item of (tile, g) puts the counter back to 0 for the next launch. Waiting is safe because every
    shrink item has a lower program id than every expand item: the GPU starts blocks in id order, so a
    waiting program's producers are already running or done (the interpreter runs programs in order).
    Memory order: producer stores, barrier, release add; consumer acquire load (PTX ld.acquire.gpu, which
    also keeps its SM from reading stale L1 lines), barrier (Triton broadcasts the scalar), then v loads.
    A wait longer than MAX_SPINS polls (never expected) writes NaN into y instead of hanging."""
    pid = tl.program_id(0)
    n_shrink = n_tiles * G * n_rb
    if pid < n_shrink:
        tile = pid // (G * n_rb)
        g = (pid // n_rb) % G
        pid_r = pid % n_rb
        slot, tok, mm = _plan_tile(plan_ptr, n_seg, tile, BLOCK_M)
        if slot >= 0:
            r = tl.load(rank_ptr + slot * G + g)
            if pid_r * SHRINK_R < r:
                a_off = tl.load(a_off_ptr + slot * G + g)
                j = pid_r * SHRINK_R + tl.arange(0, SHRINK_R)
                jmask = j < r
                acc = _shrink_acc(
                    x_ptr,
                    pool_ptr,
                    pt_ptr + slot.to(tl.int64) * stride_pt,
                    a_off,
                    j,
                    jmask,
                    tok,
                    mm,
                    0,
                    K,
                    K,
                    stride_xt,
                    stride_xk,
                    PAGE_ELEMS,
                    BLOCK_M,
                    SHRINK_R,
                    BLOCK_K,
                    True,
                    ROW_IN_TWO_PAGES,
                    INPUT_PRECISION,
                )
                tl.store(
                    v_ptr + g * stride_vg + tok[:, None] * stride_vt + j[None, :] * stride_vr,
                    acc,
                    mask=mm[:, None] & (j < R)[None, :],
                )
                tl.debug_barrier()  # every thread's v stores happen before the release below
                tl.atomic_add(plan_ptr + (7 + g) * n_seg + tile, 1, sem="release", scope="gpu")
    else:
        e = pid - n_shrink
        tile = e // (G * n_nb)
        g = (e // n_nb) % G
        pid_n = e % n_nb
        tok, mm, r, b_off, pt_row, scale, n_lo, n_g = _expand_tile(
            plan_ptr,
            n_seg,
            tile,
            rank_ptr,
            b_off_ptr,
            scale_ptr,
            pt_ptr,
            stride_pt,
            G,
            g,
            o0,
            o1,
            o2,
            o3,
            o4,
            o5,
            o6,
            o7,
            o8,
            BLOCK_M,
        )
        if (r > 0) & (pid_n * BLOCK_N < n_g):
            yp, ym, yv = _y_block(y_ptr, tok, mm, n_lo, n_g, pid_n, stride_yt, stride_yn, BLOCK_N)
            cnt = plan_ptr + (7 + g) * n_seg + tile
            need = tl.minimum(tl.cdiv(r, SHRINK_R), n_rb)  # the live shrink items of (tile, g)
            done = tl.atomic_add(cnt, 0, sem="acquire", scope="gpu")
            spins = 0
            while (done < need) & (spins < MAX_SPINS):
                done = tl.atomic_add(cnt, 0, sem="acquire", scope="gpu")
                spins += 1
            acc = _expand_acc(
                v_ptr + g * stride_vg,
                pool_ptr,
                pt_row,
                b_off,
                r,
                tok,
                mm,
                n_g,
                pid_n,
                stride_vt,
                stride_vr,
                PAGE_ELEMS,
                BLOCK_M,
                EXPAND_R,
                BLOCK_N,
                True,
                INPUT_PRECISION,
            )
            if done < need:  # never expected: fail loudly (NaN) rather than hang the GPU
                acc = tl.full([BLOCK_M, BLOCK_N], float("nan"), tl.float32)
            tl.store(yp, (yv.to(tl.float32) + acc * scale).to(y_ptr.dtype.element_ty), mask=ym)
            if tl.atomic_add(cnt, 1, sem="relaxed", scope="gpu") == need + tl.cdiv(n_g, BLOCK_N) - 1:
                tl.atomic_xchg(cnt, 0, sem="relaxed", scope="gpu")


# ----------------------------------------------------------------------------------------------------
# Launch wrappers (same signatures as the references; no host synchronisation)
# ----------------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INT_DTYPES = (torch.int32, torch.int64)


def _check_triton_lora(
    name: str,
    dense: torch.Tensor,
    pool: torch.Tensor,
    page_table: torch.Tensor,
    offsets: torch.Tensor,
    ranks: torch.Tensor,
    seg_indptr: torch.Tensor,
    seg_slot: torch.Tensor,
    extra: dict[str, torch.Tensor],
    float32_ok: bool = False,
) -> None:
    check_lora_args(dense, pool, page_table, offsets, ranks, seg_indptr, seg_slot, float32_ok)
    if pool.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: pool dtype {pool.dtype} is not float16/bfloat16/float32")
    if pool.stride(1) != 1 or pool.stride(0) != pool.shape[1]:
        raise ValueError(f"{name}: pool must be contiguous [num_pages, page_elems]")
    for what, t in (
        ("page_table", page_table),
        ("offsets", offsets),
        ("ranks", ranks),
        ("seg_indptr", seg_indptr),
        ("seg_slot", seg_slot),
    ):
        if t.dtype not in _INT_DTYPES:
            raise ValueError(f"{name}: {what} must be int32 or int64, got {t.dtype}")
    if page_table.shape[0] != offsets.shape[0]:
        raise ValueError(f"{name}: page_table has {page_table.shape[0]} slots, offsets {offsets.shape[0]}")
    for what, t in (
        ("page_table", page_table),
        ("offsets", offsets),
        ("ranks", ranks),
        ("seg_indptr", seg_indptr),
        ("seg_slot", seg_slot),
        *extra.items(),
    ):
        if t.device != pool.device:
            raise ValueError(f"{name}: {what} is on {t.device}, pool on {pool.device}")
    if offsets.shape[1] > MAX_G:
        raise ValueError(f"{name}: at most {MAX_G} targets per launch, got G={offsets.shape[1]}")


def _npow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def _fit_page(block: int, page_elems: int) -> int:
    """Shrinks a decode block to fit in one page (>= 16), so a row chunk touches at most two pages."""
    while block > 16 and block > page_elems:
        block //= 2
    return block


def _input_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs


# Decode fast path (tokens grouped by adapter, vectorised page reads) launch parameters; benchmarks may
# override entries. GPU values were picked on an H100 (benchmarks/kernels.py).
DECODE_CFG = dict(
    shrink_r=64,
    shrink_k=128,
    shrink_warps=4,
    shrink_stages=3,
    shrink_split=2,
    expand_r=16,
    expand_n=256,
    expand_warps=4,
    expand_stages=2,
    expand_stream=False,
    stream_r=64,
    stream_n=64,
    stream_per=1024,
    stream_warps=4,
    stream_stages=3,
    fused=False,
    fused_r=32,
    fused_k=128,
    fused_er=16,
    fused_n=128,
    fused_warps=4,
    fused_stages=3,
)
# expand_stream: `_lora_expand_stream_kernel` instead of `_lora_expand_grouped_kernel`; fused: `lora_apply`
# runs decode shrink + expand as one launch (`_lora_decode_fused_kernel`: shrink blocks of fused_r rank rows
# x fused_k, expand blocks of fused_er rank rows x fused_n columns; these defaults compile for sm_90 to 149
# registers, no spills, both loops pipelined: benchmarks/kernel_compile.py). Both are checked on the CPU
# interpreter and not yet timed on a GPU: off until `benchmarks/lora_tune.py --layer` shows them faster.
DECODE_TILE_M = 16  # tokens of one adapter per decode program (the plan's tiles)
PLAN_ROWS = 7 + MAX_G  # lora_decode_plan: token, slot, run start, run end; tile start, slot, run end; counters


def _decode_tiles(n_seg: int, n_slots: int) -> int:
    """Static bound on the plan's tiles (the grid size, CUDA-graph safe): each of the <= n_slots distinct
    slots of a batch of n_seg tokens adds at most one partial tile."""
    return min(n_seg, (n_seg + n_slots * (DECODE_TILE_M - 1)) // DECODE_TILE_M)


def _decode_launch(kind: str) -> dict:
    if _INTERPRET:
        return {}
    c = DECODE_CFG
    return dict(num_warps=c[f"{kind}_warps"], num_stages=c[f"{kind}_stages"])


def lora_decode_plan(seg_indptr: torch.Tensor, seg_slot: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Segments sorted by adapter slot and cut into tiles, computed on the device (two launches, no host
    sync): int32 [PLAN_ROWS, n_seg] (see `_decode_plan_kernel` and `_decode_tiles_kernel`; rows 7.. are the
    fused kernel's counters). Build it once per
    decode step and pass it as `plan=` to every aligned decode `lora_shrink` / `lora_expand` call of that
    step (same seg_indptr / seg_slot / slots)."""
    n_seg = seg_slot.shape[0]
    plan = torch.empty(PLAN_ROWS, n_seg, dtype=torch.int32, device=seg_slot.device)
    if n_seg:
        block, block_j = 32, _npow2(n_seg, 32, 256)  # many small programs: O(n_seg^2) compares
        _decode_plan_kernel[(triton.cdiv(n_seg, block),)](
            seg_indptr, seg_slot, plan, n_seg, int(n_slots), BLOCK=block, BLOCK_J=block_j, num_warps=4
        )
        _decode_tiles_kernel[(1,)](
            plan, n_seg, TILE_M=DECODE_TILE_M, BLOCK=_npow2(n_seg, 32, 1024), N_COUNTERS=MAX_G, num_warps=4
        )
    return plan


def _plan_for(plan, seg_indptr, seg_slot, n_slots):
    if plan is None:
        return lora_decode_plan(seg_indptr, seg_slot, n_slots)
    if plan.shape != (PLAN_ROWS, seg_slot.shape[0]) or plan.dtype != torch.int32 or plan.device != seg_slot.device:
        raise ValueError(
            f"plan must be int32 [{PLAN_ROWS}, n_seg={seg_slot.shape[0]}] on {seg_slot.device} (from lora_decode_plan)"
        )
    return plan


def lora_shrink(
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
    """Triton `lora_shrink_ref`: x [T, K] -> out [T, G, R], every element written.

    aligned=True promises every a_offsets entry is a multiple of 64 (app/lora/adapter.py ALIGN); with
    K and page_elems multiples of 64 (checked here) decode then runs the fast path (tokens grouped by
    adapter, vectorised page reads). plan: optional `lora_decode_plan(seg_indptr, seg_slot, S)` shared
    by the calls of one decode step (computed here when absent)."""
    if x.dim() != 2:
        raise ValueError(f"x must be [T, K], got {tuple(x.shape)}")
    _check_triton_lora("lora_shrink", x, pool, page_table, a_offsets, ranks, seg_indptr, seg_slot, {"out": out})
    T, K = x.shape
    G = a_offsets.shape[1]
    if out.dim() != 3 or out.shape[0] != T or out.shape[1] != G:
        raise ValueError(f"out must be [T={T}, G={G}, R], got {tuple(out.shape)}")
    if out.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"out dtype {out.dtype} is not a float type")
    if col_mult < 0:
        raise ValueError(f"col_mult must be >= 0, got {col_mult}")
    R = out.shape[2]
    n_seg = seg_slot.shape[0]
    if T == 0 or R == 0:
        return out
    page_table, a_offsets, ranks = page_table.contiguous(), a_offsets.contiguous(), ranks.contiguous()
    seg_indptr, seg_slot = seg_indptr.contiguous(), seg_slot.contiguous()
    max_len = T if max_seg_len is None else min(int(max_seg_len), T)
    common = (
        T,
        K,
        R,
        G,
        n_seg,
        col_mult,
        x.stride(0),
        x.stride(1),
        page_table.stride(0),
        out.stride(0),
        out.stride(1),
        out.stride(2),
    )
    P = pool.shape[1]
    if max_len <= 1 and aligned and K % 64 == 0 and P % 64 == 0:
        c = DECODE_CFG
        plan = _plan_for(plan, seg_indptr, seg_slot, page_table.shape[0])
        block_r = _npow2(R, 16, 256) if _INTERPRET else c["shrink_r"]
        block_k = _fit_page(128 if _INTERPRET else c["shrink_k"], P)
        # split-K (atomic float32 partial sums) when out is float32: more, shorter programs
        n_split = min(c["shrink_split"], triton.cdiv(K, block_k)) if out.dtype == torch.float32 else 1
        if n_split > 1:
            out.zero_()
        n_tiles = _decode_tiles(n_seg, page_table.shape[0])
        grid = (n_tiles + 1, G, triton.cdiv(R, block_r) * n_split)
        _lora_shrink_grouped_kernel[grid](
            x,
            pool,
            page_table,
            a_offsets,
            ranks,
            seg_indptr,
            plan,
            out,
            *common,
            n_split,
            n_tiles,
            PAGE_ELEMS=P,
            BLOCK_M=DECODE_TILE_M,
            BLOCK_R=block_r,
            BLOCK_K=block_k,
            ALIGNED=True,
            SPLIT_ATOMIC=n_split > 1,
            ROW_IN_TWO_PAGES=K <= P,
            INPUT_PRECISION=_input_precision(pool.dtype),
            **_decode_launch("shrink"),
        )
    elif max_len <= 1:
        block_r = _npow2(R, 8, 256) if _INTERPRET else 8  # ranks are usually multiples of 8
        block_k = _fit_page(1024 if _INTERPRET else 512, pool.shape[1])
        grid = (n_seg + 1, G, triton.cdiv(R, block_r))
        _lora_shrink_decode_kernel[grid](
            x,
            pool,
            page_table,
            a_offsets,
            ranks,
            seg_indptr,
            seg_slot,
            out,
            *common,
            PAGE_ELEMS=pool.shape[1],
            BLOCK_R=block_r,
            BLOCK_K=block_k,
            num_warps=4,
        )
    else:
        block_t = _npow2(max_len, 16, 64)
        block_r = _npow2(R, 16, 64 if not _INTERPRET else 256)
        block_k = 256 if _INTERPRET else 64
        grid = (n_seg + 1, triton.cdiv(max_len, block_t) * triton.cdiv(R, block_r), G)
        _lora_shrink_prefill_kernel[grid](
            x,
            pool,
            page_table,
            a_offsets,
            ranks,
            seg_indptr,
            seg_slot,
            out,
            *common,
            PAGE_ELEMS=pool.shape[1],
            BLOCK_T=block_t,
            BLOCK_R=block_r,
            BLOCK_K=block_k,
            INPUT_PRECISION=_input_precision(pool.dtype),
            num_warps=4,
        )
    return out


def lora_expand(
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
    """Triton `lora_expand_ref`: y[:, out_offsets[g]:out_offsets[g+1]] += scale * v[:, g, :r] @ B_g^T.

    aligned / plan: as in `lora_shrink` (aligned promises 64-aligned b_offsets; every N_g and
    page_elems must be multiples of 64 for the fast path, checked here)."""
    if y.dim() != 2 or v.dim() != 3:
        raise ValueError(f"y must be [T, N] and v [T, G, R], got {tuple(y.shape)} and {tuple(v.shape)}")
    _check_triton_lora(
        "lora_expand",
        v,
        pool,
        page_table,
        b_offsets,
        ranks,
        seg_indptr,
        seg_slot,
        {"y": y, "scales": scales},
        float32_ok=True,
    )
    G = b_offsets.shape[1]
    out_offsets = check_out_offsets(out_offsets, G, y)
    T = y.shape[0]
    if v.shape[0] != T or v.shape[1] != G:
        raise ValueError(f"v must be [T={T}, G={G}, R], got {tuple(v.shape)}")
    if y.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"y dtype {y.dtype} is not a float type")
    _check_scales(scales, page_table)
    n_seg = seg_slot.shape[0]
    if T == 0 or n_seg == 0:
        return y
    page_table, b_offsets, ranks = page_table.contiguous(), b_offsets.contiguous(), ranks.contiguous()
    seg_indptr, seg_slot, scales = seg_indptr.contiguous(), seg_slot.contiguous(), scales.contiguous()
    offs, n_max, widths_aligned = _targets_geometry(out_offsets)
    if n_max == 0:
        return y
    R = v.shape[2]
    max_len = T if max_seg_len is None else min(int(max_seg_len), T)
    strides = (y.stride(0), y.stride(1), v.stride(0), v.stride(1), v.stride(2), page_table.stride(0))
    P = pool.shape[1]
    if max_len <= 1 and aligned and P % 64 == 0 and widths_aligned:
        c = DECODE_CFG
        plan = _plan_for(plan, seg_indptr, seg_slot, page_table.shape[0])
        if c["expand_stream"]:  # the interpreter: 16-row rank blocks, so several rank passes run
            kind, kernel = "stream", _lora_expand_stream_kernel
            block_n = _fit_page(64 if _INTERPRET else c["stream_n"], P)
            n_per = 128 if _INTERPRET else c["stream_per"]
            consts = dict(BLOCK_R=16 if _INTERPRET else c["stream_r"], BLOCK_N=block_n, N_PER=n_per)
        else:
            kind, kernel = "expand", _lora_expand_grouped_kernel
            n_per = _fit_page(_npow2(n_max, 64, 1024) if _INTERPRET else c["expand_n"], P)
            consts = dict(BLOCK_R=_npow2(R, 16, 256) if _INTERPRET else c["expand_r"], BLOCK_N=n_per)
        kernel[(_decode_tiles(n_seg, page_table.shape[0]), G, triton.cdiv(n_max, n_per))](
            y,
            v,
            pool,
            page_table,
            b_offsets,
            ranks,
            scales,
            plan,
            G,
            n_seg,
            *offs,
            *strides,
            PAGE_ELEMS=P,
            BLOCK_M=DECODE_TILE_M,
            ALIGNED=True,
            INPUT_PRECISION=_input_precision(pool.dtype),
            **consts,
            **_decode_launch(kind),
        )
    elif max_len <= 1:
        block_n = _fit_page(_npow2(n_max, 16, 4096 if _INTERPRET else 512), pool.shape[1])
        block_r = _npow2(R, 8, 256) if _INTERPRET else 8
        grid = (n_seg, G, triton.cdiv(n_max, block_n))
        _lora_expand_decode_kernel[grid](
            y,
            v,
            pool,
            page_table,
            b_offsets,
            ranks,
            scales,
            seg_indptr,
            seg_slot,
            G,
            *offs,
            *strides,
            PAGE_ELEMS=pool.shape[1],
            BLOCK_R=block_r,
            BLOCK_N=block_n,
            num_warps=4,
        )
    else:
        block_t = _npow2(max_len, 16, 64)
        block_n = _npow2(n_max, 16, 1024 if _INTERPRET else 128)
        block_r = _npow2(R, 16, 256 if _INTERPRET else 32)
        n_nb = triton.cdiv(n_max, block_n)
        grid = (n_seg, triton.cdiv(max_len, block_t) * n_nb, G)
        _lora_expand_prefill_kernel[grid](
            y,
            v,
            pool,
            page_table,
            b_offsets,
            ranks,
            scales,
            seg_indptr,
            seg_slot,
            G,
            n_nb,
            *offs,
            *strides,
            PAGE_ELEMS=pool.shape[1],
            BLOCK_T=block_t,
            BLOCK_R=block_r,
            BLOCK_N=block_n,
            INPUT_PRECISION=_input_precision(pool.dtype),
            num_warps=4,
        )
    return y


def lora_apply(
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
    """Triton `lora_apply_ref`: y[:, out_offsets[g]:out_offsets[g+1]] += scale * (x @ A_g^T) @ B_g^T.

    `lora_shrink` into v (float32 [T, G, R]) then `lora_expand`, or, for decode on the aligned fast path
    with DECODE_CFG["fused"], both in one launch (`_lora_decode_fused_kernel`; v is then scratch and holds
    only the blocks the expand reads). aligned / plan: as in `lora_shrink`."""
    K, G = x.shape[1], a_offsets.shape[1]
    out_offsets = check_out_offsets(out_offsets, G, y)
    T, n_seg, P = x.shape[0], seg_slot.shape[0], pool.shape[1]
    max_len = T if max_seg_len is None else min(int(max_seg_len), T)
    offs, n_max, widths_aligned = _targets_geometry(out_offsets)
    fused = (
        DECODE_CFG["fused"]
        and max_len <= 1
        and aligned
        and T > 0
        and n_seg > 0
        and K % 64 == 0
        and P % 64 == 0
        and widths_aligned
    )
    if not fused:
        lora_shrink(
            x,
            pool,
            page_table,
            a_offsets,
            ranks,
            seg_indptr,
            seg_slot,
            v,
            max_seg_len=max_seg_len,
            aligned=aligned,
            plan=plan,
        )
        return lora_expand(
            y,
            v,
            pool,
            page_table,
            b_offsets,
            ranks,
            scales,
            seg_indptr,
            seg_slot,
            out_offsets,
            max_seg_len=max_seg_len,
            aligned=aligned,
            plan=plan,
        )
    _check_triton_lora(
        "lora_apply", x, pool, page_table, a_offsets, ranks, seg_indptr, seg_slot, {"y": y, "scales": scales}
    )
    if b_offsets.shape != a_offsets.shape:
        raise ValueError(
            f"b_offsets {tuple(b_offsets.shape)} must have the shape of a_offsets {tuple(a_offsets.shape)}"
        )
    if y.dim() != 2 or y.shape[0] != T or v.dim() != 3 or v.shape[:2] != (T, G) or v.dtype != torch.float32:
        raise ValueError(
            f"y must be [T={T}, N] and v float32 [T, G={G}, R], got {tuple(y.shape)} and {tuple(v.shape)} {v.dtype}"
        )
    _check_scales(scales, page_table)
    R = v.shape[2]
    if n_max == 0 or R == 0:
        return y
    c = DECODE_CFG
    plan = _plan_for(plan, seg_indptr, seg_slot, page_table.shape[0])
    page_table, a_offsets, b_offsets = page_table.contiguous(), a_offsets.contiguous(), b_offsets.contiguous()
    ranks, scales = ranks.contiguous(), scales.contiguous()
    shrink_r = _npow2(R, 16, 256) if _INTERPRET else c["fused_r"]
    block_n = _fit_page(_npow2(n_max, 64, 1024) if _INTERPRET else c["fused_n"], P)
    n_tiles, n_rb, n_nb = (
        _decode_tiles(n_seg, page_table.shape[0]),
        triton.cdiv(R, shrink_r),
        triton.cdiv(n_max, block_n),
    )
    launch = {} if _INTERPRET else dict(num_warps=c["fused_warps"], num_stages=c["fused_stages"])
    _lora_decode_fused_kernel[(n_tiles * G * (n_rb + n_nb),)](
        x,
        y,
        v,
        pool,
        page_table,
        a_offsets,
        b_offsets,
        ranks,
        scales,
        plan,
        K,
        G,
        n_seg,
        n_tiles,
        n_rb,
        n_nb,
        R,
        *offs,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        page_table.stride(0),
        PAGE_ELEMS=P,
        BLOCK_M=DECODE_TILE_M,
        SHRINK_R=shrink_r,
        BLOCK_K=_fit_page(128 if _INTERPRET else c["fused_k"], P),
        EXPAND_R=16 if _INTERPRET else c["fused_er"],
        BLOCK_N=block_n,
        ROW_IN_TWO_PAGES=K <= P,
        INPUT_PRECISION=_input_precision(pool.dtype),
        MAX_SPINS=100 if _INTERPRET else 1 << 22,
        **launch,
    )
    return y


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


def _targets_geometry(out_offsets: list[int]) -> tuple[list[int], int, bool]:
    """(out_offsets padded to the MAX_G + 1 scalar kernel arguments, the widest target's columns, whether
    every target's width is a multiple of 64, as the aligned decode kernels need)."""
    widths = [b - a for a, b in zip(out_offsets, out_offsets[1:])]
    return (
        out_offsets + [out_offsets[-1]] * (MAX_G + 1 - len(out_offsets)),
        max(widths),
        all(w % 64 == 0 for w in widths),
    )


def _check_scales(scales: torch.Tensor, page_table: torch.Tensor) -> None:
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


def _segments(seg_indptr: torch.Tensor, seg_slot: torch.Tensor):
    bounds = seg_indptr.tolist()
    slots = seg_slot.tolist()
    for i, s in enumerate(slots):
        if s >= 0 and bounds[i + 1] > bounds[i]:
            yield bounds[i], bounds[i + 1], s


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
    """x: [T, K]; out: [T, G, R] (fully written). See the module docstring for the formula.
    `aligned` and `plan` are the Triton kernels' performance hints; the reference ignores them."""
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
            out[lo:hi, g, c0 : c0 + r] = (x[lo:hi].float() @ a.float().t()).to(out.dtype)
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
    """y: [T, N_total] (updated in place; may be a column-slice view); v: [T, G, R].
    `aligned` and `plan` are the Triton kernels' performance hints; the reference ignores them."""
    check_lora_args(v, pool, page_table, b_offsets, ranks, seg_indptr, seg_slot, float32_ok=True)
    G = b_offsets.shape[1]
    out_offsets = check_out_offsets(out_offsets, G, y)
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
