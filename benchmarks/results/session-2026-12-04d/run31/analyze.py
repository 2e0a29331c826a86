"""Run 31's admission trace (admission_trace.log.gz beside this file): per flood, every sixth decision (the
prediction, the polled group state it used) with the TTFT the request then saw (from its arrival at the
ingress), and the admitted requests' TTFT beyond the calibrated model by the count of this replica's requests
still waiting for their first token ("ahead"), against what the path fit added."""

import gzip
import re
import statistics as st
from pathlib import Path

adm = {}
first = {}
with gzip.open(Path(__file__).with_name("admission_trace.log.gz"), "rt") as fh:
    lines = fh.readlines()
for ln in lines:
    m = re.search(r"OpenAIIngress (\S+) (\S+) -- (ADMIT|FIRST) (.*)", ln)
    if not m:
        continue
    rep, rid, kind, rest = m.groups()
    kv = dict(x.split("=", 1) for x in rest.split() if "=" in x)
    kv["rep"] = rep[:4]
    (adm if kind == "ADMIT" else first)[rid] = kv
rows = sorted(adm.items(), key=lambda x: float(x[1]["t"]))
# split floods by gaps
floods = []
cur = []
last = None
for rid, a in rows:
    t = float(a["t"])
    if last is not None and t - last > 3:
        floods.append(cur)
        cur = []
    cur.append((rid, a))
    last = t
floods.append(cur)
for k, fl in enumerate(floods):
    t0 = float(fl[0][1]["t"])
    ok = [(rid, a) for rid, a in fl if a["ok"] == "1"]
    print(f"flood {k + 1}: decisions {len(fl)}, admitted {len(ok)}, span {float(fl[-1][1]['t']) - t0:.2f}s")
    print(" t_rel  rep ok pred  model  exp  ahead elapsed run wait pend step   heap0 age  | actual+elapsed")
    for i, (rid, a) in enumerate(fl):
        if i % 12 and a["ok"] == "0":
            continue
        if i % 6:
            continue
        f = first.get(rid)
        act = float(f["actual"]) + float(a["elapsed"]) if f else None
        print(
            f" {float(a['t']) - t0:5.2f} {a['rep']} {a['ok']} {float(a['pred']):5.2f} {float(a['model']):5.2f} {float(a['exp']):5.2f} {a['ahead']:>4} {float(a['elapsed']):5.3f} {a['run']:>3} {a['wait']:>4} {a['pend']:>3} {a['step'][:6]:>6} {a['heap0']:>4} {float(a['age']):.2f} | {act and round(act, 2)}"
        )
    acts = [float(first[r]["actual"]) + float(a["elapsed"]) for r, a in ok if r in first]
    preds = [float(a["pred"]) for r, a in ok if r in first]
    print(
        " admitted actual p50/p90",
        round(st.median(acts), 2),
        round(sorted(acts)[int(0.9 * (len(acts) - 1))], 2),
        "pred p50",
        round(st.median(preds), 2),
    )
print("---- extra (actual - exp) by ahead bucket, admitted, per flood")
for k, fl in enumerate(floods):
    b = {}
    for rid, a in fl:
        if a["ok"] != "1" or rid not in first:
            continue
        extra = float(first[rid]["actual"]) - float(a["exp"])
        b.setdefault(int(a["ahead"]) // 10, []).append((extra, float(a["pred"]) - float(a["exp"])))
    print(
        k + 1,
        {
            f"{kk * 10}-{kk * 10 + 9}": (
                len(v),
                round(st.median(x for x, _ in v), 2),
                round(st.median(y for _, y in v), 2),
            )
            for kk, v in sorted(b.items())
        },
    )
