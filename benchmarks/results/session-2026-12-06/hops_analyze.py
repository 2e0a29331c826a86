"""Joins the hop stamps (/tmp/hops/*.jsonl, or the directory given) of the first token of each request and
prints the median / p90 of each segment of the client's TTFT, in ms."""

import glob
import json
import statistics
import sys

d = sys.argv[1] if len(sys.argv) > 1 else "/tmp/hops"
by_kind: dict[str, list[dict]] = {}
for f in glob.glob(f"{d}/*.jsonl"):
    with open(f) as fh:
        for line in fh:
            r = json.loads(line)
            by_kind.setdefault(r["k"], []).append(r)
stamp = {
    k: {r["stamp"]: r for r in by_kind.get(k, [])}
    for k in ("cli_first", "guard_in", "guard_send", "guard_body", "ing_in", "ing_tok", "ing_started", "ing_yield")
}
rid = {
    k: {r["rid"]: r for r in by_kind.get(k, [])}
    for k in ("ing_start", "grp_start", "grp_add", "grp_dispatch", "box_get", "sub_recv")
}
seg: dict[str, list[float]] = {}
order = [
    "proxy_in",
    "guard_body",
    "body_to_handler",
    "tokenize",
    "route",
    "hop_start",
    "to_engine",
    "queue",
    "step_to_first",
    "to_loop",
    "to_box",
    "hop_back",
    "ing_resp",
    "ing_first_yield",
    "yield_to_send",
    "proxy_out",
    "sum",
    "client_ttft",
    "group_ttft",
]
for st, c in stamp["cli_first"].items():
    try:
        sent = float(st[2:])
        ii, it, isd, iy = (stamp[k][st]["t"] for k in ("ing_in", "ing_tok", "ing_started", "ing_yield"))
        gi, gsd, gb = stamp["guard_in"][st]["t"], stamp["guard_send"][st]["t"], stamp["guard_body"][st]["t"]
        r = stamp["ing_started"][st]["rid"]
        ist, gs, ga, gd, bg, sr = (
            rid[k][r] for k in ("ing_start", "grp_start", "grp_add", "grp_dispatch", "box_get", "sub_recv")
        )
    except KeyError:
        continue
    off = gd["off"]
    sched, first = gd["sched"] + off, gd["first"] + off
    arrival = ga["mono_arrival"] + ga["off"]
    vals = {
        "proxy_in": gi - sent,
        "guard_body": gb - gi,
        "body_to_handler": ii - gb,
        "tokenize": it - ii,
        "route": ist["t"] - it,
        "hop_start": gs["t"] - ist["t"],
        "to_engine": ga["t"] - gs["t"],
        "queue": sched - ga["t"],
        "step_to_first": first - sched,
        "to_loop": gd["t"] - first,
        "to_box": bg["t"] - gd["t"],
        "hop_back": sr["t"] - bg["t"],
        "ing_resp": isd - sr["t"],
        "ing_first_yield": iy - isd,
        "yield_to_send": gsd - iy,
        "proxy_out": c["t"] - gsd,
        "client_ttft": c["ttft"],
        "group_ttft": first - arrival,
    }
    vals["sum"] = c["t"] - sent
    for k, v in vals.items():
        seg.setdefault(k, []).append(v * 1e3)
n = len(seg.get("sum", []))
print(f"{n} requests joined")
for k in order:
    xs = sorted(seg.get(k, []))
    if xs:
        print(
            f"{k:>16}: p50 {statistics.median(xs):7.2f}  p90 {xs[int(0.9 * (len(xs) - 1))]:7.2f}  mean {statistics.mean(xs):7.2f} ms"
        )
