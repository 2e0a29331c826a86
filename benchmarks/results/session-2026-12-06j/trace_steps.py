"""Where a step's GPU time goes, from a Chrome trace of `benchmarks/saturated.py --profile --profile-trace DIR`.

    python benchmarks/results/session-2026-12-06j/trace_steps.py TRACE.json.gz [TRACE2.json.gz ...]

Steps are cut after each device-to-host copy (the engine makes one per step, the sampled tokens); a step is "decode" when it runs no
prefill attention kernel. Per kind of step, per step (medians over the steps of that kind, in microseconds):
wall (first kernel start to last kernel end), GPU busy (union over streams), the main stream's kernel time, its
idle gaps split by the kernels on both sides, time two streams ran at once, and each kernel kind's total and
exposed time (the part no other stream's kernel overlapped); then the decode steps' LoRA and GEMM launches by
kernel and grid (q/k/v's and o's launches apart), median time each.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from collections import defaultdict

KINDS = (
    ("lora_shrink", ("lora_shrink",)),
    ("lora_expand", ("lora_expand",)),
    ("lora_plan", ("_plan_",)),
    ("memset", ("memset",)),
    ("memcpy", ("memcpy",)),
    ("attn_decode", ("paged_attn_decode", "paged_attn_reduce")),
    ("attn_prefill", ("paged_attn_prefill",)),
    ("kv_append", ("kv_append",)),
    ("rope", ("rope",)),
    ("norm", ("rms_norm",)),
    ("act", ("silu", "gelu")),
    ("gemm", ("gemm", "sm90", "cutlass", "nvjet", "ampere", "matmul", "splitk")),
)


def kind(name: str) -> str:
    n = name.lower()
    return next((k for k, pats in KINDS if any(p in n for p in pats)), "other")


def load(path: str) -> list[dict]:
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        ev = json.load(f)["traceEvents"]
    out = []
    for e in ev:
        if e.get("ph") != "X" or e.get("cat") not in ("kernel", "gpu_memset", "gpu_memcpy"):
            continue
        a = e.get("args", {})
        out.append({"name": e["name"], "k": kind(e["name"]), "ts": float(e["ts"]), "end": float(e["ts"]) + float(e["dur"]),
                    "stream": a.get("stream", e.get("tid")), "grid": tuple(a.get("grid") or ())})  # fmt: skip
    return sorted(out, key=lambda e: e["ts"])


def union(intervals: list[tuple[float, float]]) -> float:
    total, cur_lo, cur_hi = 0.0, None, None
    for lo, hi in sorted(intervals):
        if cur_hi is None or lo > cur_hi:
            if cur_hi is not None:
                total += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    return total + (cur_hi - cur_lo if cur_hi is not None else 0.0)


def exposed(e: dict, others: list[dict]) -> float:
    """e's time not overlapped by any kernel of another stream."""
    cover = [(max(e["ts"], o["ts"]), min(e["end"], o["end"])) for o in others
             if o["stream"] != e["stream"] and o["ts"] < e["end"] and o["end"] > e["ts"]]  # fmt: skip
    return (e["end"] - e["ts"]) - union(cover)


def steps(ev: list[dict]) -> list[list[dict]]:
    """Each step ends with its one device-to-host copy (the sampled tokens)."""
    cuts = [i + 1 for i, e in enumerate(ev) if e["k"] == "memcpy" and "dtoh" in e["name"].lower()]
    return [ev[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


def analyse(step: list[dict], main: int) -> dict:
    wall = max(e["end"] for e in step) - step[0]["ts"]
    busy = union([(e["ts"], e["end"]) for e in step])
    per_stream = defaultdict(list)
    for e in step:
        per_stream[e["stream"]].append((e["ts"], e["end"]))
    both = sum(union(v) for v in per_stream.values()) - busy
    m = [e for e in step if e["stream"] == main]
    gaps: dict[str, float] = defaultdict(float)
    for a, b in zip(m, m[1:]):
        g = b["ts"] - a["end"]
        if g > 0:
            gaps[f"{a['k']}->{b['k']}"] += g
    tot: dict[str, float] = defaultdict(float)
    exp: dict[str, float] = defaultdict(float)
    cnt: dict[str, int] = defaultdict(int)
    for e in step:
        tot[e["k"]] += e["end"] - e["ts"]
        cnt[e["k"]] += 1
    side = [e for e in step if e["stream"] != main]
    for e in step:
        exp[e["k"]] += exposed(e, side if e["stream"] == main else m)
    return {"wall": wall, "busy": busy, "main_kernels": sum(e["end"] - e["ts"] for e in m),
            "main_gaps": sum(gaps.values()), "two_streams": both, "gaps": gaps, "tot": tot, "exp": exp, "cnt": cnt}  # fmt: skip


def med(rows: list[dict], key: str, sub: str | None = None) -> float:
    vals = [r[key].get(sub, 0.0) if sub else r[key] for r in rows]
    return statistics.median(vals) if vals else 0.0


def report(path: str) -> None:
    ev = load(path)
    count: dict[int, int] = defaultdict(int)
    for e in ev:
        count[e["stream"]] += 1
    main = max(count, key=count.get)  # a CUDA graph's parallel branches show as streams of their own
    rows = {"decode": [], "with_prefill": []}
    for s in steps(ev):
        r = analyse(s, main)
        rows["with_prefill" if r["cnt"].get("attn_prefill") else "decode"].append(r)
    launches: dict[tuple, list[float]] = defaultdict(list)
    for st in steps(ev):
        if not any(e["k"] == "attn_prefill" for e in st):
            for e in st:
                if e["k"] in ("lora_shrink", "lora_expand", "gemm"):
                    launches[(e["k"], e["name"][:40], e["grid"])].append(e["end"] - e["ts"])
    print(f"# {path}: {len(count)} streams (main {main}: {count[main]} of {len(ev)} kernels)")
    for kd, rs in rows.items():
        if not rs:
            continue
        print(f"## {kd}: {len(rs)} steps, medians per step (us)")
        w, b, mk, mg, two = (med(rs, k) for k in ("wall", "busy", "main_kernels", "main_gaps", "two_streams"))
        print(f"  wall {w:.0f}  busy {b:.0f}  main kernels {mk:.0f}  main gaps {mg:.0f}  two streams at once {two:.0f}")
        ks = sorted({k for r in rs for k in r["tot"]}, key=lambda k: -med(rs, "tot", k))
        print("  kind: total / exposed (launches)")
        for k in ks:
            print(f"    {k:14s} {med(rs, 'tot', k):9.1f} / {med(rs, 'exp', k):9.1f} ({med(rs, 'cnt', k):.0f})")
        gs = sorted({g for r in rs for g in r["gaps"]}, key=lambda g: -med(rs, "gaps", g))[:10]
        print("  main-stream gaps by neighbours: " + ", ".join(f"{g} {med(rs, 'gaps', g):.0f}" for g in gs))
    print("## decode steps, per launch (kind, kernel, grid): median us (launches)")
    for (k, name, grid), d in sorted(launches.items(), key=lambda kv: -statistics.median(kv[1]) * len(kv[1])):
        print(f"    {k:12s} {name:40s} {str(list(grid)):16s} {statistics.median(d):8.1f} ({len(d)})")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        report(p)
