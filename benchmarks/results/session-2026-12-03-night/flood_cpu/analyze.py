"""Splits each flood request's time from the temporary traces of `flood_trace_instrumentation_with_inline.patch`:
/tmp/flood_trace.log (the ingress: X-Request-Start, handler start, tokenized, accepted or refused, first chunk;
epoch seconds) and /tmp/flood_client.log (the client: X-Request-Start, status, TTFT). Prints percentiles."""

import json


def read(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def stamp(t: dict) -> float:
    return float(t["xrs"].split("=")[1])


def q(v: list[float]) -> str:
    v = sorted(v)
    if not v:
        return "-"
    return f"p50 {v[len(v) // 2] * 1e3:.0f} p90 {v[int(0.9 * len(v))] * 1e3:.0f} max {v[-1] * 1e3:.0f} ms"


def main() -> None:
    tr = read("/tmp/flood_trace.log")
    cl = {c["xrs"]: c for c in read("/tmp/flood_client.log")}
    ref = [t for t in tr if "refused" in t]
    ok = [t for t in tr if "first" in t]
    print("refused", len(ref), "admitted", len(ok))
    print("refused: before ingress", q([t["in"] - stamp(t) for t in ref]),
          "| in->tokenized", q([t["tok"] - t["in"] for t in ref]))  # fmt: skip
    print("admitted: before ingress", q([t["in"] - stamp(t) for t in ok]))
    print("  in->tokenized", q([t["tok"] - t["in"] for t in ok]))
    print("  tok->accepted", q([t["acc"] - t["tok"] for t in ok]))
    print("  accepted->first chunk", q([t["first"] - t["acc"] for t in ok]))
    pairs = [(t, cl.get(t["xrs"])) for t in ok]
    print("  first chunk->client", q([stamp(t) + c["ttft"] - t["first"] for t, c in pairs if c and c["ttft"]]))
    print("  client ttft", q([c["ttft"] for t, c in pairs if c and c["ttft"]]))


if __name__ == "__main__":
    main()
