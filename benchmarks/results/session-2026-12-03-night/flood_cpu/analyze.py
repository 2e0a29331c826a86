import json, sys
tr=[json.loads(l) for l in open("/tmp/flood_trace.log")]
cl={json.loads(l)["xrs"]:json.loads(l) for l in open("/tmp/flood_client.log")}
def x(t): return float(t["xrs"].split("=")[1])
ref=[t for t in tr if "refused" in t]; ok=[t for t in tr if "first" in t]
def q(v):
    v=sorted(v)
    return f"p50 {v[len(v)//2]*1e3:.0f} p90 {v[int(.9*len(v))]*1e3:.0f} max {v[-1]*1e3:.0f} ms" if v else "-"
print("refused", len(ref), "admitted", len(ok))
print("refused: before ingress", q([t["in"]-x(t) for t in ref]), "| in->tokenized", q([t["tok"]-t["in"] for t in ref]))
print("admitted: before ingress", q([t["in"]-x(t) for t in ok]))
print("  in->tokenized", q([t["tok"]-t["in"] for t in ok]))
print("  tok->accepted", q([t["acc"]-t["tok"] for t in ok]))
print("  accepted->first chunk", q([t["first"]-t["acc"] for t in ok]))
m=[(t, cl.get(t["xrs"])) for t in ok]
print("  first chunk->client", q([x(t)+c["ttft"]-t["first"] for t,c in m if c and c["ttft"]]))
print("  client ttft", q([c["ttft"] for t,c in m if c and c["ttft"]]))
