"""Multi-LoRA shrink and expand over adapter weights stored in the unified paged pool: the launch wrappers
of the Triton kernels (kernels/lora_kernels.py) over a step's plan (kernels/lora_plan.py), and their launch
configuration. The torch references with the same signatures are in kernels/lora_ref.py.

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
uses adapter slot `seg_slot[i]` (a row of page_table/ranks/...; -1 = no LoRA). Prefill chunks and decode
tokens (one-token segments) mix freely in one step. A group of G targets shares the same input x (q/k/v:
G=3, gate/up: G=2, o or down: G=1).

shrink (S-LoRA MBGMM/MBGMV "shrink", punica `lora_a`):
    v[t, g, c * r + j] = sum_k x[t, k] * A_g[j, k]   for j < r = ranks[s, g], c = col_mult
    v[t, g, :] = 0 elsewhere, for every token t with a LoRA (rows of tokens without one: unspecified)
expand (punica `lora_b`), fused scale and accumulation into the base output y:
    y[t, out_offsets[g] + n] += scales[s] * sum_{j < r} v[t, g, j] * B^T_g[j, n]
    for n < out_offsets[g+1] - out_offsets[g], r = ranks[s, g]; rows of y without LoRA are untouched.

`col_mult` serves S-LoRA tensor parallelism for column-parallel layers: each rank holds rows
[tp_rank * r, (tp_rank + 1) * r) of A, writes them at that column offset, and a sum all-reduce of v
assembles the full x @ A^T (rows of tokens without a LoRA sum garbage that nothing reads).

One plan per step (`lora_plan`, built on the device once and passed as `plan=` to every call of the step):
the tokens grouped by adapter slot into tiles of at most M tokens of one adapter. Every kernel program
handles one tile, so an adapter's weights are read once per tile and multiplied with tl.dot; decode,
prefill and mixed steps run the same kernels. The launch configuration (`LoRAKernelConfig`: M and block
sizes, per regime) is a frozen value the kernel backend carries: `decode` when every segment is one
token, `mixed` otherwise.

`lora_apply` is shrink then expand when no tensor-parallel collective sits between them (TP=1, or the
row-parallel o/down). No wrapper synchronises with the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton

from kernels.lora_kernels import lora_expand_kernel, lora_shrink_kernel
from kernels.lora_plan import LoRAPlan, lora_plan
from kernels.lora_ref import MAX_G, check_lora_args, check_out_offsets, check_scales

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INT_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class LoRATileConfig:
    """Launch parameters of the tiled LoRA kernels in one token-count regime."""

    tile_m: int  # tokens of one adapter per program (the plan's tiles; a power of two >= 16)
    shrink_r: int  # rank columns of v per shrink program
    shrink_k: int  # elements of K per shrink loop iteration
    shrink_split: int  # K ranges per shrink tile when v is float32 (atomic adds); 1 = no split
    expand_r: int  # rank rows of B^T per expand loop iteration
    expand_n: int  # output columns per expand program
    # with a float32 v, at least this many shrink programs: more K ranges while the grid is smaller (decode
    # steps of few requests, whose few long K walks are latency-bound); 0 = shrink_split alone
    shrink_programs: int = 0
    shrink_warps: int = 4
    shrink_stages: int = 3
    expand_warps: int = 4
    expand_stages: int = 2


@dataclass(frozen=True)
class LoRAKernelConfig:
    """The LoRA kernels' launch configuration: `decode` for steps whose segments are all one token, `mixed`
    for every other step (prefill chunks, with or without decode tokens). Values picked on an H200 with
    `benchmarks/kernels.py --sweep` (benchmarks/results/issue12/); override from EngineConfig.lora.kernels.
    16-token tiles win in both regimes: the steps are memory-bound, and smaller tiles give more programs.
    Decode steps expand 128 columns per program (not 256): 2-4% faster per layer on the H200 (run 44) and the
    H100, 1.1% less decode GPU time in saturated S2 at n = 1000 (benchmarks/results/session-2026-12-05e/).
    Decode shrinks split K until the grid has `shrink_programs` programs: faster at small batches, the same at
    full ones (benchmarks/results/session-2026-12-06c/)."""

    decode: LoRATileConfig = field(
        default_factory=lambda: LoRATileConfig(
            tile_m=16, shrink_r=32, shrink_k=256, shrink_split=2, expand_r=16, expand_n=128, shrink_programs=2048
        )
    )
    mixed: LoRATileConfig = field(
        default_factory=lambda: LoRATileConfig(
            tile_m=16, shrink_r=64, shrink_k=128, shrink_split=1, expand_r=16, expand_n=256
        )
    )

    def for_step(self, max_seg_len: int | None) -> LoRATileConfig:
        return self.decode if max_seg_len is not None and max_seg_len <= 1 else self.mixed


DEFAULT_CONFIG = LoRAKernelConfig()


def plan_for_step(
    seg_indptr: torch.Tensor,
    seg_slot: torch.Tensor,
    n_slots: int,
    num_tokens: int,
    max_seg_len: int | None,
    config: LoRAKernelConfig = DEFAULT_CONFIG,
) -> LoRAPlan:
    """The step's plan, with the tile size of the step's regime."""
    return lora_plan(seg_indptr, seg_slot, n_slots, num_tokens, config.for_step(max_seg_len).tile_m)


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
    ints = {"page_table": page_table, "offsets": offsets, "ranks": ranks, "seg_indptr": seg_indptr,
            "seg_slot": seg_slot}  # fmt: skip
    for what, t in ints.items():
        if t.dtype not in _INT_DTYPES:
            raise ValueError(f"{name}: {what} must be int32 or int64, got {t.dtype}")
    if page_table.shape[0] != offsets.shape[0]:
        raise ValueError(f"{name}: page_table has {page_table.shape[0]} slots, offsets {offsets.shape[0]}")
    for what, t in {**ints, **extra}.items():
        if t.device != pool.device:
            raise ValueError(f"{name}: {what} is on {t.device}, pool on {pool.device}")
    if offsets.shape[1] > MAX_G:
        raise ValueError(f"{name}: at most {MAX_G} targets per launch, got G={offsets.shape[1]}")


def _npow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def _fit_page(block: int, page_elems: int) -> int:
    """Shrinks a block to fit in one page (>= 16: tl.dot's minimum; smaller pages read per element), so a
    row chunk touches at most two pages."""
    while block > 16 and block > page_elems:
        block //= 2
    return block


def _input_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs


def targets_geometry(out_offsets: list[int]) -> tuple[list[int], int, bool]:
    """(out_offsets padded to the MAX_G + 1 scalar kernel arguments, the widest target's columns, whether
    every target's width is a multiple of 64, as the aligned path needs)."""
    widths = [b - a for a, b in zip(out_offsets, out_offsets[1:])]
    padded = out_offsets + [out_offsets[-1]] * (MAX_G + 1 - len(out_offsets))
    return padded, max(widths), all(w % 64 == 0 for w in widths)


def _step_plan(plan, seg_indptr, seg_slot, n_slots, T, c: LoRATileConfig) -> LoRAPlan:
    if plan is None:
        return lora_plan(seg_indptr, seg_slot, n_slots, T, c.tile_m)
    if not isinstance(plan, LoRAPlan) or plan.tile_m != c.tile_m or plan.num_tokens != max(T, 1):
        raise ValueError(
            f"plan must be the step's LoRAPlan with tile_m={c.tile_m} over {T} tokens (plan_for_step with the "
            f"same max_seg_len and config), got {plan!r}"
        )
    if plan.device != seg_slot.device:
        raise ValueError(f"plan is on {plan.device}, seg_slot on {seg_slot.device}")
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
    plan: LoRAPlan | None = None,
    config: LoRAKernelConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """Triton `lora_shrink_ref`: x [T, K] -> out [T, G, R] (rows of tokens without a LoRA unspecified).

    max_seg_len: a host bound on the segment lengths that picks the regime (None: mixed). aligned=True
    promises every a_offsets entry is a multiple of 64 (app/lora/adapter.py packs them so); with K and
    page_elems multiples of 64 (checked here) the loads are then vectorised. plan: the step's
    `plan_for_step(...)`, shared by its calls (built here when absent). A float32 `out` lets the decode
    regime split K over programs that add atomically (the wrapper zeroes `out` first)."""
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
    R, P = out.shape[2], pool.shape[1]
    if T == 0 or R == 0 or seg_slot.shape[0] == 0:
        return out
    c = config.for_step(max_seg_len)
    plan = _step_plan(plan, seg_indptr, seg_slot, page_table.shape[0], T, c)
    page_table, a_offsets, ranks = page_table.contiguous(), a_offsets.contiguous(), ranks.contiguous()
    block_r = _npow2(R, 16, c.shrink_r)
    block_k = _fit_page(c.shrink_k, P)
    r_blocks = triton.cdiv(R, block_r)
    n_split = 1
    if out.dtype == torch.float32:  # shrink_split K ranges, more while the grid is below shrink_programs
        n_k = triton.cdiv(K, block_k)
        by_grid = c.shrink_programs // max(1, plan.max_tiles * G * r_blocks)
        n_split = min(n_k, max(c.shrink_split, by_grid))
    if n_split > 1:
        out.zero_()
    lora_shrink_kernel[(plan.max_tiles, G, r_blocks * n_split)](
        x, pool, page_table, a_offsets, ranks, plan.data, out,
        plan.num_tokens, K, R, G, col_mult,
        x.stride(0), x.stride(1), page_table.stride(0), out.stride(0), out.stride(1), out.stride(2),
        n_split,
        PAGE_ELEMS=P, BLOCK_M=c.tile_m, BLOCK_R=block_r, BLOCK_K=block_k,
        ALIGNED=aligned and K % 64 == 0 and P % 64 == 0, SPLIT_ATOMIC=n_split > 1, ROW_IN_TWO_PAGES=K <= P,
        INPUT_PRECISION=_input_precision(pool.dtype), num_warps=c.shrink_warps, num_stages=c.shrink_stages,
    )  # fmt: skip
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
    plan: LoRAPlan | None = None,
    config: LoRAKernelConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """Triton `lora_expand_ref`: y[:, out_offsets[g]:out_offsets[g+1]] += scale * v[:, g, :r] @ B_g^T.

    max_seg_len / aligned / plan / config: as in `lora_shrink` (aligned promises 64-aligned b_offsets;
    every N_g and page_elems must be multiples of 64 for the vectorised loads, checked here)."""
    if y.dim() != 2 or v.dim() != 3:
        raise ValueError(f"y must be [T, N] and v [T, G, R], got {tuple(y.shape)} and {tuple(v.shape)}")
    _check_triton_lora(
        "lora_expand", v, pool, page_table, b_offsets, ranks, seg_indptr, seg_slot, {"y": y, "scales": scales},
        float32_ok=True,
    )  # fmt: skip
    G = b_offsets.shape[1]
    out_offsets = check_out_offsets(out_offsets, G, y)
    T = y.shape[0]
    if v.shape[0] != T or v.shape[1] != G:
        raise ValueError(f"v must be [T={T}, G={G}, R], got {tuple(v.shape)}")
    if y.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"y dtype {y.dtype} is not a float type")
    check_scales(scales, page_table)
    offs, n_max, widths_aligned = targets_geometry(out_offsets)
    R, P = v.shape[2], pool.shape[1]
    if T == 0 or seg_slot.shape[0] == 0 or n_max == 0 or R == 0:
        return y
    c = config.for_step(max_seg_len)
    plan = _step_plan(plan, seg_indptr, seg_slot, page_table.shape[0], T, c)
    page_table, b_offsets, ranks = page_table.contiguous(), b_offsets.contiguous(), ranks.contiguous()
    block_n = _fit_page(_npow2(n_max, 16, c.expand_n), P)
    lora_expand_kernel[(plan.max_tiles, G, triton.cdiv(n_max, block_n))](
        y, v, pool, page_table, b_offsets, ranks, scales.contiguous(), plan.data,
        plan.num_tokens, G, *offs,
        y.stride(0), y.stride(1), v.stride(0), v.stride(1), v.stride(2), page_table.stride(0),
        PAGE_ELEMS=P, BLOCK_M=c.tile_m, BLOCK_R=_npow2(R, 16, c.expand_r), BLOCK_N=block_n,
        ALIGNED=aligned and P % 64 == 0 and widths_aligned, INPUT_PRECISION=_input_precision(pool.dtype),
        num_warps=c.expand_warps, num_stages=c.expand_stages,
    )  # fmt: skip
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
    plan: LoRAPlan | None = None,
    config: LoRAKernelConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """Triton `lora_apply_ref`: y[:, out_offsets[g]:out_offsets[g+1]] += scale * (x @ A_g^T) @ B_g^T, as
    `lora_shrink` into v (float32 [T, G, R], scratch) then `lora_expand` (one ranks tensor for both)."""
    if plan is None and x.shape[0] and seg_slot.shape[0]:
        plan = plan_for_step(seg_indptr, seg_slot, page_table.shape[0], x.shape[0], max_seg_len, config)
    lora_shrink(
        x, pool, page_table, a_offsets, ranks, seg_indptr, seg_slot, v,
        max_seg_len=max_seg_len, aligned=aligned, plan=plan, config=config,
    )  # fmt: skip
    return lora_expand(
        y, v, pool, page_table, b_offsets, ranks, scales, seg_indptr, seg_slot, out_offsets,
        max_seg_len=max_seg_len, aligned=aligned, plan=plan, config=config,
    )  # fmt: skip
