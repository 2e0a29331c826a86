"""Kernel micro-benchmarks: multi-LoRA decode and paged decode attention, against baselines and the
memory-bandwidth bound, all measured in one run on one GPU.

LoRA prefill (bench_lora_prefill): segments of 64..1024 tokens, one adapter each, against a matmul pair
per segment over contiguous weights and the max(bandwidth, matmul-rate) bound.
LoRA (one decode step of one layer of a Llama-2-7B shape: qkv group G=3, o, gate/up group G=2, down;
shrink + expand each, one token per request, adapters of ranks drawn from {8, 16, 32, 64}):
  * ours: the Triton kernels over paged adapter weights (kernels/lora.py);
  * torch reference (lora_shrink_ref / lora_expand_ref; few iterations, it is slow);
  * padded bmm (S-LoRA's "bmm" ablation): gather every request's A and B^T, zero-padded to the max
    rank, into contiguous [B, r_max, K] tensors and torch.bmm; the gather is timed with it;
  * bound: bytes that must move (every used adapter's weights once + x, v, y traffic) / measured
    device-to-device copy bandwidth (bytes read + written per second, measured in the same run).
Paged decode attention (Hq = 32, D = 128, page 16, contexts 512..8192, 32 and 8 KV heads):
  * ours (kernels/attention.py), torch SDPA on contiguous KV, and the bound (KV bytes / bandwidth).

    python benchmarks/kernels.py --out benchmarks/results              # on a GPU
    TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke --out /tmp  # tiny shapes on the CPU

Writes kernels.json (every figure + the machine) and kernels.md (tables) into --out.
"""

from __future__ import annotations

import argparse
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
from kernels.lora import (
    gather_virtual,
    lora_apply,
    lora_decode_plan,
    lora_expand,
    lora_expand_ref,
    lora_shrink,  # noqa: E402
    lora_shrink_ref,
)


# ----------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------


def bench_ms(fn, device: torch.device, quick: bool = False) -> float:
    """Median milliseconds of fn(). CUDA: triton.testing.do_bench (L2 flushed between calls)."""
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
    fn()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


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


def build_adapters(groups: list[Group], adapter_ranks: list[int], page_elems: int, dtype, device, gen):
    """Lays each adapter's A and B^T of every target of every group into its virtual buffer, over pages
    drawn at random from one pool. Returns pool [num_pages, page_elems], page_table [S, max_pages],
    per-adapter element counts."""
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
    total_pages = sum(n_pages) + 1
    perm = torch.randperm(total_pages, generator=gen)
    page_table = torch.zeros(S, max(n_pages), dtype=torch.int32)
    used = 0
    for s, n in enumerate(n_pages):
        page_table[s, :n] = perm[used : used + n].to(torch.int32)
        used += n
    pool = (torch.randn(total_pages, page_elems, device=device) * 0.02).to(dtype)
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


def bench_lora(args, device, dtype, bw, gen, small: bool = False) -> list[dict]:
    """small=False: batch args.batch at 1/8/64/256 adapters; small=True: batches 8 and 32 at 1/8/32."""
    if args.smoke:
        hidden, inter, page_elems = 64, 96, 1024
        rank_choices = [4, 8]
        cases = [(4, 1), (4, 2)] if not small else [(2, 1)]
    else:
        hidden, inter, page_elems = 4096, 11008, 2 * 16 * 32 * 128
        rank_choices = [8, 16, 32, 64]
        cases = (
            [(args.batch, n) for n in (1, 8, 64, 256)] if not small else [(b, n) for b in (8, 32) for n in (1, 8, 32)]
        )
    r_max = max(rank_choices)
    rows = []
    for batch, n_ad in cases:
        groups = llama_groups(hidden, inter)
        adapter_ranks = [rank_choices[int(i)] for i in torch.randint(0, len(rank_choices), (n_ad,), generator=gen)]
        pool, page_table, totals = build_adapters(groups, adapter_ranks, page_elems, dtype, device, gen)
        build_padded(groups, pool, page_table, adapter_ranks, r_max)
        req_slot = torch.arange(batch) % n_ad
        req_slot = req_slot[torch.randperm(batch, generator=gen)]
        used = sorted(set(req_slot.tolist()))
        seg_slot = req_slot.to(torch.int32).to(device)
        req_idx = req_slot.to(device)
        indptr = torch.arange(batch + 1, dtype=torch.int32, device=device)
        scales = (torch.rand(n_ad, generator=gen) + 0.5).to(device)
        req_scale = scales[req_idx].to(dtype)[:, None]
        xs = {g.name: torch.randn(batch, g.K, device=device).to(dtype) for g in groups}
        ys = {g.name: torch.randn(batch, sum(g.n_out), device=device).to(dtype) for g in groups}
        vs = {
            g.name: torch.empty(batch, len(g.n_out), r_max, device=device, dtype=torch.float32)  # as the engine
            for g in groups
        }

        def ours(ys=ys):
            # the aligned fast path, as the engine calls it; the plan (segments sorted by adapter) is built
            # here once per layer (the engine builds it once per decode step, for all layers)
            # (lora_apply: shrink + expand, or one fused launch when DECODE_CFG says so)
            plan = lora_decode_plan(indptr, seg_slot, n_ad)
            for g in groups:
                lora_apply(
                    ys[g.name],
                    xs[g.name],
                    vs[g.name],
                    pool,
                    page_table,
                    g.a_off,
                    g.b_off,
                    g.ranks,
                    scales,
                    indptr,
                    seg_slot,
                    g.out_offsets,
                    max_seg_len=1,
                    aligned=True,
                    plan=plan,
                )

        def generic(ys=ys):  # the generic (unaligned-offsets) decode kernels: the previous implementation
            for g in groups:
                lora_shrink(xs[g.name], pool, page_table, g.a_off, g.ranks, indptr, seg_slot, vs[g.name], max_seg_len=1)
                lora_expand(
                    ys[g.name],
                    vs[g.name],
                    pool,
                    page_table,
                    g.b_off,
                    g.ranks,
                    scales,
                    indptr,
                    seg_slot,
                    g.out_offsets,
                    max_seg_len=1,
                )

        def ref(ys=ys):
            for g in groups:
                lora_shrink_ref(
                    xs[g.name], pool, page_table, g.a_off, g.ranks, indptr, seg_slot, vs[g.name], max_seg_len=1
                )
                lora_expand_ref(
                    ys[g.name],
                    vs[g.name],
                    pool,
                    page_table,
                    g.b_off,
                    g.ranks,
                    scales,
                    indptr,
                    seg_slot,
                    g.out_offsets,
                    max_seg_len=1,
                )

        def bmm(ys=ys):
            for g in groups:
                x3 = xs[g.name][:, :, None]
                for gi, n in enumerate(g.n_out):
                    a = g.wa[gi].index_select(0, req_idx)  # gather [B, r_max, K]
                    v = torch.bmm(a, x3)  # [B, r_max, 1]
                    bt = g.wb[gi].index_select(0, req_idx)  # gather [B, r_max, N]
                    d = torch.bmm(v.transpose(1, 2), bt)[:, 0]  # [B, N]
                    o = g.out_offsets[gi]
                    ys[g.name][:, o : o + n] += d * req_scale

        # check: ours and the bmm baseline on the same inputs
        y_ours = {k: v.clone() for k, v in ys.items()}
        y_gen = {k: v.clone() for k, v in ys.items()}
        y_bmm = {k: v.clone() for k, v in ys.items()}
        ours(y_ours)
        generic(y_gen)
        bmm(y_bmm)
        err = max(float((y_ours[k].float() - y_bmm[k].float()).abs().max()) for k in ys)
        err_gen = max(float((y_gen[k].float() - y_bmm[k].float()).abs().max()) for k in ys)
        scale_ref = max(float((y_bmm[k].float() - ys[k].float()).abs().max()) for k in ys)

        t_ours = bench_ms(ours, device)
        t_graph = graph_ms(ours, device)
        t_gen = bench_ms(generic, device)
        t_gen_graph = graph_ms(generic, device)
        t_ref = None if small else bench_ms(ref, device, quick=True)
        t_bmm = bench_ms(bmm, device)
        t_bmm_graph = graph_ms(bmm, device)
        elem = torch.finfo(dtype).bits // 8
        adapter_bytes = sum(totals[s] for s in used) * elem
        act_bytes = sum(
            batch * g.K * elem + 2 * batch * sum(g.n_out) * elem + 2 * batch * len(g.n_out) * r_max * elem
            for g in groups
        )
        bound_ms = (adapter_bytes + act_bytes) / bw * 1e3
        rows.append(
            dict(
                n_adapters=n_ad,
                distinct_used=len(used),
                batch=batch,
                ranks=adapter_ranks[:16],
                adapter_mb=adapter_bytes / 1e6,
                activation_mb=act_bytes / 1e6,
                ours_ms=t_ours,
                ours_graph_ms=t_graph,
                generic_ms=t_gen,
                generic_graph_ms=t_gen_graph,
                ref_ms=t_ref,
                bmm_ms=t_bmm,
                bmm_graph_ms=t_bmm_graph,
                bound_ms=bound_ms,
                ours_over_bound=t_ours / bound_ms,
                ours_graph_over_bound=None if t_graph is None else t_graph / bound_ms,
                bmm_over_ours=t_bmm / t_ours,
                generic_over_ours=t_gen / t_ours,
                bmm_graph_over_ours_graph=None if t_graph is None else t_bmm_graph / t_graph,
                ref_over_ours=None if t_ref is None else t_ref / t_ours,
                max_abs_err_vs_bmm=err,
                generic_max_abs_err_vs_bmm=err_gen,
                max_abs_delta=scale_ref,
            )
        )
        print(
            f"lora batch={batch:4d} n_adapters={n_ad:4d}: ours {t_ours:.3f} ms (graph {t_graph}), "
            f"generic {t_gen:.3f} ms (graph {t_gen_graph}), bound {bound_ms:.3f} ms "
            f"({t_ours / bound_ms:.2f}x), bmm {t_bmm:.3f} ms ({t_bmm / t_ours:.1f}x ours), "
            f"ref {t_ref} ms, err {err:.2e} (generic {err_gen:.2e})",
            flush=True,
        )
        del pool, groups, xs, ys, vs, y_ours, y_bmm, y_gen
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def matmul_flops(device: torch.device, dtype) -> float:
    """Achieved dense matmul throughput (FLOP/s) of torch.mm on 4096^3 (the compute side of the prefill bound)."""
    n = 4096 if device.type == "cuda" else 256
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / (bench_ms(lambda: torch.mm(a, b), device) * 1e-3)


def bench_lora_prefill(args, device, dtype, bw, gen) -> list[dict]:
    """Prefill (SGMV): segments of many tokens, each of its own adapter (ranks {8,16,32,64}), one layer.
    Baseline: a matmul pair per segment and target over contiguous copies of its weights (made outside
    the timing), i.e. looping over the requests; bound = max(bytes / copy bandwidth, FLOPs / torch.mm rate)."""
    if args.smoke:
        hidden, inter, page_elems, rank_choices, cases = 64, 96, 1024, [4, 8], [(2, 5, 2)]
    else:
        hidden, inter, page_elems, rank_choices = 4096, 11008, 2 * 16 * 32 * 128, [8, 16, 32, 64]
        cases = [(8, 256, 8), (32, 64, 32), (2, 1024, 2)]  # (segments, tokens per segment, adapters)
    flops_rate = matmul_flops(device, dtype)
    elem = torch.finfo(dtype).bits // 8
    rows = []
    for n_seg, seg_len, n_ad in cases:
        groups = llama_groups(hidden, inter)
        ranks = [rank_choices[int(i)] for i in torch.randint(0, len(rank_choices), (n_ad,), generator=gen)]
        pool, page_table, totals = build_adapters(groups, ranks, page_elems, dtype, device, gen)
        seg_slot_l = [i % n_ad for i in range(n_seg)]
        seg_slot = torch.tensor(seg_slot_l, dtype=torch.int32, device=device)
        indptr = torch.arange(0, (n_seg + 1) * seg_len, seg_len, dtype=torch.int32, device=device)
        T = n_seg * seg_len
        scales = (torch.rand(n_ad, generator=gen) + 0.5).to(device)
        r_max = max(ranks)
        xs = {g.name: torch.randn(T, g.K, device=device).to(dtype) for g in groups}
        ys = {g.name: torch.randn(T, sum(g.n_out), device=device).to(dtype) for g in groups}
        vs = {g.name: torch.empty(T, len(g.n_out), r_max, device=device, dtype=torch.float32) for g in groups}
        dense = {}  # (group, g, slot) -> (A [r, K], B^T [r, N]) contiguous copies for the baseline
        for grp in groups:
            a_off, b_off = grp.a_off.tolist(), grp.b_off.tolist()
            for gi, n in enumerate(grp.n_out):
                for s_ in set(seg_slot_l):
                    dense[grp.name, gi, s_] = (
                        gather_virtual(pool, page_table[s_], a_off[s_][gi], ranks[s_], grp.K),
                        gather_virtual(pool, page_table[s_], b_off[s_][gi], ranks[s_], n),
                    )

        def ours(ys=ys):
            for g in groups:
                lora_shrink(
                    xs[g.name],
                    pool,
                    page_table,
                    g.a_off,
                    g.ranks,
                    indptr,
                    seg_slot,
                    vs[g.name],
                    max_seg_len=seg_len,
                    aligned=True,
                )
                lora_expand(
                    ys[g.name],
                    vs[g.name],
                    pool,
                    page_table,
                    g.b_off,
                    g.ranks,
                    scales,
                    indptr,
                    seg_slot,
                    g.out_offsets,
                    max_seg_len=seg_len,
                    aligned=True,
                )

        def per_segment(ys=ys):
            for g in groups:
                for i, s_ in enumerate(seg_slot_l):
                    rows_ = slice(i * seg_len, (i + 1) * seg_len)
                    for gi in range(len(g.n_out)):
                        a, bt = dense[g.name, gi, s_]
                        o = g.out_offsets[gi]
                        ys[g.name][rows_, o : o + g.n_out[gi]] += (xs[g.name][rows_] @ a.t()) @ bt * scales[s_]

        y_ours = {k: v.clone() for k, v in ys.items()}
        y_base = {k: v.clone() for k, v in ys.items()}
        ours(y_ours)
        per_segment(y_base)
        err = max(float((y_ours[k].float() - y_base[k].float()).abs().max()) for k in ys)
        delta = max(float((y_base[k].float() - ys[k].float()).abs().max()) for k in ys)  # the LoRA's size
        y_t = {k: v.clone() for k, v in ys.items()}
        t_ours = bench_ms(lambda: ours(y_t), device)
        t_base = bench_ms(lambda: per_segment(y_t), device)
        used = sorted(set(seg_slot_l))
        byts = sum(totals[s_] for s_ in used) * elem + sum(
            T * g.K * elem + 2 * T * sum(g.n_out) * elem + 2 * T * len(g.n_out) * r_max * 4 for g in groups
        )
        flops = sum(2 * seg_len * ranks[s_] * (g.K * len(g.n_out) + sum(g.n_out)) for s_ in seg_slot_l for g in groups)
        bound_ms = max(byts / bw, flops / flops_rate) * 1e3
        rows.append(
            dict(
                segments=n_seg,
                seg_len=seg_len,
                n_adapters=n_ad,
                tokens=T,
                ranks=ranks[:16],
                ours_ms=t_ours,
                per_segment_ms=t_base,
                bound_ms=bound_ms,
                gflop=flops / 1e9,
                mm_tflops=flops_rate / 1e12,
                ours_over_bound=t_ours / bound_ms,
                per_segment_over_ours=t_base / t_ours,
                max_abs_err_vs_per_segment=err,
                max_abs_delta=delta,
            )
        )
        print(
            f"prefill {n_seg}x{seg_len} tokens, {n_ad} adapters: ours {t_ours:.3f} ms, bound {bound_ms:.3f} ms "
            f"({t_ours / bound_ms:.2f}x), per-segment matmuls {t_base:.3f} ms, err {err:.1e} (LoRA delta {delta:.1e})",
            flush=True,
        )
        del pool, groups, xs, ys, vs, dense, y_ours, y_base, y_t
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


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
                f"attn Hkv={Hkv:2d} L={L:5d}: ours {t_ours:.3f} ms (graph {t_graph}) ({bound_ms / t_ours:.0%} of bandwidth), "
                f"sdpa {t_sdpa:.3f} ms, err {err:.1e}",
                flush=True,
            )
            del pool, k_c, v_c
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
        "(read + written), measured in this run. Times are medians (ms); ratios use the eager time (ours ms); "
        "bound = bytes that must move / that bandwidth.",
        "",
        f"## Multi-LoRA decode, one layer (qkv, o, gate/up, down: shrink + expand), batch "
        f"{res['lora'][0]['batch'] if res['lora'] else '-'}",
        "",
        "ours = the aligned decode fast path (aligned=True, plan built once per layer inside the timed call); "
        "generic = the generic decode kernels (aligned=False: the previous implementation).",
        "",
        "| adapters | adapter MB | ours ms | ours ms (CUDA graph) | bound ms | ours / bound | ours graph / bound | generic ms | generic / ours | padded bmm ms | bmm / ours | bmm / ours (both CUDA graphs) | torch ref ms | max err vs bmm |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    for r in res["lora"]:
        gb = r.get("ours_graph_over_bound")
        lines.append(
            f"| {r['n_adapters']} | {r['adapter_mb']:.1f} | {r['ours_ms']:.3f} | {_f(r['ours_graph_ms'])} | "
            f"{r['bound_ms']:.3f} | {r['ours_over_bound']:.2f}x | {'-' if gb is None else f'{gb:.2f}x'} | "
            f"{r['generic_ms']:.3f} | {r['generic_over_ours']:.1f}x | {r['bmm_ms']:.3f} | "
            f"{r['bmm_over_ours']:.1f}x | {_x(r.get('bmm_graph_over_ours_graph'))} | {_f(r['ref_ms'])} | "
            f"{r['max_abs_err_vs_bmm']:.1e} |"
        )
    lines += [
        "",
        "## Multi-LoRA decode, small batches (same layer; one token per request)",
        "",
        "| batch | adapters | distinct used | ours ms | ours ms (CUDA graph) | bound ms | ours / bound | ours graph / bound | generic ms | generic / ours | padded bmm ms | bmm / ours | max err vs bmm |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res.get("lora_small", []):
        gb = r.get("ours_graph_over_bound")
        lines.append(
            f"| {r['batch']} | {r['n_adapters']} | {r['distinct_used']} | {r['ours_ms']:.3f} | "
            f"{_f(r['ours_graph_ms'])} | {r['bound_ms']:.3f} | {r['ours_over_bound']:.2f}x | "
            f"{'-' if gb is None else f'{gb:.2f}x'} | {r['generic_ms']:.3f} | {r['generic_over_ours']:.1f}x | "
            f"{r['bmm_ms']:.3f} | {r['bmm_over_ours']:.1f}x | {r['max_abs_err_vs_bmm']:.1e} |"
        )
    lines += [
        "",
        "## Multi-LoRA prefill (SGMV), one layer: segments of many tokens, an adapter each",
        "",
        "per-segment = a matmul pair per segment and target over contiguous copies of the weights; "
        "bound = max(bytes / copy bandwidth, FLOPs / torch.mm rate measured in this run).",
        "",
        "| segments | tokens each | adapters | GFLOP | ours ms | bound ms | ours / bound | per-segment ms | per-segment / ours | max err |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res.get("lora_prefill", []):
        lines.append(
            f"| {r['segments']} | {r['seg_len']} | {r['n_adapters']} | {r['gflop']:.1f} | {r['ours_ms']:.3f} | "
            f"{r['bound_ms']:.3f} | {r['ours_over_bound']:.2f}x | {r['per_segment_ms']:.3f} | "
            f"{r['per_segment_over_ours']:.1f}x | {r['max_abs_err_vs_per_segment']:.1e} |"
        )
    lines += [
        "",
        "## Paged decode attention (one query token per sequence)",
        "",
        "| batch | context | Hq/Hkv | KV MB | ours ms | ours ms (CUDA graph) | bound ms | % of bandwidth | SDPA (contiguous) ms | SDPA / ours |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["attention"]:
        lines.append(
            f"| {r['batch']} | {r['context']} | {r['hq']}/{r['hkv']} | {r['kv_mb']:.0f} | {r['ours_ms']:.3f} | {_f(r['ours_graph_ms'])} | "
            f"{r['bound_ms']:.3f} | {r['bandwidth_fraction']:.0%} | {r['sdpa_ms']:.3f} | "
            f"{r['sdpa_over_ours']:.2f}x |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="directory for kernels.json and kernels.md")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (CPU under TRITON_INTERPRET=1)")
    ap.add_argument("--batch", type=int, default=256, help="decode requests for the LoRA benchmark")
    ap.add_argument("--attn-batch", type=int, default=32, help="sequences for the attention benchmark")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--seed", type=int, default=0)
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
    lora_small = lambda *a: bench_lora(*a, small=True)  # noqa: E731
    for key, fn in (
        ("lora", bench_lora),
        ("lora_small", lora_small),
        ("lora_prefill", bench_lora_prefill),
        ("attention", bench_attention),
    ):
        try:
            res[key] = fn(args, device, dtype, bw, gen)
        except Exception as e:  # keep the other section's figures; the error is recorded
            import traceback

            traceback.print_exc()
            res[key], res[f"{key}_error"] = [], repr(e)
            if args.smoke:
                raise
        (args.out / "kernels.json").write_text(json.dumps(res, indent=1))
    res["wall_s"] = time.time() - t0
    (args.out / "kernels.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, args.out / "kernels.md")
    print((args.out / "kernels.md").read_text())


if __name__ == "__main__":
    main()
