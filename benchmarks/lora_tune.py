"""Per-kernel view of the multi-LoRA decode step and a sweep of the decode launch parameters
(kernels/lora.py DECODE_CFG), on a GPU:

    python benchmarks/lora_tune.py --out DIR [--adapters 64 256] [--batch 256]

For each adapter count and each LoRA group of a Llama-2-7B layer (qkv, o, gate_up, down), the decode
shrink and expand kernels are timed alone (triton.testing.do_bench, L2 flushed) for every candidate
configuration, next to their own bandwidth bound (bytes that kernel must move / measured copy bandwidth).
Writes lora_tune.json (every measurement) and lora_tune.md (per kernel: default vs best configuration;
the single configuration best over all kernels and adapter counts, which is what DECODE_CFG can hold).

    python benchmarks/lora_tune.py --layer --out DIR [--adapters 64 256] [--v-width 64 256]

--layer times the whole decode LoRA step of one layer (plan + 4 x shrink/expand, as benchmarks/kernels.py
"ours") in a CUDA graph and eagerly, for each variant of DECODE_CFG in LAYER_VARIANTS (every variant's
output checked against the torch reference), and profiles the default and the fastest variant with
torch.profiler (GPU time per kernel inside the graph replay). --v-width: columns of the shrink output v
(the engine's CUDA graphs use max_lora_rank, 256 by default, not the largest rank present).
Writes lora_layer.json and lora_layer.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels.lora as kl  # noqa: E402
from benchmarks.kernels import build_adapters, copy_bandwidth, llama_groups  # noqa: E402

SHRINK_SPACE = dict(
    shrink_r=[16, 32], shrink_k=[512, 1024], shrink_warps=[4, 8], shrink_stages=[3, 4], shrink_split=[1, 2, 4, 8]
)
HIDDEN, INTER, PAGE_ELEMS, RANK_CHOICES = 4096, 11008, 2 * 16 * 32 * 128, [8, 16, 32, 64]
EXPAND_SPACE = dict(expand_r=[16, 32], expand_n=[128, 256, 512], expand_warps=[4, 8], expand_stages=[2, 3])


_S16 = dict(shrink_r=16, shrink_k=512)  # the previous default shrink
_S32 = dict(shrink_r=32, shrink_k=256)
LAYER_VARIANTS = [
    dict(),
    _S16,
    dict(shrink_split=4),
    dict(_S32, shrink_split=4),
    dict(shrink_split=1),
    dict(expand_stream=True),
    dict(expand_stream=True, stream_n=128),
    dict(expand_stream=True, stream_n=32),
    dict(expand_stream=True, stream_per=512),
    dict(expand_stream=True, stream_per=2048),
    dict(expand_stream=True, stream_per=512, stream_n=128),
    dict(expand_stream=True, stream_stages=2),
    dict(expand_stream=True, stream_stages=4),
    dict(expand_stream=True, stream_warps=2),
    dict(expand_stream=True, stream_warps=8),
    dict(expand_stream=True, stream_r=32),
    dict(expand_stream=True, stream_r=16),
    dict(expand_stream=True, stream_per=256),
    dict(expand_stream=True, stream_per=256, stream_n=128, stream_stages=2),
    dict(shrink_split=8),
    dict(_S32, shrink_split=8),
    dict(fused=True),
    dict(fused=True, fused_stages=2),
    dict(fused=True, fused_k=256),
    dict(fused=True, fused_r=16),
    dict(fused=True, fused_r=64),
    dict(fused=True, fused_n=256),
    dict(fused=True, fused_n=64),
    dict(fused=True, fused_er=32),
    dict(fused=True, fused_warps=8),
    dict(fused=True, fused_r=16, fused_k=256),
]


def decode_case(n_ad: int, batch: int, gen, dev, dtype):
    """One Llama-2-7B layer's adapters (ranks drawn from RANK_CHOICES) over random pool pages, and a decode
    batch that spreads its tokens evenly over the adapters in random order."""
    groups = llama_groups(HIDDEN, INTER)
    ranks = [RANK_CHOICES[int(i)] for i in torch.randint(0, len(RANK_CHOICES), (n_ad,), generator=gen)]
    pool, page_table, totals = build_adapters(groups, ranks, PAGE_ELEMS, dtype, dev, gen)
    slot = (torch.arange(batch) % n_ad)[torch.randperm(batch, generator=gen)]
    used = sorted(set(slot.tolist()))
    seg_slot = slot.to(torch.int32).to(dev)
    indptr = torch.arange(batch + 1, dtype=torch.int32, device=dev)
    scales = (torch.rand(n_ad, generator=gen) + 0.5).to(dev)
    return groups, ranks, pool, page_table, totals, used, seg_slot, indptr, scales


def grid(space: dict) -> list[dict]:
    return [dict(zip(space, vals)) for vals in itertools.product(*space.values())]


def time_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--adapters", type=int, nargs="*", default=[64, 256])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layer", action="store_true", help="whole-layer variants in a CUDA graph + profile")
    ap.add_argument("--v-width", type=int, nargs="*", default=[64], help="--layer: columns of v")
    args = ap.parse_args()
    if args.layer:
        return layer_main(args)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator().manual_seed(args.seed)
    bw = copy_bandwidth(dev, 1 << 30)
    default = dict(kl.DECODE_CFG)
    rows = []
    for n_ad in args.adapters:
        groups, ranks, pool, page_table, _, used, seg_slot, indptr, scales = decode_case(
            n_ad, args.batch, gen, dev, dtype
        )
        plan = kl.lora_decode_plan(indptr, seg_slot, n_ad)
        t_plan = time_ms(lambda: kl.lora_decode_plan(indptr, seg_slot, n_ad))
        rows.append(dict(n_adapters=n_ad, kernel="plan", cfg={}, ms=t_plan, bound_ms=None))
        for g in groups:
            G, B = len(g.n_out), args.batch
            x = torch.randn(B, g.K, device=dev).to(dtype)
            y = torch.randn(B, sum(g.n_out), device=dev).to(dtype)
            v = torch.empty(B, G, max(RANK_CHOICES), device=dev, dtype=torch.float32)
            a_bytes = sum(ranks[s] * g.K * G for s in used) * 2
            b_bytes = sum(ranks[s] * sum(g.n_out) for s in used) * 2
            shrink_bound = (a_bytes + x.numel() * 2 + v.numel() * 4) / bw * 1e3
            expand_bound = (b_bytes + 2 * y.numel() * 2 + v.numel() * 4) / bw * 1e3

            def shrink():
                kl.lora_shrink(
                    x, pool, page_table, g.a_off, g.ranks, indptr, seg_slot, v, max_seg_len=1, aligned=True, plan=plan
                )

            def expand():
                kl.lora_expand(
                    y,
                    v,
                    pool,
                    page_table,
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

            for kind, fn, space, bound in (
                ("shrink", shrink, SHRINK_SPACE, shrink_bound),
                ("expand", expand, EXPAND_SPACE, expand_bound),
            ):
                for cfg in grid(space):
                    kl.DECODE_CFG.update(default)
                    kl.DECODE_CFG.update(cfg)
                    try:
                        ms = time_ms(fn)
                    except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: recorded, skipped
                        rows.append(
                            dict(
                                n_adapters=n_ad,
                                kernel=f"{g.name}.{kind}",
                                cfg=cfg,
                                ms=None,
                                bound_ms=bound,
                                error=repr(e)[:200],
                            )
                        )
                        continue
                    rows.append(dict(n_adapters=n_ad, kernel=f"{g.name}.{kind}", cfg=cfg, ms=ms, bound_ms=bound))
                kl.DECODE_CFG.update(default)
                best = min(
                    (
                        r
                        for r in rows
                        if r["n_adapters"] == n_ad and r["kernel"] == f"{g.name}.{kind}" and r["ms"] is not None
                    ),
                    key=lambda r: r["ms"],
                )
                print(
                    f"n_ad={n_ad} {g.name}.{kind}: bound {bound:.4f} ms, best {best['ms']:.4f} ms {best['cfg']}",
                    flush=True,
                )
        del pool
        torch.cuda.empty_cache()
    kl.DECODE_CFG.update(default)
    res = dict(
        device=torch.cuda.get_device_name(),
        copy_bandwidth_gbs=bw / 1e9,
        batch=args.batch,
        default_cfg=default,
        rows=rows,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_tune.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, args.out / "lora_tune.md")
    print((args.out / "lora_tune.md").read_text())


def write_markdown(res: dict, path: Path) -> None:
    rows = [r for r in res["rows"] if r["ms"] is not None]
    default = res["default_cfg"]
    lines = [
        f"# Decode LoRA kernels, one at a time: {res['device']}",
        "",
        f"bf16, batch {res['batch']}, copy bandwidth {res['copy_bandwidth_gbs']:.0f} GB/s; medians (ms), L2 "
        "flushed; bound = that kernel's bytes / bandwidth. default = DECODE_CFG as committed.",
        "",
        "| adapters | kernel | bound ms | default ms | default / bound | best ms | best / bound | best config |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    keys = sorted({(r["n_adapters"], r["kernel"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for n_ad, kern in keys:
        rs = [r for r in rows if r["n_adapters"] == n_ad and r["kernel"] == kern]
        best = min(rs, key=lambda r: r["ms"])
        dflt = next((r for r in rs if all(default.get(k) == v for k, v in r["cfg"].items())), None)
        b, d = best["bound_ms"], None if dflt is None else dflt["ms"]
        f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        ratio = lambda x: "-" if x is None or b is None else f"{x / b:.2f}x"  # noqa: E731
        lines.append(
            f"| {n_ad} | {kern} | {f(b)} | {f(d)} | {ratio(d)} | {best['ms']:.4f} | {ratio(best['ms'])} | "
            f"{best['cfg']} |"
        )
    for kind in ("shrink", "expand"):  # one configuration for all kernels of a kind (what DECODE_CFG holds)
        cands = {json.dumps(r["cfg"], sort_keys=True) for r in rows if r["kernel"].endswith(kind)}
        total = {}
        for c in cands:
            rs = [r for r in rows if r["kernel"].endswith(kind) and json.dumps(r["cfg"], sort_keys=True) == c]
            if len(rs) == len({(r["n_adapters"], r["kernel"]) for r in rows if r["kernel"].endswith(kind)}):
                total[c] = sum(r["ms"] for r in rs)
        if total:
            best = min(total, key=total.get)
            lines += [
                "",
                f"Best single {kind} configuration (sum over kernels and adapter counts): {best}: {total[best]:.4f} ms",
            ]
    path.write_text("\n".join(lines) + "\n")


def kernel_profile(fn, reps: int = 20) -> dict[str, float]:
    """GPU microseconds per call of fn, per kernel name (torch.profiler, CUDA activities)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    kern = sorted(
        (ev for ev in prof.events() if ev.device_type.name == "CUDA" and ev.device_time_total > 0),
        key=lambda ev: ev.time_range.start,
    )
    per = len(kern) // reps  # kernels of one replay, in launch order: "i name" -> mean us
    out: dict[str, float] = {}
    for i, ev in enumerate(kern[: per * reps]):
        key = f"{i % per:02d} {ev.name[:50]}"
        out[key] = out.get(key, 0.0) + ev.device_time_total / reps
    return out


def layer_main(args) -> None:
    from benchmarks.kernels import graph_ms

    dev, dtype = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator().manual_seed(args.seed)
    bw = copy_bandwidth(dev, 1 << 30)
    default = dict(kl.DECODE_CFG)
    rows, profiles = [], []
    for n_ad in args.adapters:
        groups, ranks, pool, page_table, totals, used, seg_slot, indptr, scales = decode_case(
            n_ad, args.batch, gen, dev, dtype
        )
        xs = {g.name: torch.randn(args.batch, g.K, device=dev).to(dtype) for g in groups}
        ys = {g.name: torch.randn(args.batch, sum(g.n_out), device=dev).to(dtype) for g in groups}
        bound_ms = (
            (
                sum(totals[s] for s in used) * 2
                + sum(
                    args.batch * g.K * 2
                    + 4 * args.batch * sum(g.n_out)
                    + 4 * args.batch * len(g.n_out) * max(RANK_CHOICES)
                    for g in groups
                )
            )
            / bw
            * 1e3
        )
        for width in args.v_width:
            vs = {g.name: torch.empty(args.batch, len(g.n_out), width, device=dev, dtype=torch.float32) for g in groups}

            def layer(ys=ys, vs=vs, impl="triton"):
                apply = kl.lora_apply if impl == "triton" else kl.lora_apply_ref  # shrink + expand, as the engine
                plan = kl.lora_decode_plan(indptr, seg_slot, n_ad)
                for g in groups:
                    apply(
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

            y_ref = {k: v.clone() for k, v in ys.items()}
            layer(y_ref, impl="ref")
            timed = []
            for var in LAYER_VARIANTS:
                kl.DECODE_CFG.update(default)
                kl.DECODE_CFG.update(var)
                row = dict(n_adapters=n_ad, v_width=width, variant=var, bound_ms=bound_ms)
                try:
                    y_out = {k: v.clone() for k, v in ys.items()}
                    layer(y_out)
                    row["max_err_vs_ref"] = max(float((y_out[k].float() - y_ref[k].float()).abs().max()) for k in ys)
                    y_t = {k: v.clone() for k, v in ys.items()}  # timed runs accumulate into a copy
                    row["graph_ms"] = graph_ms(lambda: layer(y_t), dev)
                    row["eager_ms"] = time_ms(lambda: layer(y_t))
                    timed.append(row)
                except Exception as e:  # noqa: BLE001 - e.g. PDL unsupported: recorded, skipped
                    row["error"] = repr(e)[:300]
                rows.append(row)
                print(
                    f"n_ad={n_ad} v_width={width} {var}: graph {row.get('graph_ms')} eager {row.get('eager_ms')} "
                    f"bound {bound_ms:.4f} err {row.get('max_err_vs_ref')} {row.get('error', '')}",
                    flush=True,
                )
            best = min(timed, key=lambda r: r["graph_ms"]) if timed else None
            for name, var in (("default", {}), ("fastest", best["variant"] if best else None)):
                if var is None:
                    continue
                kl.DECODE_CFG.update(default)
                kl.DECODE_CFG.update(var)
                g = torch.cuda.CUDAGraph()
                y_t = {k: v.clone() for k, v in ys.items()}
                layer(y_t)
                with torch.cuda.graph(g):
                    layer(y_t)
                profiles.append(
                    dict(n_adapters=n_ad, v_width=width, which=name, variant=var, kernels_us=kernel_profile(g.replay))
                )
        kl.DECODE_CFG.update(default)
        del pool
        torch.cuda.empty_cache()
    kl.DECODE_CFG.update(default)
    res = dict(
        device=torch.cuda.get_device_name(),
        triton=__import__("triton").__version__,
        copy_bandwidth_gbs=bw / 1e9,
        batch=args.batch,
        default_cfg=default,
        rows=rows,
        profiles=profiles,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_layer.json").write_text(json.dumps(res, indent=1))
    lines = [
        f"# Decode LoRA, one Llama-2-7B layer, whole-layer variants: {res['device']}",
        "",
        f"bf16, batch {args.batch}, copy bandwidth {bw / 1e9:.0f} GB/s, Triton {res['triton']}; medians (ms). "
        f"Variant = overrides of DECODE_CFG {default}.",
        "",
        "| adapters | v width | variant | graph ms | graph / bound | eager ms | max err vs ref |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        gm, em = r.get("graph_ms"), r.get("eager_ms")
        g_txt = "-" if gm is None else f"{gm:.4f} | {gm / r['bound_ms']:.2f}x"
        lines.append(
            f"| {r['n_adapters']} | {r['v_width']} | {r['variant']} | {g_txt if gm else '- | -'} | "
            f"{'-' if em is None else f'{em:.4f}'} | {r.get('max_err_vs_ref', r.get('error'))} |"
        )
    for pr in profiles:
        lines += [
            "",
            f"Profile ({pr['which']}: {pr['variant']}), {pr['n_adapters']} adapters, v width {pr['v_width']}: "
            f"GPU us per graph replay, per kernel",
            "",
        ]
        lines += [f"- {k}: {v:.1f}" for k, v in pr["kernels_us"].items()]
    (args.out / "lora_layer.md").write_text("\n".join(lines) + "\n")
    print((args.out / "lora_layer.md").read_text())


if __name__ == "__main__":
    main()
