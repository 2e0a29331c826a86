"""Triton kernels (run by Triton's interpreter on the CPU) against their torch references.

Every test builds fresh random inputs: adapters of mixed ranks laid across pages of the pool in random,
non-contiguous order (rows straddle page boundaries), batches where each segment uses an adapter drawn
with a given popularity (distinct / uniform / zipf / identical), outputs pre-filled with NaN so that an
element the kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels.lora as kl
from kernels import get_backend
from kernels.attention import PrefillLaunch, kv_append, kv_append_ref, paged_attention, paged_attention_ref
from kernels.lora import lora_expand, lora_shrink
from kernels.lora_plan import PLAN_ROWS, lora_plan, lora_plan_ref, max_tiles
from kernels.lora_ref import lora_expand_ref, lora_shrink_ref

ROOT = Path(__file__).resolve().parents[1]
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=2e-2)}


# ------------------------------------------------------------------------------------------------
# LoRA inputs
# ------------------------------------------------------------------------------------------------


def make_adapters(
    ranks: torch.Tensor,
    K: int,
    n_out: list[int],
    page_elems: int,
    dtype: torch.dtype,
    gen: torch.Generator,
    spare_pages: int = 3,
    align: int = 1,
):
    """Lays every slot's A_g [r, K] and B_g^T [r, N_g] into a virtual buffer (with random gaps) across
    pages taken in random order from a shared pool. Returns pool, page_table, a_offsets, b_offsets.
    align: every A / B^T block starts at a multiple of `align` virtual elements (the packer uses 64)."""
    S, G = ranks.shape
    layouts, n_pages = [], []
    for s in range(S):
        cur, a_off, b_off = 0, [], []
        for g in range(G):
            r = int(ranks[s, g])
            cur += int(torch.randint(0, 5, (1,), generator=gen)) * align
            cur = -(-cur // align) * align
            a_off.append(cur)
            cur += r * K + int(torch.randint(0, 3, (1,), generator=gen)) * align
            cur = -(-cur // align) * align
            b_off.append(cur)
            cur += r * n_out[g]
        layouts.append((a_off, b_off))
        n_pages.append(max(1, math.ceil(cur / page_elems)))
    total = sum(n_pages) + spare_pages
    perm = torch.randperm(total, generator=gen)
    pool = (torch.randn(total, page_elems, generator=gen) / math.sqrt(K)).to(dtype)
    page_table = torch.zeros(S, max(n_pages), dtype=torch.int32)
    used = 0
    for s in range(S):
        page_table[s, : n_pages[s]] = perm[used : used + n_pages[s]].to(torch.int32)
        used += n_pages[s]
    a_offsets = torch.tensor([l[0] for l in layouts], dtype=torch.int32).view(S, G)
    b_offsets = torch.tensor([l[1] for l in layouts], dtype=torch.int32).view(S, G)
    return pool, page_table, a_offsets, b_offsets


def pick_slots(n_seg: int, n_slots: int, popularity: str, gen: torch.Generator) -> torch.Tensor:
    if popularity == "distinct":
        return torch.randperm(n_slots, generator=gen)[:n_seg] if n_seg <= n_slots else torch.arange(n_seg) % n_slots
    if popularity == "uniform":
        return torch.randint(0, n_slots, (n_seg,), generator=gen)
    if popularity == "zipf":
        w = 1.0 / torch.arange(1, n_slots + 1, dtype=torch.float64) ** 1.5
        return torch.multinomial(w, n_seg, replacement=True, generator=gen)
    if popularity == "identical":
        return torch.zeros(n_seg, dtype=torch.long)
    raise ValueError(popularity)


def make_batch(seg_lens: list[int], n_slots: int, popularity: str, gen: torch.Generator, no_lora: float = 0.15):
    slots = pick_slots(len(seg_lens), n_slots, popularity, gen)
    drop = torch.rand(len(seg_lens), generator=gen) < no_lora
    slots = torch.where(drop, torch.full_like(slots, -1), slots).to(torch.int32)
    indptr = torch.zeros(len(seg_lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(torch.tensor(seg_lens, dtype=torch.int32), 0)
    return indptr, slots


def random_ranks(n_slots: int, G: int, max_rank: int, gen: torch.Generator, absent: float = 0.1):
    ranks = torch.randint(1, max_rank + 1, (n_slots, G), generator=gen, dtype=torch.int32)
    ranks[torch.rand(n_slots, G, generator=gen) < absent] = 0
    return ranks


def run_lora_case(
    *,
    seg_lens,
    n_slots,
    popularity,
    max_rank,
    K,
    n_out,
    page_elems,
    dtype,
    seed,
    col_mult=0,
    R=None,
    y_extra_cols=0,
    max_seg_len="auto",
    aligned=False,
    plan=True,
    v_dtype=None,
    config=None,
    plan_slots=None,
):
    """aligned: 64-aligned offsets (as the packer lays them) and the kernels' vectorised loads; plan: pass the
    step's plan (else the wrappers build it); v_dtype: dtype of the shrink output / expand input (float32
    lets the decode regime split K); config: a LoRAKernelConfig (default: the module's); plan_slots: the
    adapter slots the plan is built for (>= n_slots: a CUDA graph's bound; default n_slots)."""
    gen = torch.Generator().manual_seed(seed)
    G = len(n_out)
    ranks = random_ranks(n_slots, G, max_rank, gen)
    pool, page_table, a_off, b_off = make_adapters(ranks, K, n_out, page_elems, dtype, gen, align=64 if aligned else 1)
    indptr, slots = make_batch(seg_lens, n_slots, popularity, gen)
    T = int(indptr[-1])
    x = torch.randn(T, K, generator=gen).to(dtype)
    R = R or max(1, (col_mult + 1) * int(ranks.max()))
    msl = max(seg_lens, default=0) if max_seg_len == "auto" else max_seg_len
    args = (pool, page_table, a_off, ranks, indptr, slots)
    config = config or kl.DEFAULT_CONFIG
    step_plan = kl.plan_for_step(indptr, slots, plan_slots or n_slots, T, msl, config) if plan and T else None
    fast = dict(aligned=aligned, plan=step_plan, config=config)

    v_dtype = v_dtype or dtype
    out = torch.full((T, G, R), float("nan"), dtype=v_dtype)
    want = torch.full((T, G, R), float("nan"), dtype=v_dtype)
    lora_shrink(x, *args, out, col_mult=col_mult, max_seg_len=msl, **fast)
    lora_shrink_ref(x, *args, want, col_mult=col_mult, max_seg_len=msl)
    lora_rows = lora_tokens(indptr, slots, T)
    assert not out[lora_rows].isnan().any(), "shrink left elements of LoRA tokens unwritten"
    torch.testing.assert_close(out[lora_rows], want[lora_rows], **TOL[dtype])

    # expand into a column slice of a wider buffer: row stride != width
    out_offsets = [0]
    for n in n_out:
        out_offsets.append(out_offsets[-1] + n)
    wide = torch.randn(T, out_offsets[-1] + y_extra_cols + 3, generator=gen).to(dtype)
    scales = torch.rand(n_slots, generator=gen) + 0.5
    v = torch.randn(T, G, R, generator=gen).to(v_dtype)
    v[~lora_rows] = float("nan")  # rows of tokens without a LoRA are never read
    y = wide.clone()[:, 2 : 2 + out_offsets[-1] + y_extra_cols]
    want_y = wide.clone()[:, 2 : 2 + out_offsets[-1] + y_extra_cols]
    before = y.clone()
    lora_expand(y, v, pool, page_table, b_off, ranks, scales, indptr, slots, out_offsets, max_seg_len=msl, **fast)
    lora_expand_ref(want_y, v, pool, page_table, b_off, ranks, scales, indptr, slots, out_offsets, max_seg_len=msl)
    torch.testing.assert_close(y, want_y, **TOL[dtype])
    # rows without LoRA and columns past out_offsets[-1] are bit-for-bit untouched
    assert torch.equal(y[~lora_rows], before[~lora_rows])
    assert torch.equal(y[:, out_offsets[-1] :], before[:, out_offsets[-1] :])


def lora_tokens(indptr: torch.Tensor, slots: torch.Tensor, T: int) -> torch.Tensor:
    rows = torch.zeros(T, dtype=torch.bool)
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            rows[int(indptr[i]) : int(indptr[i + 1])] = True
    return rows


# ------------------------------------------------------------------------------------------------
# LoRA tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("popularity", ["distinct", "uniform", "zipf", "identical"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lora_decode_popularity(popularity, dtype):
    run_lora_case(
        seg_lens=[1] * 24,
        n_slots=12,
        popularity=popularity,
        max_rank=64,
        K=64,
        n_out=[64, 32, 32],
        page_elems=200,
        dtype=dtype,
        seed=3 * len(popularity) + (dtype == torch.float16),
    )


@pytest.mark.parametrize("popularity", ["distinct", "uniform", "zipf", "identical"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lora_prefill_popularity(popularity, dtype):
    run_lora_case(
        seg_lens=[5, 17, 1, 40, 3, 33],
        n_slots=5,
        popularity=popularity,
        max_rank=48,
        K=48,
        n_out=[96, 32],
        page_elems=160,
        dtype=dtype,
        seed=7 + len(popularity),
    )


@pytest.mark.parametrize(
    "popularity,dtype,aligned",
    [
        ("distinct", torch.float16, True),
        ("uniform", torch.float32, True),
        ("zipf", torch.float16, False),
        ("identical", torch.float32, True),
        ("uniform", torch.float16, False),
    ],
)
def test_lora_mixed_steps(popularity, dtype, aligned):
    """A loaded server's step: prefill chunks of several tiles (with the mixed regime's 16-token tiles here:
    a 70-token segment gives 5) between decode tokens of several adapters, one plan for all of it; rows of A
    and B^T straddle pages (page_elems 192 is not a multiple of K or N_g)."""
    gen = torch.Generator().manual_seed(len(popularity))
    lens = [1] * 20 + [70, 33, 16, 17] + [1] * 12
    lens = [lens[i] for i in torch.randperm(len(lens), generator=gen).tolist()]
    mixed = kl.LoRATileConfig(tile_m=16, shrink_r=32, shrink_k=64, shrink_split=1, expand_r=16, expand_n=64)
    run_lora_case(
        seg_lens=lens,
        n_slots=9,
        popularity=popularity,
        max_rank=40,
        K=128,
        n_out=[128, 64, 64],
        page_elems=192,
        dtype=dtype,
        seed=13 + len(popularity),
        aligned=aligned,
        v_dtype=torch.float32,
        config=kl.LoRAKernelConfig(mixed=mixed),
    )


def test_lora_default_mixed_tiles_and_rank_256():
    """The default mixed regime (64-token tiles) with ranks up to 256 (several rank blocks in shrink and
    several expand passes), long and short segments, as the engine runs it (float32 v, aligned)."""
    run_lora_case(
        seg_lens=[1, 130, 1, 1, 64, 5, 1],
        n_slots=4,
        popularity="uniform",
        max_rank=256,
        K=64,
        n_out=[64, 128],
        page_elems=1024,
        dtype=torch.float16,
        seed=2,
        aligned=True,
        v_dtype=torch.float32,
    )


@pytest.mark.parametrize("batch", [1, 3, 64, 256])
def test_lora_decode_batch_sizes(batch):
    run_lora_case(
        seg_lens=[1] * batch,
        n_slots=min(batch, 32),
        popularity="uniform",
        max_rank=32,
        K=32,
        n_out=[32],
        page_elems=128,
        dtype=torch.float32,
        seed=batch,
    )


@pytest.mark.parametrize("plan_slots", [3, 16, 64])
def test_lora_decode_plan_slot_bounds(plan_slots):
    """A decode step of 64 tokens over 3 adapters with plans built for 3, 16 and 64 adapter slots (bounds a
    decode CUDA graph may build its plan for, app/cuda_graphs.py): grids of 6, 19 and 64 tiles' programs, the
    same outputs, those of the torch reference (float32 v: the shrink splits K further on the smaller grids)."""
    assert max_tiles(64, plan_slots, kl.DEFAULT_CONFIG.decode.tile_m) == {3: 6, 16: 19, 64: 64}[plan_slots]
    run_lora_case(
        seg_lens=[1] * 64,
        n_slots=3,
        popularity="uniform",
        max_rank=64,
        K=2048,
        n_out=[128, 64, 64],
        page_elems=256,
        dtype=torch.float32,
        seed=plan_slots,
        aligned=True,
        v_dtype=torch.float32,
        plan_slots=plan_slots,
    )


@pytest.mark.parametrize(
    "popularity,dtype",
    [("distinct", torch.float16), ("uniform", torch.float32), ("zipf", torch.float16), ("identical", torch.float32)],
)
def test_lora_decode_aligned(popularity, dtype):
    """Aligned (vectorised page reads): 64-aligned offsets, K / N_g / page_elems multiples of 64, rows
    straddling pages, more than one tile per adapter; the wrappers build the plan when none is passed."""
    run_lora_case(
        seg_lens=[1] * 34,
        n_slots=10,
        popularity=popularity,
        max_rank=40,
        K=128,
        n_out=[128, 64, 64],
        page_elems=192,
        dtype=dtype,
        seed=5 * len(popularity) + (dtype == torch.float16),
        aligned=True,
        plan=popularity in ("uniform", "identical"),
    )


@pytest.mark.parametrize("case", ["col_mult", "wide_v", "page64", "empty_segments", "rank256"])
def test_lora_decode_aligned_edges(case):
    kw = dict(
        seg_lens=[1] * 9,
        n_slots=5,
        popularity="uniform",
        max_rank=24,
        K=64,
        n_out=[64, 128],
        page_elems=128,
        dtype=torch.float32,
        seed=len(case),
        aligned=True,
    )
    if case == "col_mult":
        kw.update(col_mult=2)
    elif case == "wide_v":
        kw.update(R=80, y_extra_cols=5)
    elif case == "page64":
        kw.update(page_elems=64, K=192, max_rank=9)
    elif case == "empty_segments":
        kw.update(seg_lens=[0, 1, 1, 0, 1, 1, 1, 0], max_seg_len=1)
    elif case == "rank256":
        kw.update(seg_lens=[1] * 3, n_slots=3, max_rank=256, n_out=[64], page_elems=1024)
    run_lora_case(**kw)


@pytest.mark.parametrize(
    "popularity,dtype,col_mult",
    [
        ("distinct", torch.float16, 0),
        ("zipf", torch.float32, 0),
        ("identical", torch.float16, 0),
        ("uniform", torch.float16, 1),
    ],
)
def test_lora_decode_aligned_split_k(popularity, dtype, col_mult):
    """A float32 shrink output lets the decode shrink split K over programs that add their partial sums
    atomically (K = 4 blocks here); expand then reads the float32 v. col_mult: the column-parallel TP
    layout (rank 1 of 2 writes columns [r, 2r))."""
    run_lora_case(
        seg_lens=[1] * 20,
        n_slots=6,
        popularity=popularity,
        max_rank=40,
        K=512,
        n_out=[128, 64],
        page_elems=320,
        dtype=dtype,
        seed=11 + len(popularity),
        aligned=True,
        v_dtype=torch.float32,
        col_mult=col_mult,
    )


@pytest.mark.parametrize("programs", [96, 10**6])
def test_lora_decode_split_k_by_grid_size(programs):
    """`shrink_programs`: a small decode grid splits K into more ranges than `shrink_split` (here 6 tiles x 2
    targets x 2 rank blocks = 24 programs before the split, K = 9 blocks of 64): 96 programs give 4 ranges of
    3 blocks (the last range empty), 10**6 one block each (9 ranges). Equal to the reference either way."""
    decode = dataclasses.replace(kl.DEFAULT_CONFIG.decode, shrink_k=64, shrink_split=2, shrink_programs=programs)
    run_lora_case(
        seg_lens=[1] * 20,
        n_slots=6,
        popularity="zipf",
        max_rank=40,
        K=576,
        n_out=[128, 64],
        page_elems=320,
        dtype=torch.float32,
        seed=5,
        aligned=True,
        v_dtype=torch.float32,
        config=dataclasses.replace(kl.DEFAULT_CONFIG, decode=decode),
    )


def test_lora_unaligned_shapes():
    """aligned=True with K or N_g not a multiple of 64 (or an odd page size) runs without vector hints."""
    run_lora_case(
        seg_lens=[1] * 6,
        n_slots=3,
        popularity="uniform",
        max_rank=16,
        K=40,
        n_out=[40, 24],
        page_elems=100,
        dtype=torch.float32,
        seed=9,
        aligned=True,
    )


@pytest.mark.parametrize("tile_m", [16, 64])
def test_lora_plan_equals_reference(tile_m):
    gen = torch.Generator().manual_seed(tile_m)
    for n_seg, S, max_len in ((1, 1, 1), (7, 3, 1), (200, 9, 1), (40, 5, 300), (300, 2, 3), (12, 4, 0)):
        lens = torch.randint(0, max_len + 1, (n_seg,), generator=gen)
        indptr = torch.zeros(n_seg + 1, dtype=torch.int32)
        indptr[1:] = lens.cumsum(0)
        slots = torch.randint(-1, S, (n_seg,), generator=gen, dtype=torch.int32)
        T = int(indptr[-1]) + 3  # three tokens past the segments: uncovered positions are unspecified
        plan = lora_plan(indptr, slots, S, T, tile_m)
        want = lora_plan_ref(indptr, slots, S, T, tile_m)
        covered = int(indptr[-1])
        assert plan.data.shape == (PLAN_ROWS, T)
        assert torch.equal(plan.data[:4, :covered], want[:4, :covered])
        n_tiles = int((want[4] >= 0).sum())
        assert n_tiles <= plan.max_tiles == max_tiles(T, S, tile_m)
        assert torch.equal(plan.data[4:7, :n_tiles], want[4:7, :n_tiles])
        assert (plan.data[4:6, n_tiles : plan.max_tiles] == -1).all()
        # every LoRA token is in exactly one tile of its slot, of at most tile_m tokens
        seen = []
        for i in range(n_tiles):
            lo, end = int(plan.data[4, i]), min(int(plan.data[4, i]) + tile_m, int(plan.data[6, i]))
            assert (plan.data[1, lo:end] == plan.data[5, i]).all()
            seen += plan.data[0, lo:end].tolist()
        assert sorted(seen) == lora_tokens(indptr, slots, T).nonzero().flatten().tolist()


def test_lora_regimes_and_configs():
    c = kl.DEFAULT_CONFIG
    assert c.for_step(1) is c.decode and c.for_step(2) is c.mixed and c.for_step(None) is c.mixed
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.decode.tile_m = 32  # the configuration is a value: never mutated behind the engine
    from app.config import LoRAKernelOverrides

    assert LoRAKernelOverrides(mixed={"tile_m": 32}).config().mixed.tile_m == 32
    with pytest.raises(ValueError, match="lora.kernels"):
        LoRAKernelOverrides(decode={"nope": 1}).config()


@pytest.mark.parametrize("max_rank", [1, 8, 16, 128])
def test_lora_ranks(max_rank):
    """Ranks 1..max_rank mixed in one batch, decode and prefill."""
    run_lora_case(
        seg_lens=[1] * 9,
        n_slots=9,
        popularity="distinct",
        max_rank=max_rank,
        K=32,
        n_out=[48, 16, 16],
        page_elems=96,
        dtype=torch.float16,
        seed=max_rank,
    )
    run_lora_case(
        seg_lens=[20, 2, 9],
        n_slots=3,
        popularity="distinct",
        max_rank=max_rank,
        K=32,
        n_out=[48],
        page_elems=96,
        dtype=torch.float32,
        seed=max_rank + 1,
    )


@pytest.mark.parametrize("page_elems", [7, 64, 1000, 4096])
def test_lora_page_sizes(page_elems):
    """Tiny pages (rows straddle many pages: one page-table read per element) to pages larger than an
    adapter."""
    run_lora_case(
        seg_lens=[1] * 6,
        n_slots=4,
        popularity="uniform",
        max_rank=24,
        K=40,
        n_out=[40, 24],
        page_elems=page_elems,
        dtype=torch.float32,
        seed=page_elems,
    )
    run_lora_case(
        seg_lens=[7, 19],
        n_slots=2,
        popularity="distinct",
        max_rank=24,
        K=40,
        n_out=[40, 24],
        page_elems=page_elems,
        dtype=torch.float32,
        seed=page_elems + 1,
    )


def test_lora_rank_256_and_wide_v():
    """Rank up to 256; v and out wider than the largest rank (extra columns must be ignored/zeroed)."""
    run_lora_case(
        seg_lens=[1, 1, 1],
        n_slots=3,
        popularity="distinct",
        max_rank=256,
        K=32,
        n_out=[32],
        page_elems=512,
        dtype=torch.float32,
        seed=3,
        R=300,
    )
    run_lora_case(
        seg_lens=[18, 3],
        n_slots=2,
        popularity="distinct",
        max_rank=256,
        K=32,
        n_out=[32],
        page_elems=512,
        dtype=torch.float16,
        seed=4,
        R=300,
    )


@pytest.mark.parametrize("col_mult", [1, 2])
def test_lora_col_mult(col_mult):
    """S-LoRA TP column offset: rank c writes its rows of x @ A^T at columns [c*r, c*r + r)."""
    run_lora_case(
        seg_lens=[1] * 5,
        n_slots=5,
        popularity="distinct",
        max_rank=20,
        K=32,
        n_out=[32, 16],
        page_elems=100,
        dtype=torch.float32,
        seed=11,
        col_mult=col_mult,
    )
    run_lora_case(
        seg_lens=[9, 20],
        n_slots=2,
        popularity="distinct",
        max_rank=20,
        K=32,
        n_out=[32, 16],
        page_elems=100,
        dtype=torch.float32,
        seed=12,
        col_mult=col_mult,
    )


def test_lora_max_seg_len_none_and_empty_segments():
    """max_seg_len=None (the mixed regime), empty segments, a segment without LoRA."""
    run_lora_case(
        seg_lens=[0, 4, 0, 12, 1],
        n_slots=3,
        popularity="uniform",
        max_rank=16,
        K=32,
        n_out=[32],
        page_elems=64,
        dtype=torch.float32,
        seed=5,
        max_seg_len=None,
    )


def test_lora_uncovered_tokens_untouched():
    """Tokens outside every segment: expand leaves their y rows as they were."""
    gen = torch.Generator().manual_seed(0)
    ranks = torch.tensor([[8], [16]], dtype=torch.int32)
    pool, pt, a_off, b_off = make_adapters(ranks, 32, [32], 64, torch.float32, gen)
    v = torch.randn(6, 1, 16, generator=gen)
    indptr = torch.tensor([1, 2, 4], dtype=torch.int32)
    slots = torch.tensor([0, 1], dtype=torch.int32)
    for msl in (1, 2):
        y, want = torch.zeros(6, 32), torch.zeros(6, 32)
        lora_expand(y, v, pool, pt, b_off, ranks, torch.ones(2), indptr, slots, [0, 32], max_seg_len=msl)
        lora_expand_ref(want, v, pool, pt, b_off, ranks, torch.ones(2), indptr, slots, [0, 32])
        torch.testing.assert_close(y, want)
        assert not y[[0, 4, 5]].any() and y[1:4].abs().sum() > 0


def test_lora_wrapper_errors():
    gen = torch.Generator().manual_seed(0)
    ranks = torch.tensor([[8, 8]], dtype=torch.int32)
    pool, pt, a_off, b_off = make_adapters(ranks, 32, [32, 32], 64, torch.float32, gen)
    indptr = torch.tensor([0, 2], dtype=torch.int32)
    slots = torch.tensor([0], dtype=torch.int32)
    x = torch.randn(2, 32)
    with pytest.raises(ValueError, match="out must be"):
        lora_shrink(x, pool, pt, a_off, ranks, indptr, slots, torch.empty(2, 3, 8))
    with pytest.raises(ValueError, match="dtype"):
        lora_shrink(x.half(), pool, pt, a_off, ranks, indptr, slots, torch.empty(2, 2, 8))
    with pytest.raises(ValueError, match="x must be"):
        lora_shrink(x[None], pool, pt, a_off, ranks, indptr, slots, torch.empty(2, 2, 8))
    with pytest.raises(ValueError, match="int32 or int64"):
        lora_shrink(x, pool, pt.float(), a_off, ranks, indptr, slots, torch.empty(2, 2, 8))
    with pytest.raises(ValueError, match="pool"):
        lora_shrink(x, pool.t(), pt, a_off, ranks, indptr, slots, torch.empty(2, 2, 8))
    with pytest.raises(ValueError, match="plan must be"):  # a plan with other tiles than the regime's
        plan = lora_plan(indptr, slots, 1, 2, 2 * kl.DEFAULT_CONFIG.mixed.tile_m)
        lora_shrink(x, pool, pt, a_off, ranks, indptr, slots, torch.empty(2, 2, 8), max_seg_len=2, plan=plan)
    with pytest.raises(ValueError, match="plan must be"):  # a plan over another token count
        plan = kl.plan_for_step(indptr, slots, 1, 3, 2)
        lora_shrink(x, pool, pt, a_off, ranks, indptr, slots, torch.empty(2, 2, 8), max_seg_len=2, plan=plan)
    with pytest.raises(ValueError, match="out_offsets"):
        lora_expand(
            torch.zeros(2, 64), torch.zeros(2, 2, 8), pool, pt, b_off, ranks, torch.ones(1), indptr, slots, [0, 32]
        )
    with pytest.raises(ValueError, match="v must be"):
        lora_expand(
            torch.zeros(2, 64), torch.zeros(3, 2, 8), pool, pt, b_off, ranks, torch.ones(1), indptr, slots, [0, 32, 64]
        )
    with pytest.raises(ValueError, match="scales"):
        lora_expand(
            torch.zeros(2, 64), torch.zeros(2, 2, 8), pool, pt, b_off, ranks, torch.ones(3), indptr, slots, [0, 32, 64]
        )


# ------------------------------------------------------------------------------------------------
# Attention inputs and tests
# ------------------------------------------------------------------------------------------------


def make_kv_cache(seq_lens: list[int], page_size: int, Hkv: int, D: int, dtype, gen, spare_pages: int = 2):
    n_pages = [max(1, math.ceil(L / page_size)) for L in seq_lens]
    total = sum(n_pages) + spare_pages
    perm = torch.randperm(total, generator=gen)
    pool = torch.randn(total, 2 * page_size * Hkv * D, generator=gen).to(dtype)
    table = torch.zeros(len(seq_lens), max(n_pages) + 1, dtype=torch.int32)  # wider than needed
    used = 0
    for s, n in enumerate(n_pages):
        table[s, :n] = perm[used : used + n].to(torch.int32)
        used += n
    return pool, table


def run_attention_case(
    *, seq_lens, q_lens, page_size, Hq, Hkv, D, dtype, seed, max_q_len="auto", num_decode=0, prefill_launch=None,
    window=0, softcap=0.0,
):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    pool, table = make_kv_cache(seq_lens, page_size, Hkv, D, dtype, gen)
    q_indptr = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    q_indptr[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0)
    T = int(q_indptr[-1])
    # q as a strided view, as after splitting a fused qkv projection
    qkv = torch.randn(T, Hq + 2 * Hkv, D, generator=gen).to(dtype)
    q = qkv[:, :Hq]
    seq = torch.tensor(seq_lens, dtype=torch.int32)
    mql = max(q_lens) if max_q_len == "auto" else max_q_len
    out = torch.full((T, Hq, D), float("nan"), dtype=dtype)
    want = torch.full((T, Hq, D), float("nan"), dtype=dtype)
    scale = D**-0.5
    paged_attention(
        q, pool, page_size, Hkv, table, seq, q_indptr, scale, out,
        max_q_len=mql, num_decode=num_decode, prefill_launch=prefill_launch, window=window, softcap=softcap,
    )  # fmt: skip
    paged_attention_ref(
        q, pool, page_size, Hkv, table, seq, q_indptr, scale, want, max_q_len=mql, window=window, softcap=softcap
    )
    assert not out.isnan().any()
    torch.testing.assert_close(out, want, **TOL[dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("page_size,Hq,Hkv,D", [(16, 4, 4, 32), (4, 8, 2, 16), (5, 6, 1, 32), (32, 8, 2, 64)])
def test_attention_decode(dtype, page_size, Hq, Hkv, D):
    gen = torch.Generator().manual_seed(page_size)
    seq_lens = torch.randint(1, 150, (7,), generator=gen).tolist() + [1]
    run_attention_case(
        seq_lens=seq_lens,
        q_lens=[1] * len(seq_lens),
        page_size=page_size,
        Hq=Hq,
        Hkv=Hkv,
        D=D,
        dtype=dtype,
        seed=page_size + Hq,
    )


def test_attention_decode_split_k():
    """Long contexts: the decode kernel splits each sequence's keys over several programs."""
    from kernels import attention

    old = attention.DECODE_PARTITION
    attention.DECODE_PARTITION = 64
    try:
        for dtype in (torch.float32, torch.float16):
            run_attention_case(
                seq_lens=[300, 65, 64, 1, 129], q_lens=[1] * 5, page_size=8, Hq=4, Hkv=2, D=16, dtype=dtype, seed=1
            )
    finally:
        attention.DECODE_PARTITION = old


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("page_size,Hq,Hkv,D", [(16, 4, 4, 32), (4, 8, 2, 16), (8, 4, 1, 64)])
def test_attention_prefill_chunked_mixed(dtype, page_size, Hq, Hkv, D):
    """Full prefill, chunked prefill over cached context, and decode in one batch."""
    seq_lens = [37, 50, 9, 70, 1]
    q_lens = [37, 13, 1, 64, 1]
    run_attention_case(
        seq_lens=seq_lens, q_lens=q_lens, page_size=page_size, Hq=Hq, Hkv=Hkv, D=D, dtype=dtype, seed=page_size * 3 + D
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("launch", [None, PrefillLaunch(block_m=16, block_n=32, num_warps=2, num_stages=2)])
def test_attention_mixed_step_decode_prefix(dtype, launch):
    """A mixed step as the scheduler orders it: one-token rows first (num_decode of them go to the decode
    kernel), then prefill chunks long enough that whole blocks of keys skip the masks (fresh and over cached
    context), then a one-token row the prefill kernel serves; any prefill launch configuration."""
    seq_lens = [300, 1, 77, 140, 300, 200, 9, 260]
    q_lens = [1, 1, 1, 140, 40, 200, 9, 1]
    run_attention_case(
        seq_lens=seq_lens, q_lens=q_lens, page_size=8, Hq=4, Hkv=2, D=16, dtype=dtype, seed=5,
        num_decode=3, prefill_launch=launch,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window,softcap", [(7, 0.0), (32, 0.0), (0, 2.0), (20, 1.5), (1, 0.0)])
def test_attention_sliding_window_and_softcap(dtype, window, softcap):
    """Gemma's sliding-window layers (a query sees the keys after its position minus the window) and
    logit soft-capping, in every kernel: decode rows (split over partitions, some partitions wholly before
    the window), prefill chunks over cached context longer and shorter than the window, one-token rows of
    the prefill kernel; the result differs from full attention where the window cuts."""
    from kernels import attention

    old = attention.DECODE_PARTITION
    attention.DECODE_PARTITION = 64  # 300 keys: five partitions, the first ones before a short window
    try:
        case = dict(seq_lens=[300, 5, 77, 140, 300, 60, 9, 260], q_lens=[1, 1, 1, 140, 40, 60, 9, 1], page_size=8,
                    Hq=4, Hkv=2, D=16, dtype=dtype, seed=6, num_decode=3)  # fmt: skip
        got = run_attention_case(**case, window=window, softcap=softcap)
        run_attention_case(**{**case, "max_q_len": 1, "seq_lens": case["seq_lens"][:3], "q_lens": [1] * 3},
                           window=window, softcap=softcap)  # fmt: skip  # a decode-only step
        full = run_attention_case(**case)
        assert not torch.allclose(got, full, **TOL[dtype])
    finally:
        attention.DECODE_PARTITION = old
    with pytest.raises(ValueError, match="window"):
        run_attention_case(**case, window=-1)


def test_attention_num_decode_out_of_range():
    pool, table = make_kv_cache([5], 4, 2, 16, torch.float32, torch.Generator().manual_seed(0))
    q = torch.zeros(1, 4, 16)
    ind, seq = torch.tensor([0, 1], dtype=torch.int32), torch.tensor([5], dtype=torch.int32)
    with pytest.raises(ValueError, match="num_decode"):
        paged_attention(q, pool, 4, 2, table, seq, ind, 1.0, torch.zeros(1, 4, 16), max_q_len=2, num_decode=2)


def test_attention_max_q_len_none_and_empty():
    run_attention_case(
        seq_lens=[20, 5, 33],
        q_lens=[20, 0, 2],
        page_size=4,
        Hq=4,
        Hkv=2,
        D=16,
        dtype=torch.float32,
        seed=2,
        max_q_len=None,
    )


def test_attention_batch_256_decode():
    gen = torch.Generator().manual_seed(9)
    seq_lens = torch.randint(1, 40, (256,), generator=gen).tolist()
    run_attention_case(
        seq_lens=seq_lens, q_lens=[1] * 256, page_size=16, Hq=4, Hkv=2, D=16, dtype=torch.float16, seed=9
    )


def test_attention_wrapper_errors():
    pool = torch.zeros(4, 2 * 4 * 2 * 16)
    table = torch.zeros(1, 2, dtype=torch.int32)
    seq = torch.tensor([3], dtype=torch.int32)
    ind = torch.tensor([0, 1], dtype=torch.int32)
    q = torch.zeros(1, 4, 16)
    with pytest.raises(ValueError, match="multiple"):
        paged_attention(torch.zeros(1, 3, 16), pool, 4, 2, table, seq, ind, 1.0, torch.zeros(1, 3, 16))
    with pytest.raises(ValueError, match="out must be"):
        paged_attention(q, pool, 4, 2, table, seq, ind, 1.0, torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="page_elems"):
        paged_attention(q, pool, 3, 2, table, seq, ind, 1.0, torch.zeros(1, 4, 16))
    with pytest.raises(ValueError, match="head_dim"):
        paged_attention(torch.zeros(1, 4, 8), pool, 4, 2, table, seq, ind, 1.0, torch.zeros(1, 4, 8))
    with pytest.raises(ValueError, match="int32 or int64"):
        paged_attention(q, pool, 4, 2, table.float(), seq, ind, 1.0, torch.zeros(1, 4, 16))
    with pytest.raises(ValueError, match="q_indptr"):
        paged_attention(q, pool, 4, 2, table, seq, ind[:1], 1.0, torch.zeros(1, 4, 16))
    with pytest.raises(ValueError, match="slot_mapping"):
        kv_append(pool, 4, torch.zeros(2, 2, 16), torch.zeros(2, 2, 16), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="k, v"):
        kv_append(pool, 4, torch.zeros(2, 2, 16), torch.zeros(2, 2, 8), torch.zeros(2, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("page_size,Hkv,D", [(16, 2, 32), (3, 4, 16), (8, 1, 64)])
def test_kv_append(dtype, page_size, Hkv, D):
    gen = torch.Generator().manual_seed(page_size * D)
    n_pages, T = 9, 20
    pool = torch.randn(n_pages, 2 * page_size * Hkv * D, generator=gen).to(dtype)
    want = pool.clone()
    slots = torch.randperm(n_pages * page_size, generator=gen)[:T]
    slots[torch.rand(T, generator=gen) < 0.2] = -1
    kv = torch.randn(T, 2 * Hkv + 3, D, generator=gen)  # strided views of a fused projection
    k, v = kv[:, :Hkv], kv[:, Hkv + 3 :]
    kv_append(pool, page_size, k, v, slots)
    kv_append_ref(want, page_size, k, v, slots)
    assert torch.equal(pool, want)


# ------------------------------------------------------------------------------------------------
# Backend and benchmark smoke
# ------------------------------------------------------------------------------------------------


def test_triton_backend_signatures():
    import inspect

    tb, ref = get_backend("triton"), get_backend("torch")
    assert tb.name == "triton"
    for op in ("lora_shrink", "lora_expand", "lora_apply", "paged_attention", "kv_append", "rms_norm", "add_rms_norm",
               "silu_mul", "rope"):  # fmt: skip
        ours = [p for p in inspect.signature(getattr(tb, op)).parameters if p != "config"]  # bound in the backend
        theirs = list(inspect.signature(getattr(ref, op)).parameters)
        assert ours == theirs, op  # the same signature, performance hints (aligned=, plan=) included
    assert ref.lora_plan(None, None, 0, 0, 1) is None and tb.lora_config is kl.DEFAULT_CONFIG


def test_benchmark_smoke(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "kernels.json").exists() and (tmp_path / "kernels.md").exists()
    res = json.loads((tmp_path / "kernels.json").read_text())
    steps = res["lora_steps"]["steps"]  # decode, prefill and mixed steps ran and agree with the reference
    assert [r["decode"] > 0 for r in steps] == [True, False, True, True] and "lora_steps_error" not in res
    assert steps[3]["adapter_mb"] < steps[0]["adapter_mb"]  # the q/k/v/o case reads the attention groups only
    for r in steps:
        assert r["max_abs_delta"] > 0 and r["max_abs_err"] <= 1e-4 * max(1.0, r["max_abs_delta"])
    assert "parts_sum_ms" in steps[2] and res["attention"]


# ------------------------------------------------------------------------------------------------
# Elementwise kernels (kernels/elementwise.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("T,H", [(1, 64), (7, 96), (33, 256)])
def test_rms_norms_equal_reference(dtype, T, H):
    from kernels.elementwise import add_rms_norm, add_rms_norm_ref, rms_norm, rms_norm_ref

    gen = torch.Generator().manual_seed(T + H)
    x = (torch.randn(T, H + 5, generator=gen) * 3).to(dtype)[:, 2 : 2 + H]  # rows strided, as views are
    w = (torch.rand(H, generator=gen) + 0.5).to(dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5), **tol)
    h, h_ref = (torch.randn(T, H, generator=gen) * 2).to(dtype), None
    y = torch.randn(T, H, generator=gen).to(dtype)
    h_ref = h.clone()
    out = add_rms_norm(h, y, w, 1e-6)
    want = add_rms_norm_ref(h_ref, y, w, 1e-6)
    assert torch.equal(h, h_ref)  # the residual stream gets exactly the reference's rounding
    torch.testing.assert_close(out, want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_silu_mul_and_rope_equal_reference(dtype):
    from kernels.elementwise import rope, rope_ref, silu_mul, silu_mul_ref

    gen = torch.Generator().manual_seed(1)
    gu = (torch.randn(9, 2 * 80, generator=gen) * 4).to(dtype)
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(silu_mul(gu), silu_mul_ref(gu), **tol)
    T, n_q, n_k, D = 11, 4, 2, 16  # GQA: 4 query heads, 2 KV heads, then V (left alone)
    qkv = torch.randn(T, (n_q + 2 * n_k) * D + 3, generator=gen).to(dtype)[:, : (n_q + 2 * n_k) * D]
    pos = torch.randint(0, 4000, (T,), generator=gen).float()
    freqs = pos[:, None] * (1.0 / 10000 ** (torch.arange(0, D, 2).float() / D))[None]
    want = qkv.clone()
    rope(qkv, freqs.cos(), freqs.sin(), n_q, n_k, D)
    rope_ref(want, freqs.cos(), freqs.sin(), n_q, n_k, D)
    torch.testing.assert_close(qkv, want, **tol)
    assert torch.equal(qkv[:, (n_q + n_k) * D :], want[:, (n_q + n_k) * D :])
    assert not torch.equal(qkv[:, :D], torch.zeros_like(qkv[:, :D]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gelu_mul_equals_reference(dtype):
    """Gemma's gated GELU (tanh approximation), large and small inputs included (tanh's saturation)."""
    from kernels.elementwise import gelu_mul, gelu_mul_ref

    gen = torch.Generator().manual_seed(4)
    gu = (torch.randn(9, 2 * 80, generator=gen) * 6).to(dtype)
    gu[0, :4] = torch.tensor([40.0, -40.0, 0.0, 1e-4])
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(gelu_mul(gu), gelu_mul_ref(gu), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_partial_rope_equals_reference(dtype):
    """Partial rotary (Phi-4-mini): only the first rotary_dim dims of each q and k head rotate (halves of
    rotary_dim), the rest of each head and the V heads stay as they were."""
    from kernels.elementwise import rope, rope_ref

    gen = torch.Generator().manual_seed(3)
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-3, rtol=1e-3)
    T, n_q, n_k, D, R = 9, 4, 2, 32, 24
    qkv = torch.randn(T, (n_q + 2 * n_k) * D, generator=gen).to(dtype)
    pos = torch.randint(0, 4000, (T,), generator=gen).float()
    freqs = pos[:, None] * (1.0 / 10000 ** (torch.arange(0, R, 2).float() / R))[None]
    got, want = qkv.clone(), qkv.clone()
    rope(got, freqs.cos(), freqs.sin(), n_q, n_k, D, rotary_dim=R)
    rope_ref(want, freqs.cos(), freqs.sin(), n_q, n_k, D, rotary_dim=R)
    torch.testing.assert_close(got, want, **tol)
    heads = got.view(T, n_q + 2 * n_k, D)
    assert torch.equal(heads[:, :, R:], qkv.view(T, n_q + 2 * n_k, D)[:, :, R:])  # pass-through dims
    assert torch.equal(heads[:, n_q + n_k :], qkv.view(T, n_q + 2 * n_k, D)[:, n_q + n_k :])  # V
    assert not torch.equal(heads[:, :, :R], qkv.view(T, n_q + 2 * n_k, D)[:, :, :R])
    full = qkv.clone()  # the rotation of the first R dims is the one a head of R dims gets
    small = qkv.view(T, n_q + 2 * n_k, D)[:, : n_q + n_k, :R].reshape(T, -1).contiguous()
    rope_ref(small, freqs.cos(), freqs.sin(), n_q, n_k, R)
    torch.testing.assert_close(heads[:, : n_q + n_k, :R].reshape(T, -1), small, **tol)
    with pytest.raises(ValueError, match="rotary_dim"):
        rope(full, freqs.cos(), freqs.sin(), n_q, n_k, D, rotary_dim=D + 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_with_qk_norm_equals_reference(dtype):
    """Qwen3's per-head q/k RMS norms fused into rope: the q heads take wq, the k heads wk, V untouched;
    the reference is rms_norm_ref per head then rope_ref, as transformers' Qwen3 attention computes."""
    from kernels.elementwise import rms_norm_ref, rope, rope_ref

    gen = torch.Generator().manual_seed(2)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)
    T, n_q, n_k, D = 7, 4, 2, 32
    qkv = (torch.randn(T, (n_q + 2 * n_k) * D, generator=gen) * 3).to(dtype)
    wq = (torch.rand(D, generator=gen) + 0.5).to(dtype)
    wk = (torch.rand(D, generator=gen) * 2).to(dtype)
    pos = torch.randint(0, 4000, (T,), generator=gen).float()
    freqs = pos[:, None] * (1.0 / 10000 ** (torch.arange(0, D, 2).float() / D))[None]
    got, want = qkv.clone(), qkv.clone()
    rope(got, freqs.cos(), freqs.sin(), n_q, n_k, D, q_norm=wq, k_norm=wk, eps=1e-6)
    rope_ref(want, freqs.cos(), freqs.sin(), n_q, n_k, D, q_norm=wq, k_norm=wk, eps=1e-6)
    torch.testing.assert_close(got, want, **tol)
    assert torch.equal(got[:, (n_q + n_k) * D :], qkv[:, (n_q + n_k) * D :])
    # the reference itself: a head's norm before the rotation (rotation keeps a head's length)
    heads = want[:, : (n_q + n_k) * D].float().view(T, n_q + n_k, D)
    normed = torch.cat(
        [
            rms_norm_ref(qkv[:, : n_q * D].view(T, n_q, D), wq, 1e-6),
            rms_norm_ref(qkv[:, n_q * D : (n_q + n_k) * D].view(T, n_k, D), wk, 1e-6),
        ],
        1,
    ).float()
    torch.testing.assert_close(heads.norm(dim=-1), normed.norm(dim=-1), atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="both or neither"):
        rope(got, freqs.cos(), freqs.sin(), n_q, n_k, D, q_norm=wq)
