"""Issue 11's flood, one command: a Serve config's application under bursts of streamed completions, with
admission control's SLO set, one server per variant of the config, every variant in one run.

    python -m benchmarks.flood --config serve_config.yaml --slo-s 1.0 --floods 6 --out DIR \\
        [--variant NAME KEY=VALUE ...] [--variant ...]

Each variant starts the config's first application in this process (Ray, Serve on `--port`) with `args` changed by
its KEY=VALUE pairs (dotted keys reach nested fields, e.g. `engine.scheduler.max_num_batched_tokens=512`; values
are read as YAML, as in the config file: quote on / off, `engine.warmup="off"`, else they read as booleans;
`env.NAME=VALUE` sets an environment variable of the variant's Ray processes instead, for Ray's own switches such
as env.RAY_SERVE_THROUGHPUT_OPTIMIZED=1) and
`admission_ttft_slo_s` set to `--slo-s`, waits until it answers, then sends `--floods` floods, `--gap-s` apart:
`--requests` streamed completions arriving evenly over `--burst-s` (prompt and output lengths uniform in
`--input-range` / `--output-range`, EOS ignored) to the base model, through benchmarks/load.py's client with
per-request records. It then shuts the server down and waits until the port no longer answers before the next
variant. Without --variant: one, the config as it is.

Writes DIR/flood.json (per variant and flood: load.py's figures of the admitted requests and each request's
record) and DIR/flood.md: per flood admitted, refused (429), errors, the admitted requests' TTFT p50 / p90 and
TPOT, and the share of the whole flood answered within the SLO; per variant the medians. The goal of issue 11:
the admitted requests' TTFT p90 within the SLO.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import statistics
import time
from pathlib import Path

import httpx
import yaml

from benchmarks.load import replay
from benchmarks.saturated import commit
from benchmarks.suite import f2, ms, pc


def set_dotted(args: dict, key: str, value) -> None:
    """args[k1][k2]...[kn] = value for key "k1.k2...kn", making the dicts on the way."""
    *path, last = key.split(".")
    d = args
    for k in path:
        d = d.setdefault(k, {})
    d[last] = value


def variant_args(base: dict, pairs: list[str], slo_s: float) -> tuple[dict, dict[str, str]]:
    """The app's args with the variant's KEY=VALUE pairs applied, and the environment of its Ray processes:
    pairs `env.NAME=VALUE` (Ray's own switches, e.g. env.RAY_SERVE_THROUGHPUT_OPTIMIZED=1) go there."""
    args, env = copy.deepcopy(base), {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--variant: {pair!r} is not KEY=VALUE")
        if key.startswith("env."):
            env[key[4:]] = value
        else:
            set_dotted(args, key, yaml.safe_load(value))
    args["admission_ttft_slo_s"] = slo_s
    return args, env


def flood_trace(a) -> list[dict]:
    """`--requests` arrivals evenly over `--burst-s`, prompt and output lengths uniform in their ranges."""
    rng = random.Random(a.seed)
    return [{"arrival_s": a.burst_s * i / a.requests, "adapter": None, "input_len": rng.randrange(*a.input_range),
             "output_len": rng.randrange(*a.output_range)} for i in range(a.requests)]  # fmt: skip


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"flood: {what} within {timeout_s:.0f} s")
        time.sleep(0.5)


def answers(url: str) -> bool:
    """The server is up (its /health answers 200: every group ready)."""
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def run_variant(a, name: str, args: dict, trace: list[dict], env: dict[str, str] | None = None) -> dict:
    import ray
    from ray import serve

    from deployments.builder import build_app

    url = f"http://127.0.0.1:{a.port}"
    if answers(url):
        raise SystemExit(f"flood: something already answers on port {a.port}")
    t0 = time.monotonic()
    # the workers import deployments/ from this checkout, as `serve run` from the repository root would
    repo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    env_vars = {**(env or {}), "PYTHONPATH": path}
    ray.init(num_cpus=a.num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": a.port})
        serve.run(build_app(copy.deepcopy(args)), name="flood", route_prefix="/", blocking=False)
        wait_until(lambda: answers(url), a.start_timeout_s, f"variant {name} did not answer")
        startup_s = time.monotonic() - t0
        auth = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
        models = httpx.get(f"{url}/v1/models", headers=auth, timeout=30).json()["data"]
        model = next(m["id"] for m in models if m.get("parent") is None)
        time.sleep(2.0)
        floods = []
        for k in range(a.floods):
            if k:
                time.sleep(a.gap_s)
            # prompts of their own per flood (seed k): a repeat of the last one's would find them in the prefix cache
            r = asyncio.run(replay(url, trace, "", a.slo_s, a.api_key, a.timeout_s, model, a.vocab, per_request=True,
                                   seed=k))  # fmt: skip
            floods.append(r)
            print(f"[flood] {name} {k + 1}/{a.floods}: admitted {r['ok']}, 429 {r['rejected_429']}, errors "
                  f"{r['errors']}, admitted TTFT p90 {f2(r['ttft_p90_s'])} s, within the SLO "
                  f"{pc(r['slo_attainment'])}", flush=True)  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()
    wait_until(lambda: not answers(url), 60, f"variant {name}'s server still answers after its shutdown")
    return {"name": name, "args": args, "env": env or {}, "startup_s": startup_s, "floods": floods}


def median_of(floods: list[dict], key: str) -> float | None:
    xs = [f[key] for f in floods if f.get(key) is not None]
    return statistics.median(xs) if xs else None


def report(res: dict) -> str:
    slo = res["slo_s"]
    lines = [
        f"# Flood: {res['requests']} streamed completions over {res['burst_s']} s, admission SLO {slo} s",
        "",
        f"{res['gpu']}, commit {res['commit']}, config `{res['config']}`. Admitted: answered 200 (their TTFT "
        "figures); within SLO: share of the whole flood answered with a first token within the SLO (load.py's "
        "SLO attainment).",
        "",
        "| variant | flood | admitted | 429 | errors | admitted TTFT p50 (s) | p90 (s) | TPOT | within SLO |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    envs = [
        f"{v['name']}: " + ", ".join(f"{k}={x}" for k, x in v["env"].items()) for v in res["variants"] if v.get("env")
    ]
    if envs:  # Ray's own switches that a variant set
        lines[4:4] = [f"Environment of the Ray processes: {'; '.join(envs)}.", ""]
    for v in res["variants"]:
        for k, f in enumerate(v["floods"]):
            lines.append(
                f"| {v['name']} | {k + 1} | {f['ok']} | {f['rejected_429']} | {f['errors']} | {f2(f['ttft_p50_s'])} "
                f"| {f2(f['ttft_p90_s'])} | {ms(f['tpot_mean_s'])} | {pc(f['slo_attainment'])} |"
            )
    lines += ["", "| variant | median admitted | median p90 (s) | floods with p90 <= SLO | median within SLO |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for v in res["variants"]:
        fl = v["floods"]
        met = sum(1 for f in fl if f["ttft_p90_s"] is not None and f["ttft_p90_s"] <= slo)
        lines.append(
            f"| {v['name']} | {median_of(fl, 'ok')} | {f2(median_of(fl, 'ttft_p90_s'))} | {met} / {len(fl)} "
            f"| {pc(median_of(fl, 'slo_attainment'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("serve_config.yaml"), help="a Serve config (its first app)")
    ap.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), default=None,
                    help="a name and the args it changes; repeat for each variant (default: the config as it is)")  # fmt: skip
    ap.add_argument("--slo-s", type=float, default=1.0, help="admission_ttft_slo_s of every variant")
    ap.add_argument("--floods", type=int, default=6)
    ap.add_argument("--requests", type=int, default=295, help="requests per flood")
    ap.add_argument("--burst-s", type=float, default=1.0, help="a flood's requests arrive evenly over this")
    ap.add_argument("--gap-s", type=float, default=6.0, help="pause between floods")
    ap.add_argument("--input-range", type=int, nargs=2, default=[8, 64])
    ap.add_argument("--output-range", type=int, nargs=2, default=[16, 64])
    ap.add_argument("--vocab", type=int, default=400, help="prompt token ids are drawn from [3, vocab)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None, help="when the config sets api_keys")
    ap.add_argument("--num-cpus", type=int, default=None, help="ray.init's CPUs (default: the machine's)")
    ap.add_argument("--start-timeout-s", type=float, default=600.0)
    ap.add_argument("--timeout-s", type=float, default=120.0, help="one request's HTTP timeout")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    base = yaml.safe_load(a.config.read_text())["applications"][0].get("args", {})
    variants = [(v[0], v[1:]) for v in a.variant] if a.variant else [("config", [])]
    trace = flood_trace(a)
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    a.out.mkdir(parents=True, exist_ok=True)
    res = {"config": str(a.config), "commit": a.commit or commit(), "gpu": gpu, "slo_s": a.slo_s,
           "requests": a.requests, "burst_s": a.burst_s, "floods": a.floods, "variants": []}  # fmt: skip
    for name, pairs in variants:
        args, env = variant_args(base, pairs, a.slo_s)
        res["variants"].append(run_variant(a, name, args, trace, env))
        (a.out / "flood.json").write_text(json.dumps(res, indent=1))
    md = report(res)
    (a.out / "flood.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
