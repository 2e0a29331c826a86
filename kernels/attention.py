"""Paged attention and KV-cache writes over the unified pool.

KV page layout (one layer's slice `pool`: [num_pages, page_elems], page_elems = 2 * page_size * Hkv * D):
    pool[p].view(2, page_size, Hkv, D): [0] = K, [1] = V of `page_size` consecutive tokens.
Token position `i` of sequence s lives in page `kv_page_table[s, i // page_size]`, row `i % page_size`.

A batch is a list of sequences; sequence s has `seq_lens[s]` tokens in the cache (including its new
ones, already appended) and contributes the query tokens `[q_indptr[s], q_indptr[s+1])`, which are its
*last* q_len positions. Prefill (q_len = seq_len), chunked prefill (cached context + new chunk) and decode
(q_len = 1) mix freely in one batch.

paged_attention:
    out[t, h] = softmax_j( q[t, h] . K[s, j, h // (Hq / Hkv)] * scale ) @ V[s, j, h // (Hq / Hkv)]
    over j <= pos(t) = seq_lens[s] - q_len_s + (t - q_indptr[s])   (causal, grouped-query)
kv_append:
    K[slot // page_size, slot % page_size] = k[t], same for V, with slot = slot_mapping[t] (-1 = skip)

Kernels: prefill (any max_q_len > 1) runs one program per (sequence, tile of its query tokens, query
head), causal flash attention whose keys are gathered row by row through the page table; decode
(max_q_len == 1) runs one program per (sequence, KV head[, partition of keys]) that serves the KV head's
whole query group with one read of each K/V row, split over partitions of DECODE_PARTITION keys
(flash-decoding, merged by a second small kernel) when sequences x KV heads would not fill the GPU.

This file holds the Triton kernels, their launch wrappers (`paged_attention`, `kv_append`, same
signatures as the references, no host synchronisation) and the torch references.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DECODE_PARTITION = 512  # keys per program when decode splits a sequence (flash-decoding); multiple of 64
_LOG2E = 1.4426950408889634
LOG2E = tl.constexpr(_LOG2E)  # the same, inside kernels


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _kv_rows(pt_row_ptr, kpos, kmask, kvh, PAGE_SIZE: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr):
    """Element offsets in the pool of K[kpos, kvh, 0] (V is PAGE_SIZE * HKV * D further), via the page table."""
    page = tl.load(pt_row_ptr + kpos // PAGE_SIZE, mask=kmask, other=0)
    return page.to(tl.int64) * (2 * PAGE_SIZE * HKV * D) + (kpos % PAGE_SIZE) * (HKV * D) + kvh * D


@triton.jit
def _attend(
    q,
    acc,
    m_i,
    l_i,
    pool_ptr,
    pt_row,
    start,
    end,
    pos,
    kvh,
    d,
    dmask,
    sm_scale_log2,
    window,
    softcap,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WINDOWED: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """Flash attention (online softmax, log2 domain) of the query rows q over the keys [start, end) of one
    sequence's pages, KV head kvh, continuing the running state (acc = unnormalised output, row max m_i,
    row sum l_i), which it returns. MASKED: keys past `end` (and, with CAUSAL, keys after a query's
    absolute position `pos`; with WINDOWED too, keys at or before pos - window) are masked; without it the
    caller guarantees [start, end) is whole blocks of keys every query sees, and the masks are not computed.
    SOFTCAP: scores s (natural scale) become softcap * tanh(s / softcap) before the softmax (Gemma 2)."""
    for n0 in range(start, end, BLOCK_N):
        kpos = n0 + tl.arange(0, BLOCK_N)
        if MASKED:
            kmask = kpos < end
            rows = _kv_rows(pt_row, kpos, kmask, kvh, PAGE_SIZE, HKV, D)
            kt = tl.load(pool_ptr + rows[None, :] + d[:, None], mask=kmask[None, :] & dmask[:, None], other=0.0)
        else:
            rows = _kv_rows(pt_row, kpos, kpos >= 0, kvh, PAGE_SIZE, HKV, D)
            kt = tl.load(pool_ptr + rows[None, :] + d[:, None], mask=dmask[:, None], other=0.0)
        qk = tl.dot(q.to(kt.dtype), kt, input_precision=INPUT_PRECISION) * sm_scale_log2
        if SOFTCAP:  # tanh(z) = 1 - 2 / (exp(2z) + 1), in the natural domain, back to log2
            z = qk / (LOG2E * softcap)
            qk = softcap * LOG2E * (1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0))
        if MASKED:
            if CAUSAL:  # noqa: SIM108 - a constexpr `if` statement, pruned when Triton compiles
                visible = (kpos[None, :] <= pos[:, None]) & kmask[None, :]
            else:
                visible = kmask[None, :]
            if WINDOWED:
                visible = visible & (kpos[None, :] > pos[:, None] - window)
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if MASKED:
            vv = tl.load(
                pool_ptr + PAGE_SIZE * HKV * D + rows[:, None] + d[None, :],
                mask=kmask[:, None] & dmask[None, :],
                other=0.0,
            )
        else:
            vv = tl.load(pool_ptr + PAGE_SIZE * HKV * D + rows[:, None] + d[None, :], mask=dmask[None, :], other=0.0)
        acc = tl.dot(p.to(vv.dtype), vv, acc * alpha[:, None], input_precision=INPUT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit(do_not_specialize=["seq_offset", "stride_pt"])
def _paged_attn_prefill_kernel(
    q_ptr,
    pool_ptr,
    pt_ptr,
    seq_lens_ptr,
    q_indptr_ptr,
    out_ptr,
    sm_scale_log2,
    window,
    softcap,
    seq_offset,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_ot,
    stride_oh,
    stride_od,
    stride_pt,
    PAGE_SIZE: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WINDOWED: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """Program (sequence seq_offset + program_id(0), tile of its query tokens, query head): causal flash
    attention over its pages (WINDOWED: over the last `window` positions of each query)."""
    s = tl.program_id(0) + seq_offset
    mt = tl.program_id(1)
    h = tl.program_id(2)
    q0 = tl.load(q_indptr_ptr + s)
    q_len = tl.load(q_indptr_ptr + s + 1) - q0
    if mt * BLOCK_M >= q_len:
        return
    L = tl.load(seq_lens_ptr + s)
    kvh = h // GROUP
    offs_m = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    qmask = offs_m < q_len
    pos = L - q_len + offs_m  # absolute position of each query
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    tok = (q0 + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + tok[:, None] * stride_qt + h * stride_qh + d[None, :] * stride_qd,
        mask=qmask[:, None] & dmask[None, :],
        other=0.0,
    )
    pt_row = pt_ptr + s.to(tl.int64) * stride_pt
    end = tl.minimum(L, L - q_len + (mt + 1) * BLOCK_M)  # keys past the tile's last query: skipped
    # keys every query of the tile sees, in whole blocks: no masks; then the diagonal (and ragged) rest
    full = ((L - q_len + mt * BLOCK_M) // BLOCK_N) * BLOCK_N
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if WINDOWED:  # masked from the first block any query of the tile sees
        lo = tl.maximum(L - q_len + mt * BLOCK_M - window + 1, 0) // BLOCK_N * BLOCK_N
        acc, m_i, l_i = _attend(
            q, acc, m_i, l_i, pool_ptr, pt_row, lo, end, pos, kvh, d, dmask, sm_scale_log2, window, softcap,
            True, True, PAGE_SIZE, HKV, D, BLOCK_N, INPUT_PRECISION, True, SOFTCAP,
        )  # fmt: skip
    else:
        acc, m_i, l_i = _attend(
            q, acc, m_i, l_i, pool_ptr, pt_row, 0, full, pos, kvh, d, dmask, sm_scale_log2, window, softcap,
            False, True, PAGE_SIZE, HKV, D, BLOCK_N, INPUT_PRECISION, False, SOFTCAP,
        )  # fmt: skip
        acc, m_i, l_i = _attend(
            q, acc, m_i, l_i, pool_ptr, pt_row, full, end, pos, kvh, d, dmask, sm_scale_log2, window, softcap,
            True, True, PAGE_SIZE, HKV, D, BLOCK_N, INPUT_PRECISION, False, SOFTCAP,
        )  # fmt: skip
    acc = acc / l_i[:, None]
    tl.store(
        out_ptr + tok[:, None] * stride_ot + h * stride_oh + d[None, :] * stride_od,
        acc.to(out_ptr.dtype.element_ty),
        mask=qmask[:, None] & dmask[None, :],
    )


@triton.jit(do_not_specialize=["part_len", "max_parts", "stride_pt"])
def _paged_attn_decode_kernel(
    q_ptr,
    pool_ptr,
    pt_ptr,
    seq_lens_ptr,
    q_indptr_ptr,
    out_ptr,
    part_o_ptr,
    part_ml_ptr,
    sm_scale_log2,
    window,
    softcap,
    part_len,
    max_parts,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_ot,
    stride_oh,
    stride_od,
    stride_pt,
    PAGE_SIZE: tl.constexpr,
    HKV: tl.constexpr,
    GROUP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WINDOWED: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """Program (sequence, KV head, partition of keys): the GROUP query heads sharing the KV head read each
    K/V row once (tl.dot with the heads as M). With SPLIT, partial results go to part_o / part_ml and
    _paged_attn_reduce_kernel merges them (flash-decoding). WINDOWED: only the last `window` keys; a
    partition before them writes an empty state (row sum 0), which the merge weighs 0."""
    s = tl.program_id(0)
    kvh = tl.program_id(1)
    part = tl.program_id(2)
    q0 = tl.load(q_indptr_ptr + s)
    if tl.load(q_indptr_ptr + s + 1) <= q0:
        return
    L = tl.load(seq_lens_ptr + s)
    start = part * part_len
    if start >= L:
        return
    end = tl.minimum(L, start + part_len)
    if WINDOWED:
        start = tl.maximum(start, L - window)
    hi = tl.arange(0, BLOCK_H)
    hmask = hi < GROUP
    h = kvh * GROUP + hi
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    tq = q0.to(tl.int64)
    q = tl.load(
        q_ptr + tq * stride_qt + h[:, None] * stride_qh + d[None, :] * stride_qd,
        mask=hmask[:, None] & dmask[None, :],
        other=0.0,
    )
    pt_row = pt_ptr + s.to(tl.int64) * stride_pt
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc, m_i, l_i = _attend(
        q, acc, m_i, l_i, pool_ptr, pt_row, start, end, hi, kvh, d, dmask, sm_scale_log2, window, softcap,
        True, False, PAGE_SIZE, HKV, D, BLOCK_N, INPUT_PRECISION, False, SOFTCAP,
    )  # fmt: skip
    if WINDOWED:
        l_i = tl.maximum(l_i, 1e-30)  # an empty partition: acc 0, weight 0 in the merge
    acc = acc / l_i[:, None]
    if SPLIT:
        # part_o: [S, Hq, max_parts, D] fp32; part_ml: [S, Hq, max_parts, 2] fp32 (max, sum; log2 domain)
        row = (s.to(tl.int64) * (HKV * GROUP) + h) * max_parts + part
        tl.store(part_o_ptr + row[:, None] * D + d[None, :], acc, mask=hmask[:, None] & dmask[None, :])
        tl.store(part_ml_ptr + row * 2, m_i, mask=hmask)
        tl.store(part_ml_ptr + row * 2 + 1, l_i, mask=hmask)
    else:
        tl.store(
            out_ptr + tq * stride_ot + h[:, None] * stride_oh + d[None, :] * stride_od,
            acc.to(out_ptr.dtype.element_ty),
            mask=hmask[:, None] & dmask[None, :],
        )


@triton.jit(do_not_specialize=["part_len", "max_parts"])
def _paged_attn_reduce_kernel(
    part_o_ptr,
    part_ml_ptr,
    seq_lens_ptr,
    q_indptr_ptr,
    out_ptr,
    part_len,
    max_parts,
    HQ,
    stride_ot,
    stride_oh,
    stride_od,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (sequence, query head): merges the partitions written by the split decode kernel."""
    s = tl.program_id(0)
    h = tl.program_id(1)
    q0 = tl.load(q_indptr_ptr + s)
    if tl.load(q_indptr_ptr + s + 1) <= q0:
        return
    n_parts = tl.cdiv(tl.load(seq_lens_ptr + s), part_len)
    base = (s.to(tl.int64) * HQ + h) * max_parts
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    m = tl.load(part_ml_ptr + base * 2)
    for p in range(1, n_parts):
        m = tl.maximum(m, tl.load(part_ml_ptr + (base + p) * 2))
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    den = tl.zeros([BLOCK_D], dtype=tl.float32)
    for p in range(0, n_parts):
        w = tl.load(part_ml_ptr + (base + p) * 2 + 1) * tl.exp2(tl.load(part_ml_ptr + (base + p) * 2) - m)
        acc += w * tl.load(part_o_ptr + (base + p) * D + d, mask=dmask, other=0.0)
        den += w
    tl.store(
        out_ptr + q0.to(tl.int64) * stride_ot + h * stride_oh + d * stride_od,
        (acc / den).to(out_ptr.dtype.element_ty),
        mask=dmask,
    )


@triton.jit
def _kv_append_kernel(
    pool_ptr,
    k_ptr,
    v_ptr,
    slot_ptr,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vt,
    stride_vh,
    stride_vd,
    PAGE_SIZE: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (token, block of its HKV * D elements): copies k[t] and v[t] into their page row."""
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < HKV * D
    hh = idx // D
    dd = idx % D
    t64 = t.to(tl.int64)
    kv = tl.load(k_ptr + t64 * stride_kt + hh * stride_kh + dd * stride_kd, mask=mask)
    vv = tl.load(v_ptr + t64 * stride_vt + hh * stride_vh + dd * stride_vd, mask=mask)
    dst = pool_ptr + (slot // PAGE_SIZE) * (2 * PAGE_SIZE * HKV * D) + (slot % PAGE_SIZE) * (HKV * D) + idx
    tl.store(dst, kv.to(pool_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + PAGE_SIZE * HKV * D, vv.to(pool_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------
# Launch wrappers (same signatures as the references; no host synchronisation)
# ----------------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INT_DTYPES = (torch.int32, torch.int64)
_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _check_pool(name: str, pool: torch.Tensor, page_size: int, num_kv_heads: int) -> int:
    if pool.dim() != 2 or pool.stride(1) != 1 or pool.stride(0) != pool.shape[1]:
        raise ValueError(f"{name}: pool must be a contiguous [num_pages, page_elems] tensor")
    if pool.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name}: pool dtype {pool.dtype} is not float16/bfloat16/float32")
    if page_size <= 0 or num_kv_heads <= 0:
        raise ValueError(f"{name}: page_size and num_kv_heads must be positive")
    return kv_view(pool, page_size, num_kv_heads).shape[-1]


def kv_append(pool: torch.Tensor, page_size: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Triton `kv_append_ref`."""
    if k.shape != v.shape or k.dim() != 3 or slot_mapping.dim() != 1 or slot_mapping.shape[0] != k.shape[0]:
        raise ValueError("k, v must be [T, Hkv, D] and slot_mapping [T]")
    T, Hkv, D = k.shape
    if _check_pool("kv_append", pool, page_size, Hkv) != D:
        raise ValueError(f"kv_append: head_dim {D} does not match the pool's page layout")
    if slot_mapping.dtype not in _INT_DTYPES:
        raise ValueError(f"kv_append: slot_mapping must be int32 or int64, got {slot_mapping.dtype}")
    for what, t in (("k", k), ("v", v), ("slot_mapping", slot_mapping)):
        if t.device != pool.device:
            raise ValueError(f"kv_append: {what} is on {t.device}, pool on {pool.device}")
    if T == 0:
        return
    block = min(triton.next_power_of_2(Hkv * D), 4096 if _INTERPRET else 1024)
    grid = (T, triton.cdiv(Hkv * D, block))
    _kv_append_kernel[grid](
        pool,
        k,
        v,
        slot_mapping.contiguous(),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        PAGE_SIZE=page_size,
        HKV=Hkv,
        D=D,
        BLOCK=block,
        num_warps=4,
    )


@dataclass(frozen=True)
class PrefillLaunch:
    """Launch configuration of the prefill kernel: query rows and keys per block, warps, pipeline stages.
    None: chosen from the step's longest query run (16 rows for short runs, else 64)."""

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2  # 2 beat 3 (Triton's default) on an H200: benchmarks/results/issue13/attn1


def paged_attention(
    q: torch.Tensor,
    pool: torch.Tensor,
    page_size: int,
    num_kv_heads: int,
    kv_page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    q_indptr: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    max_q_len: int | None = None,
    num_decode: int = 0,
    prefill_launch: PrefillLaunch | None = None,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Triton `paged_attention_ref`. max_q_len (host int; None: the token count): 1 runs the decode kernel
    (split-K when few programs would run) on every sequence, more the causal prefill kernel, which also
    serves cached context and one-token rows. num_decode: the leading sequences that have one query token
    each (a mixed step's decode rows, ordered first); they go to the decode kernel, which reads each K/V
    row once per KV head, and only the rest to the prefill kernel. window / softcap: as the reference."""
    _check_window_softcap(window, softcap)
    if q.dim() != 3 or out.shape != q.shape:
        raise ValueError("q and out must be [T, Hq, D]")
    T, Hq, D = q.shape
    if Hq % num_kv_heads:
        raise ValueError(f"{Hq} query heads are not a multiple of {num_kv_heads} KV heads")
    if _check_pool("paged_attention", pool, page_size, num_kv_heads) != D:
        raise ValueError(f"paged_attention: head_dim {D} does not match the pool's page layout")
    if q.dtype not in _FLOAT_DTYPES or out.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"paged_attention: q/out dtypes {q.dtype}/{out.dtype} are not float types")
    for what, t in (("kv_page_table", kv_page_table), ("seq_lens", seq_lens), ("q_indptr", q_indptr)):
        if t.dtype not in _INT_DTYPES:
            raise ValueError(f"paged_attention: {what} must be int32 or int64, got {t.dtype}")
    S = seq_lens.shape[0]
    if kv_page_table.dim() != 2 or kv_page_table.shape[0] != S or seq_lens.dim() != 1:
        raise ValueError(f"paged_attention: kv_page_table must be [S={S}, max_pages] and seq_lens [S]")
    if q_indptr.dim() != 1 or q_indptr.shape[0] != S + 1:
        raise ValueError(f"paged_attention: q_indptr must be [S+1={S + 1}], got {tuple(q_indptr.shape)}")
    if not 0 <= num_decode <= S:
        raise ValueError(f"paged_attention: num_decode {num_decode} is not within [0, {S}]")
    for what, t in (
        ("q", q),
        ("out", out),
        ("kv_page_table", kv_page_table),
        ("seq_lens", seq_lens),
        ("q_indptr", q_indptr),
    ):
        if t.device != pool.device:
            raise ValueError(f"paged_attention: {what} is on {t.device}, pool on {pool.device}")
    if T == 0 or S == 0:
        return out
    table, seq_lens, q_indptr = kv_page_table.contiguous(), seq_lens.contiguous(), q_indptr.contiguous()
    group = Hq // num_kv_heads
    ip = "ieee" if pool.dtype == torch.float32 else "tf32"
    sm_scale_log2 = float(scale) * _LOG2E
    strides = (q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2), table.stride(0))
    consts = dict(
        PAGE_SIZE=page_size, HKV=num_kv_heads, GROUP=group, D=D, BLOCK_D=triton.next_power_of_2(D), INPUT_PRECISION=ip,
        WINDOWED=window > 0, SOFTCAP=softcap > 0,
    )  # fmt: skip
    args = (q, pool, (sm_scale_log2, int(window), float(softcap)), out, strides, consts)
    max_len = T if max_q_len is None else min(int(max_q_len), T)
    # whole tensors and a range of sequences, never slices: a sliced pointer loses its 16-byte alignment
    # and would make Triton compile (mid-serving) another variant of the kernel
    if max_len <= 1:
        _decode(*args, table, seq_lens, q_indptr, S)
        return out
    if num_decode:
        _decode(*args, table, seq_lens, q_indptr, num_decode)
    if num_decode < S:
        _prefill(*args, table, seq_lens, q_indptr, num_decode, S, max_len, prefill_launch)
    return out


def _decode(q, pool, scores, out, strides, consts, table, seq_lens, q_indptr, S: int) -> None:
    """The decode kernel on sequences [0, S) (one query token each)."""
    Hkv, D, dev = consts["HKV"], consts["D"], pool.device
    block_n = 64 if not _INTERPRET else 256
    part_len = max(DECODE_PARTITION // block_n, 1) * block_n
    max_ctx = table.shape[1] * consts["PAGE_SIZE"]
    max_parts = triton.cdiv(max_ctx, part_len)
    split = max_parts > 1 and S * Hkv < 2 * _sm_count(dev) if not _INTERPRET else max_parts > 1
    if split:
        part_o = torch.empty(S, q.shape[1], max_parts, D, device=dev, dtype=torch.float32)
        part_ml = torch.empty(S, q.shape[1], max_parts, 2, device=dev, dtype=torch.float32)
    else:
        part_len, max_parts = max(max_ctx, 1), 1
        part_o = part_ml = out
    _paged_attn_decode_kernel[(S, Hkv, max_parts)](
        q,
        pool,
        table,
        seq_lens,
        q_indptr,
        out,
        part_o,
        part_ml,
        *scores,
        part_len,
        max_parts,
        *strides,
        BLOCK_H=max(16, triton.next_power_of_2(consts["GROUP"])),
        BLOCK_N=block_n,
        SPLIT=split,
        num_warps=4,
        **consts,
    )
    if split:
        _paged_attn_reduce_kernel[(S, q.shape[1])](
            part_o,
            part_ml,
            seq_lens,
            q_indptr,
            out,
            part_len,
            max_parts,
            q.shape[1],
            out.stride(0),
            out.stride(1),
            out.stride(2),
            D=D,
            BLOCK_D=consts["BLOCK_D"],
            num_warps=1,
        )


def _prefill(q, pool, scores, out, strides, consts, table, seq_lens, q_indptr, lo, hi, max_len, launch):
    """The prefill kernel on sequences [lo, hi)."""
    if launch is None and _INTERPRET:  # fewer, larger blocks: the interpreter's cost is per block operation
        launch = PrefillLaunch(block_m=16 if max_len <= 16 else 32, block_n=128)
    elif launch is None:
        launch = PrefillLaunch(block_m=16 if max_len <= 16 else 64, block_n=64)
    grid = (hi - lo, triton.cdiv(max_len, launch.block_m), q.shape[1])
    _paged_attn_prefill_kernel[grid](
        q,
        pool,
        table,
        seq_lens,
        q_indptr,
        out,
        *scores,
        lo,
        *strides,
        BLOCK_M=launch.block_m,
        BLOCK_N=launch.block_n,
        num_warps=launch.num_warps,
        num_stages=launch.num_stages,
        **consts,
    )


def _check_window_softcap(window: int, softcap: float) -> None:
    if int(window) != window or window < 0:
        raise ValueError(f"window must be an integer >= 0 (0: none), got {window!r}")
    if not softcap >= 0:
        raise ValueError(f"softcap must be >= 0 (0: none), got {softcap!r}")


def kv_view(pool: torch.Tensor, page_size: int, num_kv_heads: int) -> torch.Tensor:
    """[num_pages, page_elems] -> [num_pages, 2, page_size, Hkv, D] (a view, no copy)."""
    num_pages, page_elems = pool.shape
    head_dim = page_elems // (2 * page_size * num_kv_heads)
    if head_dim * 2 * page_size * num_kv_heads != page_elems:
        raise ValueError("page_elems is not 2 * page_size * num_kv_heads * head_dim")
    return pool.view(num_pages, 2, page_size, num_kv_heads, head_dim)


def kv_append_ref(
    pool: torch.Tensor, page_size: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k, v: [T, Hkv, D]; slot_mapping: [T] int (page * page_size + row; -1 = skip)."""
    if k.shape != v.shape or k.dim() != 3 or slot_mapping.shape[0] != k.shape[0]:
        raise ValueError("k, v must be [T, Hkv, D] and slot_mapping [T]")
    kv = kv_view(pool, page_size, k.shape[1])
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    pages, rows = slots // page_size, slots % page_size
    kv[pages, 0, rows] = k[keep].to(pool.dtype)
    kv[pages, 1, rows] = v[keep].to(pool.dtype)


def paged_attention_ref(
    q: torch.Tensor,
    pool: torch.Tensor,
    page_size: int,
    num_kv_heads: int,
    kv_page_table: torch.Tensor,
    seq_lens: torch.Tensor,
    q_indptr: torch.Tensor,
    scale: float,
    out: torch.Tensor,
    max_q_len: int | None = None,
    num_decode: int = 0,
    prefill_launch: PrefillLaunch | None = None,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:
    """q, out: [T, Hq, D]; kv_page_table: [S, max_pages]; seq_lens: [S]; q_indptr: [S+1]. max_q_len,
    num_decode and prefill_launch pick the Triton kernels; the result does not depend on them. window > 0:
    a query at position p sees the keys at positions > p - window only (sliding window, as transformers
    masks it); softcap > 0: scores s become softcap * tanh(s / softcap) before the softmax (Gemma 2)."""
    _check_window_softcap(window, softcap)
    if q.dim() != 3 or out.shape != q.shape:
        raise ValueError("q and out must be [T, Hq, D]")
    T, Hq, D = q.shape
    if Hq % num_kv_heads:
        raise ValueError(f"{Hq} query heads are not a multiple of {num_kv_heads} KV heads")
    kv = kv_view(pool, page_size, num_kv_heads)
    group = Hq // num_kv_heads
    lens = seq_lens.tolist()
    ptr = q_indptr.tolist()
    for s, L in enumerate(lens):
        lo, hi = ptr[s], ptr[s + 1]
        n_q = hi - lo
        if n_q == 0:
            continue
        n_pages = (L + page_size - 1) // page_size
        pages = kv_page_table[s, :n_pages].long()
        k = kv[pages, 0].reshape(-1, num_kv_heads, D)[:L].float()  # [L, Hkv, D]
        vv = kv[pages, 1].reshape(-1, num_kv_heads, D)[:L].float()
        k = k.repeat_interleave(group, dim=1)  # [L, Hq, D]
        vv = vv.repeat_interleave(group, dim=1)
        qs = q[lo:hi].float()  # [n_q, Hq, D]
        scores = torch.einsum("qhd,khd->hqk", qs, k) * scale
        if softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        pos = torch.arange(L - n_q, L, device=q.device)[:, None]
        mask = torch.arange(L, device=q.device)[None, :] > pos  # [n_q, L]
        if window > 0:
            mask |= torch.arange(L, device=q.device)[None, :] <= pos - window
        scores.masked_fill_(mask[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[lo:hi] = torch.einsum("hqk,khd->qhd", probs, vv).to(out.dtype)
    return out
