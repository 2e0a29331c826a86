"""Per-kernel view of the multi-LoRA decode step and a sweep of the decode launch parameters
(kernels/lora.py DECODE_CFG), on a GPU:

    python benchmarks/lora_tune.py --out DIR [--adapters 64 256] [--batch 256]

For each adapter count and each LoRA group of a Llama-2-7B layer (qkv, o, gate_up, down), the decode
shrink and expand kernels are timed alone (triton.testing.do_bench, L2 flushed) for every candidate
configuration, next to their own bandwidth bound (bytes that kernel must move / measured copy bandwidth).
Writes lora_tune.json (every measurement) and lora_tune.md (per kernel: default vs best configuration;
the single configuration best over all kernels and adapter counts, which is what DECODE_CFG can hold).
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
from benchmarks.kernels import Group, build_adapters, copy_bandwidth  # noqa: E402

SHRINK_SPACE = dict(shrink_r=[16, 32], shrink_k=[512, 1024], shrink_warps=[4, 8], shrink_stages=[3, 4],
                    shrink_split=[1, 2, 4, 8])
EXPAND_SPACE = dict(expand_r=[16, 32], expand_n=[128, 256, 512], expand_warps=[4, 8], expand_stages=[2, 3])


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
    args = ap.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    gen = torch.Generator().manual_seed(args.seed)
    bw = copy_bandwidth(dev, 1 << 30)
    default = dict(kl.DECODE_CFG)
    hidden, inter, page_elems, rank_choices = 4096, 11008, 2 * 16 * 32 * 128, [8, 16, 32, 64]
    rows = []
    for n_ad in args.adapters:
        groups = [Group("qkv", hidden, [hidden] * 3), Group("o", hidden, [hidden]),
                  Group("gate_up", hidden, [inter] * 2), Group("down", inter, [hidden])]
        ranks = [rank_choices[int(i)] for i in torch.randint(0, 4, (n_ad,), generator=gen)]
        pool, page_table, _ = build_adapters(groups, ranks, page_elems, dtype, dev, gen)
        slot = (torch.arange(args.batch) % n_ad)[torch.randperm(args.batch, generator=gen)]
        used = sorted(set(slot.tolist()))
        seg_slot = slot.to(torch.int32).to(dev)
        indptr = torch.arange(args.batch + 1, dtype=torch.int32, device=dev)
        scales = (torch.rand(n_ad, generator=gen) + 0.5).to(dev)
        plan = kl.lora_decode_plan(indptr, seg_slot, n_ad)
        t_plan = time_ms(lambda: kl.lora_decode_plan(indptr, seg_slot, n_ad))
        rows.append(dict(n_adapters=n_ad, kernel="plan", cfg={}, ms=t_plan, bound_ms=None))
        for g in groups:
            G, B = len(g.n_out), args.batch
            x = torch.randn(B, g.K, device=dev).to(dtype)
            y = torch.randn(B, sum(g.n_out), device=dev).to(dtype)
            v = torch.empty(B, G, max(rank_choices), device=dev, dtype=torch.float32)
            a_bytes = sum(ranks[s] * g.K * G for s in used) * 2
            b_bytes = sum(ranks[s] * sum(g.n_out) for s in used) * 2
            shrink_bound = (a_bytes + x.numel() * 2 + v.numel() * 4) / bw * 1e3
            expand_bound = (b_bytes + 2 * y.numel() * 2 + v.numel() * 4) / bw * 1e3

            def shrink():
                kl.lora_shrink(x, pool, page_table, g.a_off, g.ranks, indptr, seg_slot, v, max_seg_len=1,
                               aligned=True, plan=plan)

            def expand():
                kl.lora_expand(y, v, pool, page_table, g.b_off, g.ranks, scales, indptr, seg_slot, g.out_offsets,
                               max_seg_len=1, aligned=True, plan=plan)

            for kind, fn, space, bound in (("shrink", shrink, SHRINK_SPACE, shrink_bound),
                                           ("expand", expand, EXPAND_SPACE, expand_bound)):
                for cfg in grid(space):
                    kl.DECODE_CFG.update(default)
                    kl.DECODE_CFG.update(cfg)
                    try:
                        ms = time_ms(fn)
                    except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: recorded, skipped
                        rows.append(dict(n_adapters=n_ad, kernel=f"{g.name}.{kind}", cfg=cfg, ms=None,
                                         bound_ms=bound, error=repr(e)[:200]))
                        continue
                    rows.append(dict(n_adapters=n_ad, kernel=f"{g.name}.{kind}", cfg=cfg, ms=ms, bound_ms=bound))
                kl.DECODE_CFG.update(default)
                best = min((r for r in rows if r["n_adapters"] == n_ad and r["kernel"] == f"{g.name}.{kind}"
                            and r["ms"] is not None), key=lambda r: r["ms"])
                print(f"n_ad={n_ad} {g.name}.{kind}: bound {bound:.4f} ms, best {best['ms']:.4f} ms {best['cfg']}",
                      flush=True)
        del pool
        torch.cuda.empty_cache()
    kl.DECODE_CFG.update(default)
    res = dict(device=torch.cuda.get_device_name(), copy_bandwidth_gbs=bw / 1e9, batch=args.batch,
               default_cfg=default, rows=rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_tune.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, args.out / "lora_tune.md")
    print((args.out / "lora_tune.md").read_text())


def write_markdown(res: dict, path: Path) -> None:
    rows = [r for r in res["rows"] if r["ms"] is not None]
    default = res["default_cfg"]
    lines = [f"# Decode LoRA kernels, one at a time: {res['device']}", "",
             f"bf16, batch {res['batch']}, copy bandwidth {res['copy_bandwidth_gbs']:.0f} GB/s; medians (ms), L2 "
             "flushed; bound = that kernel's bytes / bandwidth. default = DECODE_CFG as committed.", "",
             "| adapters | kernel | bound ms | default ms | default / bound | best ms | best / bound | best config |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    keys = sorted({(r["n_adapters"], r["kernel"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for n_ad, kern in keys:
        rs = [r for r in rows if r["n_adapters"] == n_ad and r["kernel"] == kern]
        best = min(rs, key=lambda r: r["ms"])
        dflt = next((r for r in rs if all(default.get(k) == v for k, v in r["cfg"].items())), None)
        b, d = best["bound_ms"], None if dflt is None else dflt["ms"]
        f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        ratio = lambda x: "-" if x is None or b is None else f"{x / b:.2f}x"  # noqa: E731
        lines.append(f"| {n_ad} | {kern} | {f(b)} | {f(d)} | {ratio(d)} | {best['ms']:.4f} | {ratio(best['ms'])} | "
                     f"{best['cfg']} |")
    for kind in ("shrink", "expand"):   # one configuration for all kernels of a kind (what DECODE_CFG holds)
        cands = {json.dumps(r["cfg"], sort_keys=True) for r in rows if r["kernel"].endswith(kind)}
        total = {}
        for c in cands:
            rs = [r for r in rows if r["kernel"].endswith(kind) and json.dumps(r["cfg"], sort_keys=True) == c]
            if len(rs) == len({(r["n_adapters"], r["kernel"]) for r in rows if r["kernel"].endswith(kind)}):
                total[c] = sum(r["ms"] for r in rs)
        if total:
            best = min(total, key=total.get)
            lines += ["", f"Best single {kind} configuration (sum over kernels and adapter counts): {best}: "
                      f"{total[best]:.4f} ms"]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
