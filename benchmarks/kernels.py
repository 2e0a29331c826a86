"""Kernel micro-benchmarks, all measured in one run on one GPU, each against its bound and a baseline.

Multi-LoRA (bench_lora_steps): the LoRA work of one Llama-2-7B layer for the steps a loaded server runs:
decode (256 requests over 64 / 256 adapters), prefill (16 x 128 tokens, 16 adapters) and mixed (254 decode
tokens + 2 x 1024-token prefill chunks, 64 adapters), ranks cycling over {8, 16, 32, 64}, through
kernels/lora.py as the engine calls it; against the torch reference, padded bmm (decode) and the bound
max(bytes / copy bandwidth, FLOPs / matmul rate), the mixed step also against its parts run alone.
--sweep times the launch configurations of SWEEP (how kernels/lora.py's defaults were chosen).
Paged decode attention (Hq = 32, D = 128, page 16, contexts 512..8192, 32 and 8 KV heads):
  * ours (kernels/attention.py), torch SDPA on contiguous KV, and the bound (KV bytes / bandwidth).

    python benchmarks/kernels.py --out benchmarks/results [--sweep] [--lora-only]   # on a GPU
    TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke --out /tmp              # tiny shapes on the CPU

Writes kernels.json (every figure + the machine) and kernels.md (tables) into --out.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.attention import kv_view, paged_attention  # noqa: E402
from kernels.lora_ref import gather_virtual  # noqa: E402

# ----------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------


def bench_ms(fn, device: torch.device, quick: bool = False) -> float:
    """Median milliseconds of fn(). CUDA: triton.testing.do_bench (L2 flushed between calls); CPU: one call."""
    if device.type == "cuda":
        if quick:  # slow baselines (the torch reference): a few synchronised wall-clock runs
            fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))
    t0 = time.perf_counter()  # the CPU (the Triton interpreter in the smoke runs): the code path, one call
    fn()
    return (time.perf_counter() - t0) * 1e3


def graph_ms(fn, device: torch.device) -> float | None:
    """Median milliseconds of fn() captured in a CUDA graph and replayed (how the engine's decode step
    runs: no Python launch overhead). None off CUDA."""
    if device.type != "cuda":
        return None
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return bench_ms(g.replay, device)


def copy_bandwidth(device: torch.device, n_bytes: int) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read + written."""
    src = torch.empty(n_bytes // 2, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device)
    return 2 * n_bytes / (ms * 1e-3)


# ----------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------


@dataclass
class Group:
    name: str
    K: int
    n_out: list[int]
    a_off: torch.Tensor = None  # [S, G] int32
    b_off: torch.Tensor = None
    ranks: torch.Tensor = None  # [S, G] int32
    wa: list = None  # per g: [S, r_max, K]   padded copies for the bmm baseline
    wb: list = None  # per g: [S, r_max, N_g]

    @property
    def out_offsets(self) -> list[int]:
        o = [0]
        for n in self.n_out:
            o.append(o[-1] + n)
        return o


def llama_groups(hidden: int, inter: int) -> list[Group]:
    """The LoRA groups of one Llama layer: q/k/v, o, gate/up, down."""
    return [
        Group("qkv", hidden, [hidden] * 3),
        Group("o", hidden, [hidden]),
        Group("gate_up", hidden, [inter] * 2),
        Group("down", inter, [hidden]),
    ]


def build_adapters(
    groups: list[Group], adapter_ranks: list[int], page_elems: int, dtype, device, gen, pool_pages: int = 0
):
    """Lays each adapter's A and B^T of every target of every group into its virtual buffer, over pages
    drawn at random from one pool of max(pool_pages, the pages they need + 1) pages (a large pool spreads
    them as the engine's layer slice of the unified pool does). Returns pool [num_pages, page_elems],
    page_table [S, max_pages], per-adapter element counts."""
    S = len(adapter_ranks)
    totals, layouts = [], []
    for r in adapter_ranks:
        cur, lay = 0, []
        for grp in groups:
            a, b = [], []
            for n in grp.n_out:
                cur = -(-cur // 64) * 64  # blocks start at multiples of 64 (app/lora/adapter.py)
                a.append(cur)
                cur += r * grp.K
                cur = -(-cur // 64) * 64
                b.append(cur)
                cur += r * n
            lay.append((a, b))
        layouts.append(lay)
        totals.append(cur)
    n_pages = [math.ceil(t / page_elems) for t in totals]
    total_pages = max(sum(n_pages) + 1, pool_pages)
    perm = torch.randperm(total_pages, generator=gen)
    page_table = torch.zeros(S, max(n_pages), dtype=torch.int32)
    used = 0
    for s, n in enumerate(n_pages):
        page_table[s, :n] = perm[used : used + n].to(torch.int32)
        used += n
    pool = torch.empty(total_pages, page_elems, device=device, dtype=dtype).normal_(0, 0.02, generator=None)
    page_table = page_table.to(device)
    for gi, grp in enumerate(groups):
        G = len(grp.n_out)
        grp.a_off = torch.tensor([lay[gi][0] for lay in layouts], dtype=torch.int32).view(S, G).to(device)
        grp.b_off = torch.tensor([lay[gi][1] for lay in layouts], dtype=torch.int32).view(S, G).to(device)
        grp.ranks = torch.tensor(adapter_ranks, dtype=torch.int32)[:, None].repeat(1, G).to(device)
    return pool, page_table, totals


def build_padded(groups: list[Group], pool, page_table, adapter_ranks: list[int], r_max: int):
    """Zero-padded contiguous copies of every adapter's A / B^T (storage of the bmm baseline)."""
    S = len(adapter_ranks)
    for grp in groups:
        grp.wa, grp.wb = [], []
        a_off, b_off = grp.a_off.tolist(), grp.b_off.tolist()
        for g, n in enumerate(grp.n_out):
            wa = torch.zeros(S, r_max, grp.K, dtype=pool.dtype, device=pool.device)
            wb = torch.zeros(S, r_max, n, dtype=pool.dtype, device=pool.device)
            for s, r in enumerate(adapter_ranks):
                wa[s, :r] = gather_virtual(pool, page_table[s], a_off[s][g], r, grp.K)
                wb[s, :r] = gather_virtual(pool, page_table[s], b_off[s][g], r, n)
            grp.wa.append(wa)
            grp.wb.append(wb)


def matmul_flops(device: torch.device, dtype) -> float:
    """Achieved dense matmul throughput (FLOP/s) of torch.mm on 4096^3 (the compute side of the bounds)."""
    n = 4096 if device.type == "cuda" else 256
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / (bench_ms(lambda: torch.mm(a, b), device) * 1e-3)


@dataclass
class StepCase:
    """One step's LoRA work on one layer: `decode` one-token segments and prefill segments of
    `prefill` tokens each, over `n_adapters` adapters (ranks cycling over the rank choices, or all `rank`), on
    the LoRA groups `groups` (None: all four, the seven targets)."""

    name: str
    decode: int
    prefill: list[int]
    n_adapters: int
    groups: tuple[str, ...] | None = None
    rank: int | None = None


FULL_CASES = [
    StepCase("decode 256 req, 64 adapters", 256, [], 64),
    StepCase("decode 256 req, 256 adapters", 256, [], 256),
    StepCase("prefill 16 x 128, 16 adapters", 0, [128] * 16, 16),
    StepCase("mixed 254 decode + 2 x 1024 prefill, 64 adapters", 254, [1024, 1024], 64),
    StepCase("mixed 64 decode + 4 x 512 prefill, 32 adapters", 64, [512] * 4, 32),
    # a loaded S2 step of the saturated benchmark (~250 sequences, ~125 distinct adapters, q/k/v/o), where
    # session-2026-12-03-noon's profile measured the LoRA kernels at ~4x their bytes, twice the cases above
    StepCase("decode 250 req, 125 adapters, q/k/v/o", 250, [], 125, ("qkv", "o")),
    StepCase("mixed 250 decode + 1 x 300 prefill, 125 adapters, q/k/v/o", 250, [300], 125, ("qkv", "o")),
    # the saturated run's fullest decode steps (session-2026-12-05 run 43: 255 sequences, 230 adapters), and the
    # small batches of a lightly loaded server (the http suite's ~24), where each launch is near its floor
    StepCase("decode 255 req, 230 adapters, q/k/v/o", 255, [], 230, ("qkv", "o")),
    StepCase("decode 64 req, 64 adapters, q/k/v/o", 64, [], 64, ("qkv", "o")),
    StepCase("decode 24 req, 24 adapters, q/k/v/o", 24, [], 24, ("qkv", "o")),
    # one adapter (the saturated n = 1 setting): 16-token tiles, where tl.dot's tiles are full
    StepCase("decode 255 req, 1 adapter, q/k/v/o", 255, [], 1, ("qkv", "o")),
    # the saturated S2 run's steps with prefill (4096 tokens: ~128 decode tokens and chunks), with one adapter
    # (saturated.py's n = 1 is rank 64) and with n = 1000's ~120 adapters a step
    StepCase(
        "mixed 128 decode + 2 x 1984 prefill, 1 adapter of rank 64, q/k/v/o", 128, [1984] * 2, 1, ("qkv", "o"), 64
    ),
    StepCase("mixed 128 decode + 2 x 1984 prefill, 120 adapters, q/k/v/o", 128, [1984] * 2, 120, ("qkv", "o")),
]
SMOKE_CASES = [
    StepCase("decode 6 req, 3 adapters", 6, [], 3),
    StepCase("prefill 2 x 20, 2 adapters", 0, [20, 20], 2),
    StepCase("mixed 5 decode + 2 x 33 prefill, 3 adapters", 5, [33, 33], 3),
    StepCase("decode 6 req, 3 adapters, q/k/v/o", 6, [], 3, ("qkv", "o")),
]

# Launch configurations tried by --sweep (overrides of the regime's LoRATileConfig); the defaults of
# kernels/lora.py were picked from such a sweep (benchmarks/results/).
SWEEP = {
    "decode": [
        {},
        dict(shrink_r=64, shrink_k=128),
        dict(shrink_split=1),
        dict(shrink_split=4),
        dict(shrink_split=8),
        dict(shrink_split=8, shrink_k=128),
        dict(shrink_r=16),
        dict(shrink_k=512),
        dict(shrink_stages=2),
        dict(shrink_stages=4),
        dict(expand_r=32, expand_n=256),
        dict(expand_r=32),
        dict(expand_r=64),
        # a whole rank of B^T in one load over fewer columns: no serial rank loop, more programs (06j's traces: the
        # decode expand at 1.65x its bytes, a fixed 7-12 us a launch)
        dict(expand_r=64, expand_n=64),
        dict(expand_r=32, expand_n=64),
        dict(expand_n=64),
        dict(expand_n=256),
        dict(expand_n=512),
        dict(expand_n=512, expand_warps=8),
        dict(expand_stages=3),
        dict(shrink_warps=2, expand_warps=2),
    ],
    "mixed": [
        {},
        dict(shrink_r=32, shrink_k=256),
        dict(shrink_split=2),
        dict(tile_m=32),
        dict(tile_m=64),
        dict(tile_m=64, expand_n=128),
        dict(tile_m=128, expand_n=128, expand_warps=8, shrink_warps=8),
        dict(expand_n=512, expand_warps=8),
        dict(shrink_warps=8, expand_warps=8),
        dict(shrink_stages=4, expand_stages=3),
        dict(expand_n=128),
    ],
}


def _variant_config(regime: str, over: dict):
    import dataclasses

    from kernels.lora import DEFAULT_CONFIG

    return dataclasses.replace(DEFAULT_CONFIG, **{regime: dataclasses.replace(getattr(DEFAULT_CONFIG, regime), **over)})


def _step_inputs(case: StepCase, groups, n_ad: int, device, dtype, gen):
    """Token segments (prefill chunks first, then the decode tokens), their adapter slots (round robin over
    the adapters, shuffled), and the activations of every group."""
    lens = list(case.prefill) + [1] * case.decode
    slots = (torch.arange(len(lens)) % n_ad)[torch.randperm(len(lens), generator=gen)]
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.tensor(lens).cumsum(0)
    T = int(indptr[-1])
    xs = {g.name: torch.randn(T, g.K, device=device).to(dtype) for g in groups}
    ys = {g.name: torch.randn(T, sum(g.n_out), device=device).to(dtype) for g in groups}
    return lens, slots.to(torch.int32), indptr, T, xs, ys


def bench_lora_steps(args, device, dtype, bw, gen) -> dict:
    """The LoRA work of one Llama-2-7B layer (q/k/v, o, gate/up, down; bf16) for the decode, prefill and
    mixed steps of FULL_CASES, as the engine runs it: one plan per step (built once for all layers, timed
    apart), lora_apply per group (float32 v). Each against the torch reference (output error; time,
    quick), the bound max(bytes / copy bandwidth, FLOPs / torch.mm rate), and for decode steps padded bmm
    (S-LoRA's ablation: gather every request's A / B^T, padded to the max rank, then torch.bmm). A mixed
    step is also timed as its prefill part and its decode part alone. --sweep: the launch configurations
    of SWEEP too."""
    from kernels.lora import lora_apply, lora_expand, lora_shrink, plan_for_step
    from kernels.lora_ref import lora_apply_ref

    if args.smoke:
        hidden, inter, page_elems, rank_choices, cases = 64, 128, 1024, [4, 8, 16, 32], SMOKE_CASES
    else:
        hidden, inter, page_elems, rank_choices, cases = 4096, 11008, 2 * 16 * 32 * 128, [8, 16, 32, 64], FULL_CASES
    cases = getattr(args, "cases", None) or cases  # a caller's subset (benchmarks/suite.py)
    if getattr(args, "case", None):
        cases = [c for c in cases if any(sub in c.name for sub in args.case)]
    flops_rate = matmul_flops(device, dtype)
    elem = torch.finfo(dtype).bits // 8
    r_max = max(rank_choices)
    rows, sweep_rows = [], []
    for case in cases:
        groups = [g for g in llama_groups(hidden, inter) if case.groups is None or g.name in case.groups]
        n_ad = case.n_adapters
        # the plan's slot count bounds its tiles (the kernels' grid): the engine's decode graphs pass
        # max_loras_per_batch (default max_num_seqs), whatever the step holds (--plan-slots)
        plan_slots = max(n_ad, getattr(args, "plan_slots", None) or 0)
        ranks = [case.rank or rank_choices[i % len(rank_choices)] for i in range(n_ad)]  # cycling over the choices
        pool_pages = int((getattr(args, "pool_gb", None) or 0) * 1e9) // (page_elems * torch.finfo(dtype).bits // 8)
        pool, page_table, totals = build_adapters(groups, ranks, page_elems, dtype, device, gen, pool_pages)
        scales = (torch.rand(n_ad, generator=gen) + 0.5).to(device)
        lens, slots_c, indptr_c, T, xs, ys = _step_inputs(case, groups, n_ad, device, dtype, gen)
        vs = {g.name: torch.empty(T, len(g.n_out), r_max, device=device, dtype=torch.float32) for g in groups}

        def layer_fn(indptr, slots, n_tokens, max_len, config=None, ys=ys, xs=xs, vs=vs):
            """(plan builder, one layer's LoRA with that plan, {"p": the plan last built}) for these segments."""
            kw = {} if config is None else {"config": config}
            holder = {}

            def plan():
                holder["p"] = plan_for_step(indptr, slots, plan_slots, n_tokens, max_len, **kw)

            def layer():
                for g in groups:
                    lora_apply(ys[g.name], xs[g.name], vs[g.name], pool, page_table, g.a_off, g.b_off, g.ranks,
                               scales, indptr, slots, g.out_offsets, max_seg_len=max_len, aligned=True,
                               plan=holder["p"], **kw)  # fmt: skip

            plan()
            return plan, layer, holder  # holder["p"]: the plan last built

        indptr, slots = indptr_c.to(device), slots_c.to(device)
        max_len = max(lens)
        plan, layer, built = layer_fn(indptr, slots, T, max_len)

        def ref(ys=ys):
            for g in groups:
                lora_apply_ref(ys[g.name], xs[g.name], vs[g.name], pool, page_table, g.a_off, g.b_off, g.ranks,
                               scales, indptr, slots, g.out_offsets)  # fmt: skip

        # correctness on these inputs: ours against the reference
        y0 = {k: v.clone() for k, v in ys.items()}
        ys_ref = {k: v.clone() for k, v in ys.items()}
        layer()
        ref(ys_ref)
        err = max(float((ys[k].float() - ys_ref[k].float()).abs().max()) for k in ys)
        delta = max(float((ys_ref[k].float() - y0[k].float()).abs().max()) for k in ys)
        for k in ys:
            ys[k].copy_(y0[k])
        t_eager = bench_ms(layer, device)
        t_graph = graph_ms(layer, device)
        t_plan = bench_ms(plan, device)
        t_ref = bench_ms(ref, device, quick=True)
        used = sorted(set(slots_c.tolist()))
        seg_rank = [ranks[s_] for s_ in slots_c.tolist()]
        byts = sum(totals[s_] for s_ in used) * elem + sum(
            T * g.K * elem + 2 * T * sum(g.n_out) * elem + 2 * T * len(g.n_out) * r_max * 4 for g in groups
        )
        flops = sum(2 * n * r * (g.K * len(g.n_out) + sum(g.n_out)) for n, r in zip(lens, seg_rank) for g in groups)
        bound = max(byts / bw, flops / flops_rate) * 1e3
        row = dict(case=case.name, decode=case.decode, prefill=case.prefill, n_adapters=n_ad, tokens=T,
                   distinct_used=len(used), adapter_mb=sum(totals[s_] for s_ in used) * elem / 1e6,
                   gflop=flops / 1e9, bound_ms=bound, graph_ms=t_graph, eager_ms=t_eager, plan_ms=t_plan,
                   ref_ms=t_ref, max_abs_err=err, max_abs_delta=delta)  # fmt: skip
        best = t_graph if t_graph is not None else t_eager
        row["over_bound"] = best / bound
        if getattr(args, "parts", False):  # each launch alone: which kernel is far from its bytes
            launches = []
            for g in groups:
                G = len(g.n_out)
                a_bytes = sum(ranks[s_] * g.K * G for s_ in used) * elem + T * g.K * elem
                b_bytes = sum(ranks[s_] * sum(g.n_out) for s_ in used) * elem + 2 * T * sum(g.n_out) * elem
                kw = dict(max_seg_len=max_len, aligned=True, plan=built["p"])

                def shrink(g=g, kw=kw):
                    lora_shrink(xs[g.name], pool, page_table, g.a_off, g.ranks, indptr, slots, vs[g.name], **kw)

                def expand(g=g, kw=kw):
                    lora_expand(ys[g.name], vs[g.name], pool, page_table, g.b_off, g.ranks, scales, indptr, slots,
                                g.out_offsets, **kw)  # fmt: skip

                for kind, fn, nbytes in (("shrink", shrink, a_bytes), ("expand", expand, b_bytes)):
                    t = graph_ms(fn, device) or bench_ms(fn, device)
                    launches.append(dict(group=g.name, kernel=kind, ms=t, bound_ms=nbytes / bw * 1e3,
                                         over_bound=t / (nbytes / bw * 1e3)))  # fmt: skip
                    print(f"  {g.name} {kind}: {t:.4f} ms, bound {nbytes / bw * 1e3:.4f} ms", flush=True)
            for k in ys:
                ys[k].copy_(y0[k])
            row["launches"] = launches
        if case.decode and case.prefill:  # the mixed step against its parts run alone
            parts = {}
            for part, sel in (("prefill", [n > 1 for n in lens]), ("decode", [n == 1 for n in lens])):
                p_lens = [n for n, k in zip(lens, sel) if k]
                p_slots = slots_c[torch.tensor(sel)]
                p_ind = torch.zeros(len(p_lens) + 1, dtype=torch.int32)
                p_ind[1:] = torch.tensor(p_lens).cumsum(0)
                pT = int(p_ind[-1])
                px = {g.name: xs[g.name][:pT].clone() for g in groups}
                py = {g.name: ys[g.name][:pT].clone() for g in groups}
                pv = {g.name: vs[g.name][:pT] for g in groups}
                _, p_layer, _ = layer_fn(p_ind.to(device), p_slots.to(device), pT, max(p_lens), ys=py, xs=px, vs=pv)
                parts[part] = graph_ms(p_layer, device) or bench_ms(p_layer, device)
            row.update(prefill_part_ms=parts["prefill"], decode_part_ms=parts["decode"],
                       parts_sum_ms=parts["prefill"] + parts["decode"])  # fmt: skip
        if not case.prefill:  # padded bmm, S-LoRA's ablation
            req_idx = slots_c.to(device).long()
            req_scale = scales[req_idx].to(dtype)[:, None]
            build_padded(groups, pool, page_table, ranks, r_max)

            def bmm(ys=ys):
                for g in groups:
                    x3 = xs[g.name][:, :, None]
                    for gi, n in enumerate(g.n_out):
                        v = torch.bmm(g.wa[gi].index_select(0, req_idx), x3)
                        d = torch.bmm(v.transpose(1, 2), g.wb[gi].index_select(0, req_idx))[:, 0]
                        o = g.out_offsets[gi]
                        ys[g.name][:, o : o + n] += d * req_scale

            row["bmm_graph_ms"] = graph_ms(bmm, device)
            row["bmm_ms"] = bench_ms(bmm, device)
            for g in groups:
                g.wa = g.wb = None
        rows.append(row)
        print(
            f"{case.name}: graph {_f(t_graph)} ms, eager {t_eager:.3f} ms, plan {t_plan:.3f} ms, bound {bound:.3f} ms "
            f"({row['over_bound']:.2f}x), ref {t_ref:.2f} ms, err {err:.1e} (delta {delta:.1e})"
            + (
                f", parts {row['prefill_part_ms']:.3f} + {row['decode_part_ms']:.3f} ms"
                if "parts_sum_ms" in row
                else ""
            ),
            flush=True,
        )  # fmt: skip
        if args.sweep:
            regime = "decode" if not case.prefill else "mixed"
            match = getattr(args, "sweep_match", None)
            for over in [o for o in SWEEP[regime] if not o or not match or any(m in str(o) for m in match)]:
                cfg = _variant_config(regime, over)
                try:
                    v_plan, v_layer, _ = layer_fn(indptr, slots, T, max_len, config=cfg)
                    for k in ys:
                        ys[k].copy_(y0[k])
                    v_layer()
                    v_err = max(float((ys[k].float() - ys_ref[k].float()).abs().max()) for k in ys)
                    v_ms = graph_ms(v_layer, device) or bench_ms(v_layer, device)
                except Exception as e:  # noqa: BLE001 - a variant that does not compile is a result too
                    v_err, v_ms = None, None
                    print(f"  variant {over}: {e!r}", flush=True)
                sweep_rows.append(dict(case=case.name, regime=regime, variant=over, ms=v_ms, max_abs_err=v_err,
                                       over_bound=None if v_ms is None else v_ms / bound))  # fmt: skip
                print(f"  {regime} {over}: {_f(v_ms)} ms, err {v_err}", flush=True)
        pool = groups = xs = ys = vs = None  # frees the tensors (closures above hold the same cells)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    plan_slots = getattr(args, "plan_slots", None)
    return {"steps": rows, "sweep": sweep_rows, "mm_tflops": flops_rate / 1e12, "plan_slots": plan_slots,
            "pool_gb": getattr(args, "pool_gb", None)}  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# paged decode attention
# ----------------------------------------------------------------------------------------------------


def bench_attention(args, device, dtype, bw, gen) -> list[dict]:
    import torch.nn.functional as F

    if args.smoke:
        Hq, D, P, batch, ctxs, kv_heads = 4, 16, 8, 2, [32, 64], [4, 2]
    else:
        Hq, D, P, batch, ctxs, kv_heads = 32, 128, 16, args.attn_batch, [512, 1024, 2048, 4096, 8192], [32, 8]
    rows = []
    elem = torch.finfo(dtype).bits // 8
    for Hkv in kv_heads:
        for L in ctxs:
            n_pages = batch * math.ceil(L / P)
            pool = torch.randn(n_pages, 2 * P * Hkv * D, device=device).to(dtype)
            table = torch.randperm(n_pages, generator=gen).view(batch, -1).to(torch.int32).to(device)
            seq_lens = torch.full((batch,), L, dtype=torch.int32, device=device)
            q_indptr = torch.arange(batch + 1, dtype=torch.int32, device=device)
            q = torch.randn(batch, Hq, D, device=device).to(dtype)
            out = torch.empty_like(q)
            kv = kv_view(pool, P, Hkv)[table.long()]  # [B, pages, 2, P, Hkv, D]
            k_c = kv[:, :, 0].reshape(batch, -1, Hkv, D)[:, :L].transpose(1, 2).contiguous()
            v_c = kv[:, :, 1].reshape(batch, -1, Hkv, D)[:, :L].transpose(1, 2).contiguous()
            del kv
            scale = D**-0.5

            def ours():
                paged_attention(q, pool, P, Hkv, table, seq_lens, q_indptr, scale, out, max_q_len=1)

            def sdpa():
                return F.scaled_dot_product_attention(q[:, :, None], k_c, v_c, scale=scale, enable_gqa=Hkv != Hq)

            ours()
            err = float((out.float() - sdpa()[:, :, 0].float()).abs().max())
            t_ours = bench_ms(ours, device)
            t_graph = graph_ms(ours, device)
            t_sdpa = bench_ms(sdpa, device)
            kv_bytes = 2 * batch * L * Hkv * D * elem
            bound_ms = (kv_bytes + 2 * q.numel() * elem) / bw * 1e3
            rows.append(
                dict(
                    batch=batch,
                    context=L,
                    hq=Hq,
                    hkv=Hkv,
                    head_dim=D,
                    page_size=P,
                    kv_mb=kv_bytes / 1e6,
                    ours_ms=t_ours,
                    ours_graph_ms=t_graph,
                    sdpa_ms=t_sdpa,
                    bound_ms=bound_ms,
                    bandwidth_fraction=bound_ms / t_ours,
                    sdpa_over_ours=t_sdpa / t_ours,
                    max_abs_err_vs_sdpa=err,
                )
            )
            print(
                f"attn Hkv={Hkv:2d} L={L:5d}: ours {t_ours:.3f} ms (graph {t_graph}) "
                f"({bound_ms / t_ours:.0%} of bandwidth), "
                f"sdpa {t_sdpa:.3f} ms, err {err:.1e}",
                flush=True,
            )
            pool = k_c = v_c = None  # frees the tensors (closures above hold the same cells)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------------
# attention of a mixed step (decode rows and prefill chunks in one batch)
# ----------------------------------------------------------------------------------------------------

# (name, decode rows, prefill chunks as (new tokens, cached tokens before them))
MIXED_ATTN_CASES = [
    ("254 decode + 2 x 1024 prefill", 254, [(1024, 0)] * 2),
    ("200 decode + 8 x 448 prefill (4 over 512 cached)", 200, [(448, 0)] * 4 + [(448, 512)] * 4),
    ("prefill 16 x 128", 0, [(128, 0)] * 16),
    ("prefill 2 x 2048", 0, [(2048, 0)] * 2),
]
SMOKE_MIXED_ATTN_CASES = [("5 decode + 2 x 33 prefill (one over 40 cached)", 5, [(33, 0), (33, 40)])]
# prefill launch configurations tried by --sweep (PrefillLaunch fields)
ATTN_SWEEP = [
    dict(block_m=64, block_n=64, num_warps=4, num_stages=3),
    dict(block_m=64, block_n=64, num_warps=4, num_stages=2),
    dict(block_m=64, block_n=32, num_warps=4, num_stages=3),
    dict(block_m=128, block_n=64, num_warps=8, num_stages=2),
    dict(block_m=128, block_n=64, num_warps=8, num_stages=3),
    dict(block_m=128, block_n=32, num_warps=8, num_stages=3),
    dict(block_m=64, block_n=128, num_warps=8, num_stages=2),
    dict(block_m=32, block_n=64, num_warps=4, num_stages=3),
]


def _flash_varlen():
    """torch's FlashAttention varlen entry point, or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def bench_attention_mixed(args, device, dtype, bw, gen) -> list[dict]:
    """One layer's attention of a mixed step, the way the engine runs it since decode rows come first
    (num_decode of them to the decode kernel, the chunks to the prefill kernel) against the whole batch
    through the prefill kernel (num_decode = 0, how mixed steps ran before), each part alone, the torch
    reference, torch's FlashAttention varlen on contiguous K/V for the prefill part (a FlashAttention-class
    yardstick) and the bound max(KV bytes / bandwidth, FLOPs / matmul rate)."""
    from kernels.attention import PrefillLaunch, paged_attention_ref

    if args.smoke:
        shapes, P, cases, ctx_hi = [(4, 2, 16)], 8, SMOKE_MIXED_ATTN_CASES, 64
    else:
        shapes, P, cases, ctx_hi = [(32, 32, 128), (32, 8, 128)], 16, MIXED_ATTN_CASES, 1024
    mm = matmul_flops(device, dtype)
    elem = torch.finfo(dtype).bits // 8
    flash = _flash_varlen() if device.type == "cuda" else None
    rows = []
    for Hq, Hkv, D in shapes:
        for name, n_dec, chunks in cases:
            dec_ctx = torch.randint(8, ctx_hi, (n_dec,), generator=gen).tolist()
            seq_lens = dec_ctx + [new + old for new, old in chunks]
            q_lens = [1] * n_dec + [new for new, _ in chunks]
            n_pages = [math.ceil(L / P) for L in seq_lens]
            pool = torch.randn(sum(n_pages) + 1, 2 * P * Hkv * D, generator=gen).to(dtype).to(device)
            perm = torch.randperm(sum(n_pages), generator=gen)
            table = torch.zeros(len(seq_lens), max(n_pages), dtype=torch.int32)
            used = 0
            for s_, n in enumerate(n_pages):
                table[s_, :n] = perm[used : used + n].to(torch.int32)
                used += n
            table = table.to(device)
            lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
            ind = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
            ind[1:] = torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0)
            ind = ind.to(device)
            T = int(ind[-1])
            q = torch.randn(T, Hq, D, generator=gen).to(dtype).to(device)
            out = torch.empty_like(q)
            max_q, scale = max(q_lens), D**-0.5

            def run(num_decode, launch=None, out=out):
                paged_attention(q, pool, P, Hkv, table, lens, ind, scale, out, max_q_len=max_q,
                                num_decode=num_decode, prefill_launch=launch)  # fmt: skip

            want = torch.empty_like(q)
            paged_attention_ref(q, pool, P, Hkv, table, lens, ind, scale, want)
            run(n_dec)
            err = float((out.float() - want.float()).abs().max())
            t_split = bench_ms(lambda: run(n_dec), device)
            t_whole = bench_ms(lambda: run(0), device)
            t_pre0 = int(ind[n_dec])  # on the host once: no synchronisation inside a timed call
            pre_ind = ind[n_dec:] - t_pre0
            q_pre, out_pre = q[t_pre0:], out[t_pre0:]

            def prefill_part(launch=None):
                paged_attention(q_pre, pool, P, Hkv, table[n_dec:], lens[n_dec:], pre_ind, scale, out_pre,
                                max_q_len=max_q, prefill_launch=launch)  # fmt: skip

            t_pre = bench_ms(prefill_part, device) if chunks else 0.0
            t_dec = 0.0
            if n_dec:
                dec_ind = ind[: n_dec + 1]
                t_dec = bench_ms(
                    lambda: paged_attention(
                        q, pool, P, Hkv, table[:n_dec], lens[:n_dec], dec_ind, scale, out, max_q_len=1
                    ),  # fmt: skip
                    device,
                )
            t_flash = None
            if flash is not None and chunks:
                kv = kv_view(pool, P, Hkv)
                ks, vs = [], []
                for s_ in range(n_dec, len(seq_lens)):
                    pages = table[s_, : n_pages[s_]].long()
                    ks.append(kv[pages, 0].reshape(-1, Hkv, D)[: seq_lens[s_]])
                    vs.append(kv[pages, 1].reshape(-1, Hkv, D)[: seq_lens[s_]])
                # contiguous and with every query head's K/V (this torch's varlen_attn may lack GQA)
                k_c = torch.cat(ks).repeat_interleave(Hq // Hkv, dim=1)
                v_c = torch.cat(vs).repeat_interleave(Hq // Hkv, dim=1)
                cu_k = torch.zeros(len(chunks) + 1, dtype=torch.int32)
                cu_k[1:] = torch.cumsum(torch.tensor(seq_lens[n_dec:], dtype=torch.int32), 0)
                cu_k = cu_k.to(device)
                max_k = max(seq_lens[n_dec:])
                causal = (
                    {"window_size": (-1, 0)}
                    if "window_size" in inspect.signature(flash).parameters
                    else {"is_causal": True}
                )

                def flash_call():
                    return flash(q_pre, k_c, v_c, pre_ind, cu_k, max_q, max_k, scale=scale, **causal)

                try:
                    ferr = float((flash_call().float() - want[t_pre0:].float()).abs().max())
                    t_flash = bench_ms(flash_call, device)
                    print(f"  flash varlen: {t_flash:.3f} ms, max err vs reference {ferr:.1e}", flush=True)
                except Exception as e:  # noqa: BLE001 - a yardstick only: its absence is recorded
                    print(f"  flash varlen failed: {e!r}", flush=True)
            kv_bytes = sum(seq_lens) * 2 * Hkv * D * elem + 2 * q.numel() * elem
            flops = 4 * Hq * D * (sum(dec_ctx) + sum(new * (old + (new + 1) / 2) for new, old in chunks))
            bound = max(kv_bytes / bw, flops / mm) * 1e3
            row = dict(
                case=name, hq=Hq, hkv=Hkv, head_dim=D, page_size=P, tokens=T, decode_rows=n_dec,
                split_ms=t_split, whole_ms=t_whole, prefill_part_ms=t_pre, decode_part_ms=t_dec,
                flash_prefill_ms=t_flash, bound_ms=bound, max_abs_err=err, sweep=[],
            )  # fmt: skip
            print(
                f"mixed attn {name} Hq/Hkv {Hq}/{Hkv}: split {t_split:.3f} ms, whole {t_whole:.3f}, parts "
                f"{t_pre:.3f} + {t_dec:.3f}, flash prefill {_f(t_flash)}, bound {bound:.3f}, err {err:.1e}",
                flush=True,
            )
            if args.sweep and chunks:
                for v in ATTN_SWEEP:
                    launch = PrefillLaunch(**v)
                    try:
                        prefill_part(launch)
                        t = bench_ms(lambda launch=launch: prefill_part(launch), device)
                    except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: recorded, not fatal
                        print(f"  prefill {v}: failed {e!r}", flush=True)
                        continue
                    row["sweep"].append(dict(launch=v, ms=t))
                    print(f"  prefill {v}: {t:.3f} ms", flush=True)
            rows.append(row)
            pool = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------------


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _x(x) -> str:
    return "-" if x is None else f"{x:.1f}x"


def write_markdown(res: dict, path: Path) -> None:
    lines = [
        f"# Kernel benchmarks: {res['device']}",
        "",
        f"dtype {res['dtype']}; device-to-device copy bandwidth {res['copy_bandwidth_gbs']:.0f} GB/s "
        "(read + written), measured in this run. Times are medians (ms).",
        "",
        "## Multi-LoRA, one Llama-2-7B layer (q/k/v, o, gate/up, down), decode, prefill and mixed steps",
        "",
        f"Ranks cycling over {{8, 16, 32, 64}}; one plan per step (built once for all layers: plan ms), "
        f"lora_apply per group with float32 v, as the engine calls them. bound = max(bytes / copy bandwidth, "
        f"FLOPs / torch.mm rate ({res.get('lora_steps', {}).get('mm_tflops', 0):.0f} TFLOP/s in this run)). Every "
        "output checked against the torch reference (max abs error vs the size of the LoRA's change)."
        + (
            f" Plans built for {res['lora_steps']['plan_slots']} adapter slots (--plan-slots: the grid of the "
            "engine's decode graphs)."
            if res.get("lora_steps", {}).get("plan_slots")
            else ""
        )
        + (
            f" Adapter pages spread at random over a {res['lora_steps']['pool_gb']} GB pool (--pool-gb)."
            if res.get("lora_steps", {}).get("pool_gb")
            else ""
        ),
        "",
        "| step | tokens | adapters | bound ms | ours ms (CUDA graph) | ours / bound | eager ms | plan ms | "
        "parts alone (prefill + decode) ms | padded bmm ms (graph) | torch ref ms | max err / delta |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res.get("lora_steps", {}).get("steps", []):
        parts = "-" if "parts_sum_ms" not in r else (
            f"{r['prefill_part_ms']:.3f} + {r['decode_part_ms']:.3f} = {r['parts_sum_ms']:.3f}")  # fmt: skip
        lines.append(
            f"| {r['case']} | {r['tokens']} | {r['n_adapters']} | {r['bound_ms']:.3f} | {_f(r['graph_ms'])} | "
            f"{r['over_bound']:.2f}x | {r['eager_ms']:.3f} | {r['plan_ms']:.3f} | {parts} | "
            f"{_f(r.get('bmm_graph_ms'))} | {r['ref_ms']:.2f} | {r['max_abs_err']:.1e} / {r['max_abs_delta']:.1e} |"
        )
    with_parts = [r for r in res.get("lora_steps", {}).get("steps", []) if r.get("launches")]
    if with_parts:
        lines += [
            "",
            "### Each launch alone (--parts): bound = its adapter rows + activations / copy bandwidth",
            "",
            "| step | group | kernel | ms (CUDA graph) | bound ms | / bound |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r in with_parts:
            for x in r["launches"]:
                lines.append(
                    f"| {r['case']} | {x['group']} | {x['kernel']} | {_f(x['ms'])} | {x['bound_ms']:.4f} | "
                    f"{_x(x['over_bound'])} |"
                )
    if res.get("lora_steps", {}).get("sweep"):
        lines += [
            "",
            "### Launch configurations (--sweep): overrides of the regime's LoRATileConfig",
            "",
            "| step | regime | variant | ms (CUDA graph) | / bound | max err |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r in res.get("lora_steps", {})["sweep"]:
            lines.append(
                f"| {r['case']} | {r['regime']} | {r['variant'] or 'default'} | {_f(r['ms'])} | "
                f"{_x(r['over_bound'])} | {_f(r['max_abs_err'])} |"
            )
    lines += [
        "",
        "## Paged decode attention (one query token per sequence)",
        "",
        "| batch | context | Hq/Hkv | KV MB | ours ms | ours ms (CUDA graph) | bound ms | % of bandwidth "
        "| SDPA (contiguous) ms | SDPA / ours |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res.get("attention", []):
        lines.append(
            f"| {r['batch']} | {r['context']} | {r['hq']}/{r['hkv']} | {r['kv_mb']:.0f} | {r['ours_ms']:.3f} "
            f"| {_f(r['ours_graph_ms'])} | "
            f"{r['bound_ms']:.3f} | {r['bandwidth_fraction']:.0%} | {r['sdpa_ms']:.3f} | "
            f"{r['sdpa_over_ours']:.2f}x |"
        )
    if res.get("mixed_attention"):
        lines += [
            "",
            "## Attention of a mixed step, one layer (decode rows with contexts U[8, 1024) and prefill chunks)",
            "",
            "split: decode rows to the decode kernel, chunks to the prefill kernel (the engine since this "
            "change); whole: the whole batch through the prefill kernel (before). flash: torch's "
            "FlashAttention varlen on contiguous K/V, prefill part only (a yardstick).",
            "",
            "| step | Hq/Hkv | bound ms | split ms | whole ms | prefill part | decode part | flash prefill | "
            "best sweep (prefill part) | max err |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for r in res["mixed_attention"]:
            best = min(r["sweep"], key=lambda v: v["ms"]) if r["sweep"] else None
            best_s = "-" if best is None else f"{best['ms']:.3f} ({best['launch']})"
            lines.append(
                f"| {r['case']} | {r['hq']}/{r['hkv']} | {r['bound_ms']:.3f} | {r['split_ms']:.3f} | "
                f"{r['whole_ms']:.3f} | {r['prefill_part_ms']:.3f} | {r['decode_part_ms']:.3f} | "
                f"{_f(r['flash_prefill_ms'])} | {best_s} | {r['max_abs_err']:.1e} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="directory for kernels.json and kernels.md")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU under TRITON_INTERPRET=1)")
    ap.add_argument("--attn-batch", type=int, default=32, help="sequences for the attention benchmark")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep", action="store_true", help="also time the LoRA launch configurations of SWEEP")
    ap.add_argument("--lora-only", action="store_true", help="skip the attention sections")
    ap.add_argument("--case", action="append", help="only the LoRA cases whose name holds this (repeatable)")
    ap.add_argument("--parts", action="store_true", help="also time each LoRA launch (group, shrink/expand) alone")
    ap.add_argument(
        "--plan-slots", type=int, default=None,
        help="build each step's plan for this many adapter slots (at least the case's adapters), as the engine's "
        "decode CUDA graphs do with max_loras_per_batch: their grids launch programs for that many tiles",
    )  # fmt: skip
    ap.add_argument(
        "--pool-gb", type=float, default=None,
        help="spread the adapters' pages at random over a pool of this size (one layer's slice of the engine's "
        "unified pool: GPU memory for the pool / layers), not just the pages they fill",
    )  # fmt: skip
    ap.add_argument("--attention-only", action="store_true", help="only the mixed-step attention section")
    ap.add_argument(
        "--sweep-match", action="append", default=None,
        help="with --sweep: only the SWEEP variants whose text contains this (repeatable; the default is kept)",
    )  # fmt: skip
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu" and dtype == torch.bfloat16:
        dtype = torch.float32  # Triton's interpreter gets bfloat16 wrong on the CPU
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    bw = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 22))
    print(
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu'}: "
        f"copy bandwidth {bw / 1e9:.0f} GB/s",
        flush=True,
    )
    res = dict(
        device=torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})",
        torch=torch.__version__,
        triton=__import__("triton").__version__,
        dtype=str(dtype).split(".")[-1],
        smoke=args.smoke,
        copy_bandwidth_gbs=bw / 1e9,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    sections = [("lora_steps", bench_lora_steps)] + (
        [] if args.lora_only else [("attention", bench_attention), ("mixed_attention", bench_attention_mixed)]
    )
    if args.attention_only:
        sections = [("mixed_attention", bench_attention_mixed)]
    for key, fn in sections:
        try:
            res[key] = fn(args, device, dtype, bw, gen)
        except Exception as e:  # keep the other section's figures; the error is recorded
            import traceback

            traceback.print_exc()
            res[key], res[f"{key}_error"] = ({} if key == "lora_steps" else []), repr(e)
            if args.smoke:
                raise
        (args.out / "kernels.json").write_text(json.dumps(res, indent=1))
    res["wall_s"] = time.time() - t0
    (args.out / "kernels.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, args.out / "kernels.md")
    print((args.out / "kernels.md").read_text())


if __name__ == "__main__":
    main()
