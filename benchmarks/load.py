"""Load client: replays a trace (benchmarks/trace.py's JSONL) against an OpenAI-compatible
`/v1/completions` endpoint with streaming, in real time, and reports the S-LoRA metrics.

    python benchmarks/load.py --url http://127.0.0.1:8000 --trace trace.jsonl --adapter-prefix a --out res.json

Each request sends `input_len` token ids as the prompt, `max_tokens = output_len`, `ignore_eos`, greedy,
`model = <prefix><adapter index>`. Rejected requests (HTTP 429) count as SLO misses (satisfaction 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import statistics
import time


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus's histogram_quantile over cumulative (upper bound, count) buckets (+Inf last): the q-th
    quantile by linear interpolation inside its bucket (the last finite bound if it falls in +Inf)."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (rank - below) / (count - below) if count > below else le
        lo, below = le, count
    return lo


def server_ttft(metrics_text: str, name: str = "sloray_time_to_first_token_seconds") -> dict:
    """The groups' own TTFT (arrival at a group to its first token) from a Prometheus exposition of the
    service's /metrics, summed over the groups: p50 / p90 / p99 (histogram_quantile) and the count."""
    from prometheus_client.parser import text_string_to_metric_families

    cum: dict[float, float] = {}
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name != name:
            continue
        for smp in fam.samples:
            if smp.name == name + "_bucket":
                le = float(smp.labels["le"])
                cum[le] = cum.get(le, 0.0) + smp.value
    buckets = list(cum.items())
    return {
        "count": max(cum.values(), default=0.0),
        **{f"p{int(q * 100)}_s": histogram_quantile(buckets, q) for q in (0.5, 0.9, 0.99)},
    }


def latency_figures(ttft: list[float], tpot: list[float], e2e: list[float], slo: float, n: int) -> dict:
    """The latency figures every replay reports (None where there are no values): TTFT mean and
    percentiles, mean time per output token and end to end, and over the `n` requests of the trace the SLO
    attainment (first token within `slo`) and the user satisfaction (1 - (ttft / slo)^2; requests without
    a first token count 0)."""

    def pct(q: float) -> float | None:
        return percentile(ttft, q) if ttft else None

    return {
        "ttft_mean_s": statistics.mean(ttft) if ttft else None,
        "ttft_p50_s": pct(0.5),
        "ttft_p90_s": pct(0.9),
        "ttft_p99_s": pct(0.99),
        "tpot_mean_s": statistics.mean(tpot) if tpot else None,
        "e2e_mean_s": statistics.mean(e2e) if e2e else None,
        "slo_s": slo,
        "slo_attainment": sum(t <= slo for t in ttft) / n if n else None,
        "user_satisfaction": sum(max(0.0, 1 - (t / slo) ** 2) for t in ttft) / n if n else None,
    }


async def send(
    client, url: str, r: dict, model: str, t0: float, headers: dict, rng: random.Random, vocab: int = 500
) -> dict:
    await asyncio.sleep(max(0.0, t0 + r["arrival_s"] - time.perf_counter()))
    prompt = [rng.randrange(3, vocab) for _ in range(r["input_len"])]
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": r["output_len"],
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    sent = time.perf_counter()
    headers = {**headers, "X-Request-Start": f"t={time.time():.6f}"}  # as a load balancer stamps it
    res = {"adapter": r["adapter"], "sent": sent, "status": None, "first": None, "chunks": 0}
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as resp:
            res["status"] = resp.status_code
            if resp.status_code != 200:
                await resp.aread()
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                if res["first"] is None:
                    res["first"] = now
                res["chunks"] += 1
                res["last"] = now
    except Exception as e:  # noqa: BLE001 - a failed request is a result too
        res["error"] = repr(e)
    res["end"] = time.perf_counter()
    return res


def summarize(results: list[dict], trace: list[dict], elapsed: float, slo: float) -> dict:
    ok = [r for r in results if r["status"] == 200 and r["first"] is not None and "error" not in r]
    ttft = [r["first"] - r["sent"] for r in ok]
    e2e = [r["end"] - r["sent"] for r in ok]
    # A chunk may carry several tokens (the server coalesces a stream's tokens): time per output token
    # counts the tokens (ignore_eos: output_len each), and the chunk interval is reported beside it.
    n_out = {id(r): t["output_len"] for t, r in zip(trace, results)}
    tpot = [(r["last"] - r["first"]) / (n_out[id(r)] - 1) for r in ok if r["chunks"] > 1 and n_out[id(r)] > 1]
    chunk_gap = [(r["last"] - r["first"]) / (r["chunks"] - 1) for r in ok if r["chunks"] > 1]
    out_tokens = sum(t["output_len"] for t, r in zip(trace, results) if r in ok)
    return {
        "requests": len(results),
        "ok": len(ok),
        "rejected_429": sum(r["status"] == 429 for r in results),
        "errors": sum(1 for r in results if r["status"] not in (200, 429)),
        "elapsed_s": elapsed,
        "req_s": len(ok) / elapsed,
        "out_tok_s": out_tokens / elapsed,
        "chunk_interval_mean_s": statistics.mean(chunk_gap) if chunk_gap else None,
        "chunks_per_request_mean": statistics.mean(r["chunks"] for r in ok) if ok else None,
        **latency_figures(ttft, tpot, e2e, slo, len(results)),
    }


@contextlib.contextmanager
def frozen_heap():
    """The objects alive now are left out of the garbage collector's passes until the block ends: a
    benchmark client that has imported torch and Ray holds ~350k objects, and each of its full collections
    paused every stream it was timing for 0.2-0.25 s (measured on the CPU in session-2026-12-04f), which
    counted as the server's latency."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def replay(
    url: str,
    trace: list[dict],
    prefix: str,
    slo: float,
    api_key: str | None,
    timeout: float,
    model: str | None = None,
    vocab: int = 500,
    per_request: bool = False,
    seed: int = 0,
) -> dict:
    """Replays `trace` (arrival offsets, lengths, adapters) as streamed completions, each sent at its arrival;
    returns `summarize`'s figures, and with `per_request` also `per_request`: for each request in trace order,
    when it was sent (s from the start), its status, TTFT, end-to-end time, chunks and error (None where not
    applicable), to see which requests of a flood missed and when they arrived. Runs with this process's
    heap frozen (`frozen_heap`), so that the client's own collector pauses are not timed. The prompts' token
    ids come from `seed`: a replay with the same seed sends the same prompts (which a server's prefix cache
    then finds)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=1024)
    with frozen_heap():
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(send(client, url, r, model or f"{prefix}{r['adapter']}", t0, headers, rng, vocab) for r in trace)
            )
            elapsed = time.perf_counter() - t0
    res = summarize(list(results), trace, elapsed, slo)
    if per_request:
        res["per_request"] = [
            {
                "sent_s": r["sent"] - t0,
                "status": r["status"],
                "ttft_s": r["first"] - r["sent"] if r["first"] is not None else None,
                "e2e_s": r["end"] - r["sent"] if r["status"] == 200 and "error" not in r else None,
                "chunks": r["chunks"],
                "error": r.get("error"),
            }
            for r in results
        ]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--trace", required=True)
    ap.add_argument("--adapter-prefix", default="a")
    ap.add_argument("--model", default=None, help="send every request to this model (else prefix + adapter index)")
    ap.add_argument("--vocab", type=int, default=500, help="prompt token ids are drawn from [3, vocab)")
    ap.add_argument("--slo-s", type=float, default=6.0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--per-request", action="store_true", help="also each request's send time, status and latencies")
    a = ap.parse_args()
    with open(a.trace) as f:
        trace = [json.loads(line) for line in f if line.strip()]
    res = asyncio.run(
        replay(a.url, trace, a.adapter_prefix, a.slo_s, a.api_key, a.timeout, a.model, a.vocab, a.per_request)
    )
    print(json.dumps({k: v for k, v in res.items() if k != "per_request"}, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
