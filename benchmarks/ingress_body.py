"""Large request bodies against a running service: the answer, its time, how long /health waited meanwhile,
and the memory (RSS) of the ingress replicas and of Serve's HTTP proxy before, at peak and after (issue 11,
finding 3).

    serve run serve_config.yaml &        # the demo on 127.0.0.1:8000
    python benchmarks/ingress_body.py [--url http://127.0.0.1:8000] [--key sk-...] [--mb 50] [--out file.json]

The ingress replicas are found by their process title (`ray::ServeReplica:<app>:OpenAIIngress`), so run it
on the machine that runs them. Cases: a body of `--mb` MB with its Content-Length, the same sent chunked
(no Content-Length), the same with a wrong key (when the service has keys: `--key`), one prompt just under
the body limit, and a request of 255 prompts just under the context and a last one over it (all tokenized,
then 400).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import httpx
import psutil


def processes(*words: str) -> list[psutil.Process]:
    """Processes whose command line (Ray sets it to the actor's title) contains every word."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if all(w in cmd for w in words):
            out.append(p)
    return out


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_case(url: str, name: str, send, procs: list[psutil.Process], proxies: list[psutil.Process]) -> dict:
    """Runs `send()` (returns an httpx.Response) while sampling RSS and timing /health."""
    before, proxy_before = rss(procs), rss(proxies)
    peak, proxy_peak, health, done = [before], [proxy_before], [], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss(procs))
            proxy_peak[0] = max(proxy_peak[0], rss(proxies))
            time.sleep(0.02)

    def probe():
        with httpx.Client(timeout=300) as c:
            while not done.is_set():
                t = time.monotonic()
                c.get(f"{url}/health")
                health.append(time.monotonic() - t)
                time.sleep(0.05)

    threads = [threading.Thread(target=sample), threading.Thread(target=probe)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    try:
        r = send()
        status, msg = r.status_code, r.text[:160]
    except httpx.HTTPError as e:
        status, msg = None, repr(e)[:160]
    took = time.monotonic() - t0
    done.set()
    for t in threads:
        t.join()
    time.sleep(2.0)
    return {
        "case": name,
        "status": status,
        "answer": msg,
        "seconds": round(took, 3),
        "health_max_s": round(max(health), 3) if health else None,
        "health_probes": len(health),
        "rss_before_mb": round(before / 2**20),
        "rss_peak_mb": round(peak[0] / 2**20),
        "rss_after_mb": round(rss(procs) / 2**20),
        "proxy_rss_before_mb": round(proxy_before / 2**20),
        "proxy_rss_peak_mb": round(proxy_peak[0] / 2**20),
        "proxy_rss_after_mb": round(rss(proxies) / 2**20),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", default=None, help="an inference key, when the service has keys")
    ap.add_argument("--model", default="sloray-demo")
    ap.add_argument("--mb", type=float, default=50.0)
    ap.add_argument("--limit-mb", type=float, default=8.0, help="the service's max_body_bytes, in MiB")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    procs, proxies = processes("ServeReplica", "OpenAIIngress"), processes("ProxyActor")
    if not procs:
        raise SystemExit("no ingress replica process (ray::ServeReplica:*:OpenAIIngress) on this machine")
    headers = {"content-type": "application/json"} | ({"Authorization": f"Bearer {a.key}"} if a.key else {})
    big = json.dumps({"model": a.model, "prompt": "hello world, " * int(a.mb * 2**20 / 13)}).encode()
    under = json.dumps({"model": a.model, "prompt": "hello world, " * int((a.limit_mb * 2**20 - 200) / 13)}).encode()
    # tokenized one by one until the last, which is over the context (400): ~230,000 tokens of work
    long = ["hello world, this is a test. " * 60] * 255 + ["hello world, this is a test. " * 80]
    many = json.dumps({"model": a.model, "prompt": long}).encode()

    def chunks(data: bytes, size: int = 1 << 20):
        for i in range(0, len(data), size):
            yield data[i : i + size]

    client = httpx.Client(timeout=600)
    cases = [
        (f"{a.mb:g} MB body", lambda: client.post(f"{a.url}/v1/completions", content=big, headers=headers)),
        (
            f"{a.mb:g} MB body, chunked",
            lambda: client.post(f"{a.url}/v1/completions", content=chunks(big), headers=headers),
        ),
        (
            f"{len(under) / 2**20:.1f} MB body (one prompt)",
            lambda: client.post(f"{a.url}/v1/completions", content=under, headers=headers),
        ),
        (
            "255 prompts of ~900 tokens + 1 over the context",
            lambda: client.post(f"{a.url}/v1/completions", content=many, headers=headers),
        ),
    ]
    if a.key:
        wrong = headers | {"Authorization": "Bearer wrong"}
        cases.insert(
            2,
            (
                f"{a.mb:g} MB invalid body, wrong key",
                lambda: client.post(f"{a.url}/v1/completions", content=b"{not json" + big, headers=wrong),
            ),
        )
    results = [run_case(a.url, name, send, procs, proxies) for name, send in cases]
    for r in results:
        print(json.dumps(r))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"url": a.url, "ingress_processes": len(procs), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
