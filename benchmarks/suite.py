"""The paper's evaluation (S-LoRA §7) as one command per suite, in-process on one GPU unless said otherwise.

    python -m benchmarks.suite NAME --out DIR [--quick] [--smoke] [options]

Suites (NAME):
  s-lora-table  per setting (S1, S2 and S4 of the paper's Table 1, and Llama-3-8B with LoRA on all seven linear
                layers) and n adapters: the maximum sustainable request rate (SLO attainment >= 90%, TTFT SLO
                6 s, keeping up with the trace) found by a rate search on S-LoRA's synthetic trace (alpha 1, cv 1, lengths U[8, 512)),
                and the throughput at it; the base model alone (n = 0) in the same run; and Hugging Face PEFT
                both ways (one adapter at a time with `set_adapter`, and mixed batches with `adapter_names=`)
                against our engine on a smaller workload of the same shape that PEFT can finish. --rate R: every
                n replayed once at R instead of the search; --paired-share S: the first n gets the search, every
                later n one replay at S x its maximum (does n = 2000 sustain 95% of n = 100's maximum).
  ablations     n = 1000, alpha in {1, 0.3}, one rate (near the saturated capacity): prefetch on / off,
                adapter clustering on / off, idle adapters kept in the pool / freed at finish (S-LoRA), the
                unified pool / a static KV-adapter split, admission with / without headroom pages for the
                running requests (SchedulerConfig.admission_headroom_pages, its default / 0); and the LoRA
                kernels (one Llama-2-7B layer, per step): ours vs the torch reference vs padded bmm
                (benchmarks/kernels.py's bench_lora_steps).
  admission     the paper's early-abort experiment: SLO attainment and user satisfaction vs cv in {1, 2, 4, 8}
                for FCFS, LCFS and early abort, at the maximum sustainable rate of FCFS at cv 1 (the rate
                search below; x --rate-share, 1): bursts (cv > 1) then overload it, where the policies differ
                (at 0.8x the saturated capacity every policy met the SLO at every cv).
  http          the same trace through the Ray Serve app over HTTP (benchmarks/load.py's client) and in-process,
                one after the other on the same GPU: the serving path's cost.

Every suite writes DIR/NAME.json (every figure, the GPU, the commit, the settings), DIR/NAME.md (tables) and
PNG plots (matplotlib), and prints a line per run. --quick is the reduced version that fits one ~8-minute
device command (fewer settings and n, a 3-point rate search, shorter traces); --smoke runs the same code on a
tiny random model on the CPU in seconds (the CPU test suite runs it).

How the rate search works: a burst (all requests at once) gives the saturated capacity C; then the trace is
replayed for --duration seconds at C, 1.25C, 1.56C, ... (RATE_STEP) while every rate passes (up to 8C: a
burst's tail of small batches makes C understate what a steady trace sustains; S2 on an H100 sustained 1.56C,
benchmarks/results/session-2026-12-06i/), down by the same step while every rate fails, then by bisection
once a pass and a failure bracket the maximum, keeping
the highest rate that passes: SLO attainment >= 90% and the engine keeps up with the trace (in the second
half of the arrival window it produced >= KEEP_UP (90%) of the output tokens per second the trace offers:
a rate above what the engine sustains builds a backlog that a short trace's TTFTs do not show yet, since
requests get their first token on admission while their decode slows). A replay stops early once more than
10% of the trace has certainly missed the SLO. The yardstick assumes the ramp is over by the window's second
half, which a trace shorter than its requests' decode (up to 511 tokens at the step time) breaks: each point
also reports `ramp_ceiling`, the share a server with no backlog reaches at the replay's step time (it starts
every request at its arrival, one token per step); a kept-up share near a ceiling below 90% fails for the
ramp, not for a backlog (session 06f: S1, S4 and Llama-3-8B on 10 s traces found no passing rate). Such
settings need a longer --duration.
Model weights are random (`load_format=dummy`); adapter names share a few weight sets in host memory (one per
rank), while on the GPU every name gets its own pages and its own load.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import signal
import statistics
import sys
import time
from collections import deque
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import EngineConfig, SchedulerConfig  # noqa: E402
from app.demo import write_peft_adapter  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.request import SamplingParams  # noqa: E402
from benchmarks.engine import alias_adapters, write_model_config  # noqa: E402
from benchmarks.load import latency_figures  # noqa: E402
from benchmarks.saturated import ALL_LINEAR, QKVO, commit  # noqa: E402
from benchmarks.trace import synthetic_trace  # noqa: E402
from deployments.config import GroupSettings, IngressSettings  # noqa: E402

SETTINGS = {  # name: (model shape, LoRA targets, ranks cycled over the adapters)
    "S1": ("llama2-7b", QKVO, (8,)),
    "S2": ("llama2-7b", QKVO, (64, 32, 16, 8)),
    "S4": ("llama2-13b", QKVO, (64, 32, 16)),
    "llama3-8b-all": ("llama3-8b", ALL_LINEAR, (64, 32, 16, 8)),
}
TARGET_ATTAINMENT = 0.9
KEEP_UP = 0.9  # a passing rate: late-window output tokens per second >= this share of the trace's offered rate


# ----------------------------------------------------------------------------------------------------
# engine and workload
# ----------------------------------------------------------------------------------------------------
def engine_for(a, setting: str, n_max: int) -> Engine:
    """An engine of `setting`'s shape (random weights) with adapters a0 .. a{n_max-1} (ranks cycled)."""
    shape, targets, ranks = SETTINGS[setting]
    if a.smoke:
        shape, ranks = "tiny", tuple(min(r, 8) for r in ranks)
    model_dir = write_model_config(a.work / f"{shape}-{a.layers or 'all'}", shape, a.layers)
    srcs = {}
    for r in sorted(set(ranks)):
        d = a.work / f"{shape}-{'-'.join(t[0] for t in targets)}-r{r}"
        if not (d / "adapter_config.json").exists():
            write_peft_adapter(d, model_dir, r, 2.0 * r, targets, seed=r, std=0.02)
        srcs[f"src-r{r}"] = str(d)
    cuda = a.device == "cuda"
    cfg = EngineConfig(
        model=str(model_dir),
        device=a.device,
        dtype="bfloat16" if cuda else "float32",
        load_format="dummy",
        # off: every rate point replays the same trace's prompts (S-LoRA's workload shares no prefixes)
        pool={"gpu_memory_fraction": a.gpu_memory_fraction, "page_size": 16, "enable_prefix_caching": False},
        scheduler={"max_num_seqs": a.max_num_seqs, "max_num_batched_tokens": a.max_num_batched_tokens},
        lora={"max_lora_rank": max(ranks)},
        warmup="on" if cuda else "off",
        async_scheduling=True,  # the GPU's default, also on the CPU (smoke runs take the GPU's code path)
    )
    t0 = time.perf_counter()
    engine = Engine(cfg)
    alias_adapters(engine, srcs, {f"a{i}": f"src-r{ranks[i % len(ranks)]}" for i in range(n_max)})
    engine.freeze_heap()  # as a serving group does once its startup is done (`free` unfreezes)
    print(f"  engine {setting} ({shape}, {engine.args.num_layers} layers, {engine.pool.num_pages} pages, "
          f"{n_max} adapters) ready in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    return engine


def free() -> None:
    """Returns the memory of objects dropped by the caller (an engine: set its variable to None first); what
    `Engine.freeze_heap` froze is unfrozen first, so that a dropped engine is collected."""
    gc.unfreeze()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def lengths(a) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((4, 24), (4, 24)) if a.smoke else ((8, a.max_len), (8, a.max_len))


def trace_for(a, n: int, rate: float, *, alpha: float = 1.0, cv: float = 1.0, duration: float | None = None, seed=1):
    """S-LoRA's synthetic trace (n = 0: the base model, adapter None)."""
    ins, outs = lengths(a)
    t = synthetic_trace(max(n, 1), alpha, rate, cv, duration or a.duration, seed, ins, outs)
    for r in t:
        r["adapter"] = None if n == 0 else r["adapter"]
    return t


def burst_trace(a, n: int, count: int, seed: int = 2) -> list[dict]:
    ins, outs = lengths(a)
    rng = random.Random(seed)
    return [{"arrival_s": 0.0, "adapter": rng.randrange(n) if n else None, "input_len": rng.randrange(*ins),
             "output_len": rng.randrange(*outs)} for _ in range(count)]  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# replay and metrics
# ----------------------------------------------------------------------------------------------------
def replay(engine: Engine, trace: list[dict], slo: float, *, stop_on_fail: bool = False, drain_s: float = 30.0,
           first_tokens_only: bool = False, seed: int = 0) -> dict:  # fmt: skip
    """Replays `trace` in real time in this process: each request is added at its arrival (with that arrival
    time, so early abort sees it), the engine steps back to back. Throughput: `req_s` / `out_tok_s` over the
    whole run (the tail after the last arrival included), `*_window` over the arrival window only. Stops `drain_s` after the last arrival
    (requests left count as missed) or, with `stop_on_fail`, as soon as more than 1 - TARGET_ATTAINMENT of
    the trace has certainly missed the SLO. `first_tokens_only`: ends once every request has its first token
    (or was aborted), the rest cut (TTFT, SLO attainment and the window's throughput need no more; the
    latencies of completed requests then favour short ones). Returns the metrics of `summarize` plus the engine's counters."""
    rng = random.Random(seed)
    vocab = engine.args.vocab_size
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sch, pool = engine.scheduler, engine.pool
    for name in list(pool.resident_adapters()):  # every run starts with no adapter on the GPU
        if not pool.is_pinned(name):
            pool.evict(name)
    c0 = dict(steps=engine.steps, loads=pool.loads, hits=pool.hits, evictions=pool.evictions,
              prefetches=sch.num_prefetches, load_wait_steps=sch.num_load_wait_steps,
              preemptions=sch.num_preemptions, early_aborts=sch.num_early_aborts,
              cluster_steps=sch.num_cluster_steps)  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    recs: dict[str, dict] = {}
    pending = deque(trace)
    distinct, batch, kv_pages, adapter_pages = [], [], [], []
    last_arrival = trace[-1]["arrival_s"] if trace else 0.0
    max_miss = (1 - TARGET_ATTAINMENT) * len(trace)
    stopped = None
    window_tokens = window_done = 0  # output tokens and completed requests while requests arrive
    late_tokens = 0  # output tokens in the second half of the arrival window (keeping up, after the ramp)
    late_steps, late_step_wall = 0, 0.0  # engine steps ended in that half and their engine.step() seconds
    answered = 0  # requests with a first token or finished without one
    step_wall = step_cpu = 0.0  # engine.step() seconds: wall, this thread's CPU (as a group's stats report them)
    sync()
    start = time.monotonic()
    while pending or engine.has_unfinished():
        now = time.monotonic()
        while pending and start + pending[0]["arrival_s"] <= now:
            r = pending.popleft()
            p = SamplingParams(max_tokens=r["output_len"], temperature=0.0, ignore_eos=True, detokenize=False)
            ids = [rng.randrange(3, vocab) for _ in range(r["input_len"])]
            adapter = None if r["adapter"] is None else f"a{r['adapter']}"
            rid = engine.add_request(ids, p, adapter=adapter, arrival_time=start + r["arrival_s"])
            recs[rid] = {"arrival": start + r["arrival_s"], "out": r["output_len"], "first": None, "end": None,
                         "reason": None}  # fmt: skip
        if first_tokens_only and not pending and answered == len(recs):
            for rid in list(engine.requests):
                engine.abort(rid)
            break
        if now - start > last_arrival + drain_s:
            stopped = "drain limit"
        elif stop_on_fail and engine.steps % 8 == 0:
            missed = sum(1 for x in recs.values() if (x["first"] or now) - x["arrival"] > slo)
            if missed > max_miss:
                stopped = "SLO already missed"
        if stopped:
            for rid in list(engine.requests):
                engine.abort(rid)
            break
        if not engine.has_unfinished():
            if pending:
                time.sleep(max(0.0, min(0.005, start + pending[0]["arrival_s"] - time.monotonic())))
            continue
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        outs = engine.step()
        dt = time.perf_counter() - wall0
        step_wall, step_cpu = step_wall + dt, step_cpu + time.thread_time() - cpu0
        t = time.monotonic()
        in_window = t - start <= last_arrival
        if in_window and t - start >= last_arrival / 2:
            late_steps, late_step_wall = late_steps + 1, late_step_wall + dt
        for o in outs:
            x = recs.get(o.request_id)
            if x is None:
                continue
            if in_window:
                window_tokens += len(o.delta_token_ids)
                late_tokens += len(o.delta_token_ids) if t - start >= last_arrival / 2 else 0
                window_done += o.finished and o.finish_reason == "length"
            if x["first"] is None and o.delta_token_ids:
                x["first"] = t
                answered += 1
            if o.finished:
                x["end"], x["reason"] = t, o.finish_reason
                x["scheduled"] = o.metrics.get("first_scheduled_time")
                answered += x["first"] is None
        distinct.append(engine.last_step_adapters)
        batch.append(len(sch.running))
        if engine.steps % 16 == 0:
            st = pool.stats()
            kv_pages.append(st.kv)
            adapter_pages.append(st.adapter)
    elapsed = time.monotonic() - start
    counters = {k: v - c0[k] for k, v in dict(
        steps=engine.steps, loads=pool.loads, hits=pool.hits, evictions=pool.evictions,
        prefetches=sch.num_prefetches, load_wait_steps=sch.num_load_wait_steps, preemptions=sch.num_preemptions,
        early_aborts=sch.num_early_aborts, cluster_steps=sch.num_cluster_steps).items()}  # fmt: skip
    while engine.has_unfinished():  # cut requests leave at the next step, a launched step is read then (uncounted)
        engine.step()
    sync()
    res = summarize(list(recs.values()), len(trace), elapsed, slo)
    late_step_s = late_step_wall / late_steps if late_steps else None
    # arrival to first scheduled (the engine's request_queue_time, as a group's histogram reports it)
    queue = [x["scheduled"] - x["arrival"] for x in recs.values() if x.get("scheduled") is not None]
    lookups = counters["loads"] + counters["hits"]
    res.update(
        counters,
        stopped=stopped,
        window_s=last_arrival,
        out_tok_s_window=window_tokens / last_arrival if last_arrival else None,
        req_s_window=window_done / last_arrival if last_arrival else None,
        kept_up=kept_up(late_tokens, trace),
        late_step_s=late_step_s,
        ramp_ceiling=ramp_ceiling(trace, late_step_s),
        adapter_hit_rate=counters["hits"] / lookups if lookups else None,
        loads_per_s=counters["loads"] / elapsed if elapsed else None,
        load_wait_step_share=counters["load_wait_steps"] / counters["steps"] if counters["steps"] else None,
        distinct_adapters_per_step=statistics.mean(distinct) if distinct else 0.0,
        queue_p50_s=statistics.median(queue) if queue else None,
        step_wall_mean_s=step_wall / counters["steps"] if counters["steps"] else None,
        step_cpu_mean_s=step_cpu / counters["steps"] if counters["steps"] else None,
        batch_mean=statistics.mean(batch) if batch else 0.0,
        pool_pages=pool.num_pages,
        kv_pages_peak=max(kv_pages, default=0),
        adapter_pages_peak=max(adapter_pages, default=0),
        peak_gpu_mem_gb=torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None,
    )
    return res


def summarize(recs: list[dict], n_trace: int, elapsed: float, slo: float) -> dict:
    """The paper's metrics: throughput of completed requests, TTFT percentiles, time per output token,
    end-to-end latency, SLO attainment (first token within `slo`; requests not served count as missed) and
    user satisfaction (1 - (ttft / slo)^2, 0 when missed or aborted), over the `n_trace` requests."""
    ok = [r for r in recs if r["reason"] == "length"]
    ttft = [r["first"] - r["arrival"] for r in recs if r["first"] is not None]
    tpot = [(r["end"] - r["first"]) / (r["out"] - 1) for r in ok if r["out"] > 1]
    e2e = [r["end"] - r["arrival"] for r in ok]
    return {
        "requests": n_trace,
        "completed": len(ok),
        "aborted": sum(r["reason"] == "abort" for r in recs),
        "elapsed_s": elapsed,
        "req_s": len(ok) / elapsed if elapsed else 0.0,
        "out_tok_s": sum(r["out"] for r in ok) / elapsed if elapsed else 0.0,
        **latency_figures(ttft, tpot, e2e, slo, n_trace),
    }


MAX_RATE_FACTOR = 8.0  # the rate search's ceiling, in saturated capacities
RATE_STEP = 1.25  # the rate search's factor between points until a pass and a failure bracket the maximum


def capacity(a, engine: Engine, n: int) -> dict:
    """Saturated throughput: a burst of --burst requests submitted at once."""
    return replay(engine, burst_trace(a, n, a.burst), slo=math.inf, drain_s=1e9)


def kept_up(late_tokens: int, trace: list[dict]) -> float | None:
    """Output tokens per second in the second half of the arrival window over the trace's offered output tokens
    per second (every request generates its output_len: ignore_eos). ~1 when the engine keeps up (the first
    half is the ramp: requests in flight fill up), below when a backlog grows. None for a burst or one request."""
    last = trace[-1]["arrival_s"] if trace else 0.0
    if last <= 0:
        return None
    offered = sum(r["output_len"] for r in trace) / last
    return (late_tokens / (last / 2)) / offered


def ideal_late_tokens(trace: list[dict], step_s: float) -> int:
    """Output tokens the trace's requests yield in the second half [T / 2, T] of its arrival window (T: the last
    arrival) from a server that starts each request at its arrival and gives it one token per step of `step_s`
    seconds, the first one step after the arrival."""
    last = trace[-1]["arrival_s"]
    total = 0
    for r in trace:
        a = r["arrival_s"]
        k_lo = max(1, math.ceil((last / 2 - a) / step_s))  # the request's tokens k = 1 .. L come at a + k * step_s
        k_hi = min(r["output_len"], math.floor((last - a) / step_s))
        total += max(0, k_hi - k_lo + 1)
    return total


def ramp_ceiling(trace: list[dict], step_s: float | None) -> float | None:
    """The `kept_up` share of a server without a backlog at `step_s` seconds a step (`ideal_late_tokens`): 1 when
    the trace's requests decode within the window's first half, below when the ramp reaches into the second.
    None for a burst or without a step time."""
    if not trace or not step_s:
        return None
    return kept_up(ideal_late_tokens(trace, step_s), trace)


def passes(r: dict) -> bool:
    """A rate-search point passes: not stopped, SLO attainment >= TARGET_ATTAINMENT, kept up (module docstring)."""
    attained = r["slo_attainment"] is None or r["slo_attainment"] >= TARGET_ATTAINMENT
    return not r["stopped"] and attained and (r.get("kept_up") is None or r["kept_up"] >= KEEP_UP)


def rate_search(a, engine: Engine, n: int, cap: float, log, points: list) -> dict:
    """The highest passing rate (`passes`: SLO attainment and keeping up, module docstring) in --points replays
    (appended to `points` as they run): the first at the saturated capacity `cap`, then up by RATE_STEP while
    every rate passes (a burst's capacity can understate what a steady trace sustains; at most MAX_RATE_FACTOR
    x cap) or down by it while every rate fails, then bisecting between the highest pass and the lowest
    failure. Returns the best passing run (None if none passed), every point, and `bracketed`: whether a rate
    above the best failed (if not, the best is only a lower bound on the maximum: more --points find it)."""
    lo, hi, best, rate = None, None, None, cap
    for _ in range(a.points):
        r = rate_point(a, engine, n, rate, log)
        ok = passes(r)
        points.append(r)
        if ok:
            lo, best = rate, r
        else:
            hi = rate
        if hi is None:
            rate = min(rate * RATE_STEP, MAX_RATE_FACTOR * cap)
        elif lo is None:
            rate = rate / RATE_STEP
        else:
            rate = (lo + hi) / 2
    return {"max_rate": best["rate"] if best else None, "at_max": best, "points": points,
            "bracketed": bracketed(best["rate"] if best else None, points)}  # fmt: skip


def rate_point(a, engine: Engine, n: int, rate: float, log) -> dict:
    """One replay of the trace at `rate` (the same arrivals and lengths for every n at that rate), logged."""
    r = replay(engine, trace_for(a, n, rate), a.slo_s, stop_on_fail=True, drain_s=2 * a.slo_s, first_tokens_only=True)
    r["rate"] = rate
    log(f"n={n} rate {rate:.2f}: {r['requests']} requests, attainment {pc(r['slo_attainment'])}, kept up "
        f"{pc(r['kept_up'])} (ramp ceiling {pc(r.get('ramp_ceiling'))}), {f2(r['out_tok_s_window'])} tok/s, "
        f"TTFT p50 {ms(r['ttft_p50_s'])} p99 {ms(r['ttft_p99_s'])}{' (' + r['stopped'] + ')' if r['stopped'] else ''}")  # fmt: skip
    return r


def fixed_rate(a, engine: Engine, n: int, rate: float, log, points: list) -> dict:
    """One replay at `rate` instead of the search (--rate: the same trace for every n, a paired check: does n
    keep up where another n does; --paired-share: a share of the first n's maximum). Its row's maximum is the
    rate when it passes, as a lower bound (nothing above was tried), else None."""
    r = rate_point(a, engine, n, rate, log)
    points.append(r)
    ok = passes(r)
    return {"max_rate": rate if ok else None, "at_max": r if ok else None, "points": points, "bracketed": False}


def bracketed(max_rate: float | None, points: list[dict]) -> bool:
    """Whether a rate tried above `max_rate` failed (`passes`), so that `max_rate` is the search's maximum; if
    none did, `max_rate` is only a lower bound on it (more --points find it)."""
    return max_rate is not None and any(p["rate"] > max_rate and not passes(p) for p in points)


def share_bound(row: dict, base: dict) -> str:
    """How `row`'s share of `base`'s maximum rate bounds the true share: "" when both maxima are `bracketed`,
    ">= " when only base's is (the row's maximum is a lower bound), "<= " when only the row's is, "~ " when
    neither is (a ratio of two lower bounds)."""
    if row is base:
        return ""
    r, b = bracketed(row["max_rate"], row["points"]), bracketed(base["max_rate"], base["points"])
    return "" if r and b else ">= " if b else "<= " if r else "~ "


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.0f} ms"


def ms1(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def pc(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def f2(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


class Progress:
    """One line per run: `[suite i/total elapsed] text`; after each, the results so far are saved (`save`), so
    that a run cut short (a device command's time limit) still leaves its figures."""

    def __init__(self, a, total: int):
        self.suite, self.total, self.i, self.t0, self.save = a.suite, total, 0, time.perf_counter(), a.save

    def __call__(self, text: str) -> None:
        self.i += 1
        print(f"[{self.suite} {self.i}/{self.total} {time.perf_counter() - self.t0:6.0f}s] {text}", flush=True)
        self.save()


# ----------------------------------------------------------------------------------------------------
# Hugging Face PEFT baseline
# ----------------------------------------------------------------------------------------------------
def peft_baseline(a, setting: str, work_reqs: list[dict], n_adapters: int) -> dict:
    """Hugging Face transformers + PEFT on the same GPU and model shape (random weights), the same requests
    (prompt lengths, output lengths, adapters): one adapter at a time (`set_adapter`, each adapter's requests
    in one batch, left-padded: the paper's baseline) and mixed batches (`generate(adapter_names=...)`, all
    requests in one batch). Every output has its length (min_new_tokens); a batch runs to its longest."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    shape, targets, ranks = SETTINGS[setting]
    if a.smoke:
        shape, ranks = "tiny", tuple(min(r, 8) for r in ranks)
    model_dir = write_model_config(a.work / f"{shape}-{a.layers or 'all'}", shape, a.layers)
    dev = a.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    hf_cfg = AutoConfig.from_pretrained(str(model_dir))
    with torch.device(dev):
        base = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype).eval()
    path = lambda r: str(a.work / f"{shape}-{'-'.join(t[0] for t in targets)}-r{r}")  # noqa: E731
    names = [f"a{i}" for i in range(n_adapters)]
    m = PeftModel.from_pretrained(base, path(ranks[0]), adapter_name=names[0])
    for i, nm in enumerate(names[1:], 1):
        m.load_adapter(path(ranks[i % len(ranks)]), adapter_name=nm)
    m.eval()
    rng = random.Random(3)
    prompts = [[rng.randrange(3, hf_cfg.vocab_size) for _ in range(r["input_len"])] for r in work_reqs]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def generate(idx: list[int], adapter_names=None):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), 2, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        out = max(work_reqs[i]["output_len"] for i in idx)
        kw = dict(max_new_tokens=out, min_new_tokens=out, do_sample=False, pad_token_id=2)
        if adapter_names is not None:
            kw["adapter_names"] = adapter_names
        m.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), **kw)

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    by_adapter: dict[int, list[int]] = {}
    for i, r in enumerate(work_reqs):
        by_adapter.setdefault(r["adapter"], []).append(i)

    def one_at_a_time():
        for ad, idx in sorted(by_adapter.items()):
            m.set_adapter(names[ad])
            generate(idx)

    everyone = list(range(len(work_reqs)))
    with torch.no_grad():
        generate(everyone[:2], [names[0]] * 2)  # warm-up
        res = {
            "peft_one_at_a_time_s": timed(one_at_a_time),
            "peft_mixed_s": timed(lambda: generate(everyone, [names[r["adapter"]] for r in work_reqs])),
        }
    n = len(work_reqs)
    return {**res, **{k.replace("_s", "_req_s"): n / v for k, v in list(res.items())}}


# ----------------------------------------------------------------------------------------------------
# suites
# ----------------------------------------------------------------------------------------------------
def suite_table(a, out: dict) -> None:
    settings = a.settings or (["S2"] if a.quick or a.smoke else list(SETTINGS))
    ns = a.adapters or ([0, 3] if a.smoke else [0, 100, 1000, 2000] if a.quick else [0, 1, 100, 1000, 2000])
    later = 1 if a.rate or a.paired_share else a.points  # replays of each n after the first
    log = Progress(a, len(settings) * (len(ns) + (1 if a.rate else a.points) + (len(ns) - 1) * later)
                   + (0 if a.no_peft else 2))  # fmt: skip
    out["settings"] = []
    for s in settings:
        engine = engine_for(a, s, max(ns))
        rows: list[dict] = []
        entry = {"setting": s, "shape": SETTINGS[s][0], "targets": SETTINGS[s][1], "ranks": SETTINGS[s][2],
                 "layers": engine.args.num_layers, "rows": rows}  # fmt: skip
        out["settings"].append(entry)
        for n in ns:
            cap = capacity(a, engine, n)
            row = {"adapters": n, "saturated": cap, "max_rate": None, "at_max": None, "points": []}
            rows.append(row)
            log(f"{s} n={n}: saturated {cap['req_s']:.2f} req/s ({cap['out_tok_s']:.0f} tok/s)")
            first = rows[0]
            if a.rate:
                row.update(fixed_rate(a, engine, n, a.rate, log, row["points"]))
            elif a.paired_share and first is not row and first["max_rate"]:
                row["paired"] = {"adapters": first["adapters"], "share": a.paired_share}
                row.update(fixed_rate(a, engine, n, a.paired_share * first["max_rate"], log, row["points"]))
            else:  # the first n, or a later one when the first found no passing rate to pair with
                row.update(rate_search(a, engine, n, cap["req_s"], log, row["points"]))
            base = next((r for r in rows if r["adapters"] == 0), None)
            for r in rows:
                both = base is not None and r["max_rate"] and base["max_rate"]
                r["share_of_base_max_rate"] = r["max_rate"] / base["max_rate"] if both else None
                r["share_of_base_saturated"] = r["saturated"]["req_s"] / base["saturated"]["req_s"] if base else None
        if not a.no_peft and s == settings[0]:
            reqs = burst_trace(a, a.peft_adapters, a.peft_requests, seed=5)
            hi = 24 if a.smoke else a.peft_max_len
            for r in reqs:
                r["input_len"], r["output_len"] = min(r["input_len"], hi), min(r["output_len"], hi)
            # ours: the median of three replays (a burst of ~1 s: one replay is noisy; each starts cold)
            runs = [replay(engine, reqs, slo=math.inf, drain_s=1e9)["req_s"] for _ in range(3)]
            entry["peft"] = {"requests": a.peft_requests, "adapters": a.peft_adapters, "max_len": hi,
                             "ours_req_s": statistics.median(runs), "ours_req_s_runs": runs}  # fmt: skip
            log(f"{s} PEFT workload ({a.peft_requests} requests, {a.peft_adapters} adapters, lengths < {hi}): "
                f"ours {entry['peft']['ours_req_s']:.2f} req/s (median of {', '.join(f'{r:.2f}' for r in runs)})")  # fmt: skip
            engine = None
            free()
            peft = peft_baseline(a, s, reqs, a.peft_adapters)
            free()  # the Hugging Face model is gone with peft_baseline's frame
            best = max(peft["peft_one_at_a_time_req_s"], peft["peft_mixed_req_s"])
            entry["peft"].update(peft, ours_over_best_peft=entry["peft"]["ours_req_s"] / best)
            log(f"{s} PEFT one adapter at a time {peft['peft_one_at_a_time_req_s']:.3f} req/s, mixed "
                f"{peft['peft_mixed_req_s']:.3f} req/s: ours {entry['peft']['ours_over_best_peft']:.1f}x the better")  # fmt: skip
        engine = None
        free()


DEFAULT_LORA_POLICIES = {"prefetch": True, "cluster_min_adapters": None, "keep_idle_adapters": True,
                         "static_adapter_pages": None}  # fmt: skip
DEFAULT_SCHEDULER_POLICIES = {
    "admission_headroom_pages": SchedulerConfig.model_fields["admission_headroom_pages"].default
}
ABLATIONS = {  # name: LoRAConfig policies changed from DEFAULT_LORA_POLICIES (SchedulerConfig's under "scheduler")
    "default": {},
    "no prefetch": {"prefetch": False},
    "clustering": {"cluster_min_adapters": "--cluster-min-adapters"},
    "free idle adapters": {"keep_idle_adapters": False},
    "static split": {"static_adapter_pages": "--static-adapter-share"},
    "no admission headroom": {"scheduler": {"admission_headroom_pages": 0}},
}


def suite_ablations(a, out: dict) -> None:
    n = a.adapters[0] if a.adapters else (3 if a.smoke else 1000)
    alphas = a.alphas or [1.0, 0.3]
    engine = engine_for(a, "S2", n)
    log = Progress(a, 1 + len(alphas) * len(ABLATIONS) + (0 if a.no_kernels else 1))
    cap = capacity(a, engine, n)
    rate = a.rate or (a.rate_share or 0.8) * cap["req_s"]
    static = max(1, int(a.static_adapter_share * engine.pool.num_pages))
    out.update(adapters=n, rate=rate, saturated=cap, static_adapter_pages=static,
               cluster_min_adapters=a.cluster_min_adapters, runs=[])  # fmt: skip
    log(f"n={n}: saturated {cap['req_s']:.2f} req/s; ablations at {rate:.2f} req/s")
    for alpha in alphas:
        trace = trace_for(a, n, rate, alpha=alpha)
        for name, change in ABLATIONS.items():
            flags = {"--cluster-min-adapters": a.cluster_min_adapters, "--static-adapter-share": static}
            sch = {**DEFAULT_SCHEDULER_POLICIES, **change.get("scheduler", {})}
            pol = {
                **DEFAULT_LORA_POLICIES,
                **{k: flags.get(v, v) if isinstance(v, str) else v for k, v in change.items() if k != "scheduler"},
            }
            engine.set_policies(scheduler=sch, lora=pol)
            r = replay(engine, trace, a.slo_s, drain_s=max(2 * a.slo_s, a.duration), first_tokens_only=True)
            used = {k: getattr(engine.cfg.scheduler, k) for k in sch}  # as the engine took them
            r.update(ablation=name, alpha=alpha, policies={**pol, **used})
            out["runs"].append(r)
            log(f"alpha {alpha} {name}: {f2(r['out_tok_s_window'])} tok/s, TTFT p50 {ms(r['ttft_p50_s'])} p99 "
                f"{ms(r['ttft_p99_s'])}, load-wait steps {r['load_wait_steps']}/{r['steps']}, distinct/step "
                f"{r['distinct_adapters_per_step']:.1f}, hit rate {pc(r['adapter_hit_rate'])}, loads/s {f2(r['loads_per_s'])}")  # fmt: skip
    engine = None
    free()
    if not a.no_kernels:
        out["kernels"] = kernel_ablation(a)
        log("kernels: " + "; ".join(f"{r['case']}: ours {f2(r.get('ours_ms'))} ms, torch {f2(r.get('ref_ms'))} ms, "
                                     f"bmm {f2(r.get('bmm_ms'))} ms" for r in out["kernels"]["rows"]))  # fmt: skip


def kernel_ablation(a) -> dict:
    """benchmarks/kernels.py's per-step LoRA comparison (one Llama-2-7B layer): ours (Triton) vs the torch
    reference vs padded bmm (decode steps)."""
    import os

    import benchmarks.kernels as bk

    if a.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return {"skipped": "the Triton kernels need a GPU, or TRITON_INTERPRET=1 on the CPU", "rows": []}
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    cases = bk.SMOKE_CASES[:1] if a.smoke else bk.FULL_CASES[:2] if a.quick else bk.FULL_CASES
    ns = argparse.Namespace(smoke=a.smoke, batch=256, sweep=False, seed=0, cases=cases)
    gen = torch.Generator().manual_seed(0)
    bw = bk.copy_bandwidth(dev, (1 << 30) if a.device == "cuda" else (1 << 22))
    res = bk.bench_lora_steps(ns, dev, dtype, bw, gen)
    rows = [{"case": r["case"], "ours_ms": r["graph_ms"] if r["graph_ms"] is not None else r["eager_ms"],
             "ref_ms": r["ref_ms"], "bmm_ms": r.get("bmm_graph_ms") or r.get("bmm_ms"), "bound_ms": r["bound_ms"],
             "max_abs_err": r["max_abs_err"]} for r in res["steps"]]  # fmt: skip
    return {"copy_bandwidth_gbs": bw / 1e9, "rows": rows}


ADMISSION = {  # name: SchedulerConfig policies ("slo": --slo-s)
    "FCFS": {"queue_order": "fcfs", "early_abort_ttft_slo_s": None, "early_abort": "expired"},
    "LCFS": {"queue_order": "lcfs", "early_abort_ttft_slo_s": None, "early_abort": "expired"},
    "early abort": {"queue_order": "fcfs", "early_abort_ttft_slo_s": "slo", "early_abort": "predicted"},
}


def suite_admission(a, out: dict) -> None:
    n = a.adapters[0] if a.adapters else (3 if a.smoke else 1000)
    cvs = a.cvs or [1.0, 2.0, 4.0, 8.0]
    engine = engine_for(a, "S2", n)
    log = Progress(a, 1 + (0 if a.rate else a.points) + len(cvs) * len(ADMISSION))
    cap = capacity(a, engine, n)
    search, rate = None, a.rate
    if not rate:  # the highest rate FCFS sustains at cv 1: bursts of a larger cv overload it
        engine.set_policies(scheduler=ADMISSION["FCFS"])
        search = rate_search(a, engine, n, cap["req_s"], log, [])
        rate = (a.rate_share or 1.0) * (search["max_rate"] or min(p["rate"] for p in search["points"]))
    out.update(adapters=n, rate=rate, saturated=cap, rate_search=search, runs=[])
    log(f"n={n}: saturated {cap['req_s']:.2f} req/s; admission runs at {rate:.2f} req/s")
    for cv in cvs:
        trace = trace_for(a, n, rate, cv=cv)
        for name, sch in ADMISSION.items():
            engine.set_policies(scheduler={k: (a.slo_s if v == "slo" else v) for k, v in sch.items()})
            r = replay(engine, trace, a.slo_s, drain_s=max(2 * a.slo_s, a.duration), first_tokens_only=True)
            r.update(policy=name, cv=cv)
            out["runs"].append(r)
            log(f"cv {cv} {name}: attainment {pc(r['slo_attainment'])}, satisfaction {f2(r['user_satisfaction'])}, "
                f"aborted {r['aborted']}, {f2(r['req_s_window'])} req/s (window)")  # fmt: skip
    engine = None
    free()


def suite_http(a, out: dict) -> None:
    """In-process replay first (then the engine is freed), then the Serve app over HTTP with the same engine
    settings, adapters as directories (files linked to the few weight sets), the same trace."""
    import os

    n = a.adapters[0] if a.adapters else (3 if a.smoke else 100)
    rate = a.rate or (4.0 if a.smoke else 8.0)
    variants = http_variants(a)
    log = Progress(a, 1 + len(variants))
    trace = trace_for(a, n, rate)
    engine = engine_for(a, "S2", n)
    local = replay(engine, trace, a.slo_s, drain_s=4 * a.slo_s)
    out.update(adapters=n, rate=rate, in_process=local)
    log(f"in-process: {local['req_s']:.2f} req/s, TTFT p50 {ms(local['ttft_p50_s'])} p99 {ms(local['ttft_p99_s'])}")
    model_dir, cfg = engine.cfg.model, engine.cfg
    srcs = {name: engine.adapters[name].path for name in (f"a{i}" for i in range(min(n, 8)))}
    engine = None
    free()
    adir = a.work / f"http-adapters-{n}"
    adir.mkdir(parents=True, exist_ok=True)
    for i in range(n):  # each name its own directory (files linked)
        d = adir / f"a{i}"
        if not d.exists():
            d.mkdir()
            src = Path(srcs[f"a{i % len(srcs)}"])
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                os.symlink(src / f, d / f)
    for replicas, interval in variants:
        run = serve_replay(a, trace, model_dir, cfg, adir, replicas, interval)
        both = run["http"].get("ttft_p50_s") is not None and local["ttft_p50_s"] is not None
        run.update(
            http_over_in_process_req_s=run["http"]["req_s"] / local["req_s"] if local["req_s"] else None,
            ttft_p50_delta_s=run["http"]["ttft_p50_s"] - local["ttft_p50_s"] if both else None,
        )
        out.setdefault("http_variants", []).append(run)
        log(f"HTTP ({replicas} ingress, stream interval {interval} s): {run['http']['req_s']:.2f} req/s, TTFT p50 "
            f"{ms(run['http']['ttft_p50_s'])} p99 {ms(run['http']['ttft_p99_s'])} (Serve up in "
            f"{run['serve_startup_s']:.0f} s)")  # fmt: skip
    first = out["http_variants"][0]  # the headline figures: the first variant (the defaults unless told)
    out.update({k: first[k] for k in ("http", "serve_startup_s", "http_over_in_process_req_s", "ttft_p50_delta_s")})


def http_variants(a) -> list[tuple[int, float]]:
    """(ingress replicas, stream interval) pairs: the two lists zipped, a list of one repeated."""
    reps, ivs = list(a.ingress_replicas), list(a.stream_interval_s)
    n = max(len(reps), len(ivs))
    if {len(reps), len(ivs)} - {1, n}:
        raise SystemExit("--ingress-replicas and --stream-interval-s: lists of one length, or one value")
    return list(zip(reps * n if len(reps) == 1 else reps, ivs * n if len(ivs) == 1 else ivs, strict=True))


def serve_replay(a, trace, model_dir: str, cfg, adir: Path, replicas: int, interval: float) -> dict:
    """Starts the Serve app (`replicas` ingress replicas, the group's stream_interval_s `interval`) with the
    engine settings of `cfg` and the adapter directories of `adir`, replays `trace` over HTTP, shuts it down."""
    import asyncio

    import httpx
    import ray
    from ray import serve

    from benchmarks.load import replay as http_replay
    from benchmarks.load import server_ttft
    from deployments.builder import BuildArgs, build_app

    t0 = time.perf_counter()
    if not ray.is_initialized():
        env = dict(kv.split("=", 1) for kv in a.serve_env)  # Ray's own switches, for the app's processes
        ray.init(num_cpus=4 if a.smoke else None, include_dashboard=False, runtime_env={"env_vars": env})
    serve.start(http_options={"host": "127.0.0.1", "port": a.http_port})
    build = BuildArgs(
        model=model_dir,
        adapter_dir=str(adir),
        device=a.device,
        dtype=cfg.dtype,
        max_num_seqs=cfg.scheduler.max_num_seqs,
        max_num_batched_tokens=cfg.scheduler.max_num_batched_tokens,
        gpu_memory_fraction=a.gpu_memory_fraction,
        max_lora_rank=cfg.lora.max_lora_rank,
        engine={"load_format": "dummy", "warmup": cfg.warmup, "pool": {"enable_prefix_caching": False}},
        group={"stream_interval_s": interval},
        num_ingress_replicas=replicas,
        **({"group_num_cpus": 0.5} if a.smoke else {}),
    )
    serve.run(build_app(build), name="sloray-suite", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{a.http_port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/v1/models", timeout=10).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    startup = time.perf_counter() - t0
    # the replay starts once the group has pinned its adapters' host copies (a background thread after it is
    # up): the in-process replay's adapters are in host memory from the start, so this compares like with like
    group = serve.get_deployment_handle("SLoRAGroup-0", app_name="sloray-suite")
    for _ in range(600):
        pinned_s = group.stats.remote().result(timeout_s=30)["startup"].get("adapters_pinned_s")
        if pinned_s is not None:
            break
        time.sleep(0.5)
    try:
        before = group.stats.remote().result(timeout_s=30)["engine_steps"]
        remote = asyncio.run(http_replay(url, trace, "a", a.slo_s, None, 600.0, vocab=min(500, 512)))
        after = group.stats.remote().result(timeout_s=30)["engine_steps"]
        steps = after["steps"] - before["steps"]
        remote.update(  # the group's engine.step() over the replay, as the in-process replay reports its own
            steps=steps,
            step_wall_mean_s=(after["wall_s"] - before["wall_s"]) / steps if steps else None,
            step_cpu_mean_s=(after["cpu_s"] - before["cpu_s"]) / steps if steps else None,
        )
        # the groups' own TTFT over the same requests (their histogram, as /metrics exposes it after the
        # ingress's next stats poll): what of the client's TTFT the groups account for
        time.sleep(3 * IngressSettings().stats_poll_interval_s)
        text = httpx.get(f"{url}/metrics", timeout=30).text
        remote["server_ttft"] = server_ttft(text)
        remote["server_queue"] = server_ttft(text, "sloray_request_queue_time_seconds")  # arrival to scheduled
    finally:
        serve.shutdown()
        ray.shutdown()
    return {"ingress_replicas": replicas, "stream_interval_s": interval, "http": remote, "serve_startup_s": startup,
            "adapters_pinned_s": pinned_s}  # fmt: skip


SUITES = {"s-lora-table": suite_table, "ablations": suite_ablations, "admission": suite_admission, "http": suite_http}


# ----------------------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------------------
def plt_or_none():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def report_table(res: dict, out: Path) -> list[str]:
    lines = ["Maximum sustainable throughput = the highest offered rate with SLO attainment >= 90% that the engine "
             f"kept up with (>= {KEEP_UP:.0%} of the offered output tokens per second in the second half of the "
             "trace; of the rates tried); out tok/s there: output tokens per second while requests arrived. "
             "Rates tried: kept-up share / the share a server without a backlog reaches at the run's step time "
             "(the ramp's ceiling; below 90% the trace is too short for the setting: a longer --duration). "
             ">= x: no rate tried above x failed, so x is a lower bound on the maximum (more --points find it); "
             "its shares of base are marked >= / <= where one side is such a bound, ~ where both are.", "",
             "| setting | n | saturated req/s | max sustainable rate (req/s) | out tok/s there | "
             "% of base (max rate) | % of base (saturated) | TTFT p50 / p99 there | attainment there | "
             "kept up there | rates tried (kept up / ramp ceiling) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]  # fmt: skip
    for s in res["settings"]:
        base = next((r for r in s["rows"] if r["adapters"] == 0), None)
        for r in s["rows"]:
            m = r["at_max"] or {}
            low = "" if r["max_rate"] is None or bracketed(r["max_rate"], r["points"]) else ">= "
            share = r.get("share_of_base_max_rate")
            share_txt = (share_bound(r, base) if share is not None else "") + pc(share)
            lines.append(
                f"| {s['setting']} | {r['adapters'] or 'base'} | {r['saturated']['req_s']:.2f} | "
                f"{low}{f2(r['max_rate'])} | {f2(m.get('out_tok_s_window'))} | {share_txt} | "
                f"{pc(r.get('share_of_base_saturated'))} | {ms(m.get('ttft_p50_s'))} / {ms(m.get('ttft_p99_s'))} | "
                f"{pc(m.get('slo_attainment'))} | {pc(m.get('kept_up'))} | "
                + ", ".join(
                    f"{p['rate']:.1f} ({pc(p.get('kept_up'))} / {pc(p.get('ramp_ceiling'))})"
                    for p in r.get("points", [])
                )
                + " |"
            )
    lines += ["", "Headline (maximum sustainable throughput; the issue's goals in brackets):", ""]
    for s in res["settings"]:
        by_n = {r["adapters"]: r for r in s["rows"]}

        def ratio(x: int, y: int) -> str:
            rx, ry = by_n.get(x), by_n.get(y)
            if not (rx and ry and rx["max_rate"] and ry["max_rate"]):
                return "-"
            return share_bound(rx, ry) + pc(rx["max_rate"] / ry["max_rate"])

        lines.append(f"- {s['setting']}: n = 1000 / base {ratio(1000, 0)} (>= 85%); n = 2000 / n = 100 "
                     f"{ratio(2000, 100)} (>= 95%)")  # fmt: skip
        rate = res["settings_used"].get("rate")
        if rate:  # --rate: one replay per n on the same trace instead of the search
            lines.append(f"- {s['setting']} at {rate:.2f} req/s (--rate: one replay per n, the same trace): "
                         + "; ".join(fixed_rate_result(r) for r in s["rows"]))  # fmt: skip
        for r in s["rows"]:  # --paired-share: one replay at a share of the first n's maximum
            if r.get("paired"):
                p, first = r["paired"], s["rows"][0]
                verdict = "sustains" if r["max_rate"] else "does not sustain"
                of = f"n = {first['adapters']}'s" if first["adapters"] else "the base's"
                lines.append(f"- {s['setting']}: n = {r['adapters']} {verdict} {pc(p['share'])} of {of} maximum "
                             f"({first['max_rate']:.2f} req/s) at {r['points'][0]['rate']:.2f} req/s (--paired-share): "
                             f"{fixed_rate_result(r)}")  # fmt: skip
    for s in res["settings"]:
        p = s.get("peft")
        if p and "ours_over_best_peft" in p:
            lines += ["", f"Hugging Face PEFT, {s['setting']} shape, {p['requests']} requests over {p['adapters']} "
                      f"adapters, lengths < {p['max_len']}, all submitted at once: one adapter at a time "
                      f"{p['peft_one_at_a_time_req_s']:.3f} req/s, mixed batch {p['peft_mixed_req_s']:.3f} req/s; "
                      f"ours {p['ours_req_s']:.2f} req/s (the median of {len(p.get('ours_req_s_runs', [0]))} "
                      f"replays) = **{p['ours_over_best_peft']:.1f}x** the better PEFT mode."]  # fmt: skip
    plt = plt_or_none()
    if plt:
        fig, ax = plt.subplots(figsize=(6, 4))
        plotted = False
        for s in res["settings"]:
            rows = [r for r in s["rows"] if r["adapters"] and r["max_rate"]]
            plotted = plotted or bool(rows)
            (line,) = ax.plot([r["adapters"] for r in rows], [r["max_rate"] for r in rows], "o-",
                              label=s["setting"])  # fmt: skip
            base = next((r for r in s["rows"] if r["adapters"] == 0 and r["max_rate"]), None)
            if base:
                ax.axhline(base["max_rate"], ls="--", color=line.get_color(), alpha=0.6,
                           label=f"{s['setting']} base only")  # fmt: skip
        if plotted:  # no n > 0 passed any rate: nothing on the adapters' axis to log-scale
            ax.set_xscale("log")
        save_plot(fig, ax, out / "s-lora-table_throughput.png", "adapters (n)", "max sustainable throughput (req/s)",
                  f"Throughput vs adapters, {res['gpu']}", legend_size=7)  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 4))
        for s in res["settings"]:
            for r in s["rows"]:
                pts = sorted((p["rate"], p["ttft_p99_s"]) for p in r["points"] if p["ttft_p99_s"] is not None)
                if pts:
                    ax.plot(*zip(*pts), "o-", label=f"{s['setting']} n={r['adapters'] or 'base'}")
        ax.axhline(res["slo_s"], ls=":", color="grey", label="SLO")
        ax.set_yscale("log")
        save_plot(fig, ax, out / "s-lora-table_latency.png", "offered rate (req/s)", "TTFT p99 (s)",
                  f"Latency vs rate, {res['gpu']}", legend_size=6)  # fmt: skip
    return lines


def fixed_rate_result(r: dict) -> str:
    """A --rate row's one replay, for the headline."""
    p = r["points"][0]
    return (f"n = {r['adapters'] or 'base'} {'passes' if r['max_rate'] else 'fails'} (kept up {pc(p.get('kept_up'))} "
            f"/ ramp ceiling {pc(p.get('ramp_ceiling'))}, attainment {pc(p.get('slo_attainment'))}, TTFT p99 "
            f"{ms(p.get('ttft_p99_s'))})")  # fmt: skip


def save_plot(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend_size: int) -> None:
    """Labels, title and legend of a one-axes figure, then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report_ablations(res: dict, out: Path) -> list[str]:
    lines = [f"n = {res['adapters']}, {res['rate']:.2f} req/s (saturated: {res['saturated']['req_s']:.2f}); static split: "
             f"{res['static_adapter_pages']} adapter pages; clustering from {res['cluster_min_adapters']} adapters.", "",
             "| alpha | ablation | req/s (arrival window) | out tok/s (window) | TTFT p50 | TTFT p99 | attainment | steps waiting on a load | distinct adapters "
             "/ step | hit rate | loads / s | evictions | preemptions |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in res["runs"]:
        lines.append(
            f"| {r['alpha']} | {r['ablation']} | {f2(r['req_s_window'])} | {f2(r['out_tok_s_window'])} | {ms(r['ttft_p50_s'])} | {ms(r['ttft_p99_s'])} | "
            f"{pc(r['slo_attainment'])} | {r['load_wait_steps']} / {r['steps']} | {r['distinct_adapters_per_step']:.1f} | "
            f"{pc(r['adapter_hit_rate'])} | {f2(r['loads_per_s'])} | {r['evictions']} | {r.get('preemptions', '')} |"
        )
    k = res.get("kernels")
    if k and k.get("rows"):
        lines += ["", "LoRA kernels, one Llama-2-7B layer per step (benchmarks/kernels.py):", "",
                  "| step | ours ms | torch reference ms | padded bmm ms | bound ms |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in k["rows"]:
            lines.append(
                f"| {r['case']} | {f2(r['ours_ms'])} | {f2(r['ref_ms'])} | {f2(r['bmm_ms'])} | {f2(r['bound_ms'])} |"
            )
    elif k:
        lines += ["", f"LoRA kernels: skipped ({k.get('skipped')})."]
    plt = plt_or_none()
    if plt:
        names = list(dict.fromkeys(r["ablation"] for r in res["runs"]))
        alphas = list(dict.fromkeys(r["alpha"] for r in res["runs"]))
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for j, (key, label) in enumerate(
            (("out_tok_s_window", "out tok/s (arrival window)"), ("ttft_p99_s", "TTFT p99 (s)"))
        ):
            ax = axes[j]
            w = 0.8 / len(alphas)
            for i, alpha in enumerate(alphas):
                vals = [next((r[key] or 0 for r in res["runs"] if r["ablation"] == nm and r["alpha"] == alpha), 0)
                        for nm in names]  # fmt: skip
                ax.bar([x + i * w for x in range(len(names))], vals, w, label=f"alpha {alpha}")
            ax.set_xticks([x + w * (len(alphas) - 1) / 2 for x in range(len(names))], names, rotation=20, fontsize=7)
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        fig.suptitle(f"Ablations, n = {res['adapters']}, {res['rate']:.1f} req/s, {res['gpu']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "ablations.png", dpi=120)
    return lines


def report_admission(res: dict, out: Path) -> list[str]:
    lines = [f"n = {res['adapters']}, {res['rate']:.2f} req/s (saturated: {res['saturated']['req_s']:.2f}), "
             f"SLO {res['slo_s']} s.", "", "| cv | policy | SLO attainment | user satisfaction | aborted | req/s (arrival window) | "
             "TTFT p50 | TTFT p99 |", "|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in res["runs"]:
        lines.append(
            f"| {r['cv']} | {r['policy']} | {pc(r['slo_attainment'])} | {f2(r['user_satisfaction'])} | {r['aborted']} | "
            f"{f2(r['req_s_window'])} | {ms(r['ttft_p50_s'])} | {ms(r['ttft_p99_s'])} |"
        )
    plt = plt_or_none()
    if plt:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for policy in dict.fromkeys(r["policy"] for r in res["runs"]):
            rs = [r for r in res["runs"] if r["policy"] == policy]
            axes[0].plot([r["cv"] for r in rs], [r["slo_attainment"] for r in rs], "o-", label=policy)
            axes[1].plot([r["cv"] for r in rs], [r["user_satisfaction"] for r in rs], "o-", label=policy)
        for ax, label in zip(axes, ("SLO attainment", "user satisfaction")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("cv of the arrivals")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"Admission vs burstiness, n = {res['adapters']}, {res['rate']:.1f} req/s, {res['gpu']}", fontsize=9
        )
        fig.tight_layout()
        fig.savefig(out / "admission.png", dpi=120)
    return lines


def report_http(res: dict, out: Path) -> list[str]:
    env = res.get("settings_used", {}).get("serve_env")
    lines = [f"Serve's Ray processes ran with {', '.join(env)}.", ""] if env else []
    lines += [f"n = {res['adapters']} adapter directories, {res['rate']} req/s, the same trace; Serve up in "
             f"{res['serve_startup_s']:.0f} s (the first HTTP run). Group TTFT: the groups' own (arrival at a "
             "group to its first token; their Prometheus histogram, interpolated); the rest of the client's is the "
             "serving path (proxy, ingress, the hops to the group and back). Queue: arrival at the engine to its "
             "first step (in-process: the median; HTTP: the groups' histogram). Steps: engine.step() calls over the replay; "
             "their mean wall time and the stepping thread's CPU time in them (in the group: its engine thread; a device "
             "sync's spin counts as CPU, so wall minus CPU is time the thread was not running, e.g. waiting for the GIL).", "",
             "| path | req/s | out tok/s | TTFT p50 | TTFT p99 | attainment | group TTFT p50 / p99 | queue p50 | "
             "TPOT mean | steps | step wall / CPU (mean) |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]  # fmt: skip
    variants = res.get("http_variants") or [res]
    paths = [("in-process", res["in_process"])] + [
        (f"HTTP, {v.get('ingress_replicas', 1)} ingress, interval {v.get('stream_interval_s', 0)} s", v["http"])
        for v in variants
    ]
    for name, r in paths:
        st = r.get("server_ttft") or {}
        group = f"{ms(st.get('p50_s'))} / {ms(st.get('p99_s'))}" if st else ""
        queue = (r.get("server_queue") or {}).get("p50_s", r.get("queue_p50_s"))
        lines.append(f"| {name} | {r['req_s']:.2f} | {r['out_tok_s']:.0f} | {ms(r['ttft_p50_s'])} | "
                     f"{ms(r['ttft_p99_s'])} | {pc(r['slo_attainment'])} | {group} | {ms1(queue)} | "
                     f"{ms1(r.get('tpot_mean_s'))} | "
                     f"{r.get('steps', '-')} | {ms1(r.get('step_wall_mean_s'))} / {ms1(r.get('step_cpu_mean_s'))} |")  # fmt: skip
    lines.append("")
    for v in variants:
        lines.append(f"- HTTP ({v.get('ingress_replicas', 1)} ingress, interval {v.get('stream_interval_s', 0)} s) / "
                     f"in-process throughput: {pc(v['http_over_in_process_req_s'])}; TTFT p50 difference: "
                     f"{ms(v['ttft_p50_delta_s'])}.")  # fmt: skip
    plt = plt_or_none()
    if plt:
        fig, ax = plt.subplots(figsize=(5 + len(variants), 3.5))
        for i, q in enumerate(("ttft_p50_s", "ttft_p90_s", "ttft_p99_s")):
            ax.bar([x + 0.25 * i for x in range(len(paths))], [(r.get(q) or 0) * 1e3 for _, r in paths], 0.25,
                   label=q[5:8])  # fmt: skip
        ax.set_xticks([x + 0.25 for x in range(len(paths))], [p.replace(", ", "\n") for p, _ in paths], fontsize=7)
        ax.set_ylabel("TTFT (ms)")
        ax.legend(fontsize=7)
        ax.set_title(f"Serving path, {res['gpu']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "http.png", dpi=120)
    return lines


REPORTS = {"s-lora-table": report_table, "ablations": report_ablations, "admission": report_admission,
           "http": report_http}  # fmt: skip


def write_report(name: str, res: dict, out: Path) -> None:
    head = [f"# {name}: {res['gpu']} (commit {res['commit']})", "",
            f"{'SMOKE (tiny random model, CPU): code path only, no figure to quote. ' if res['settings_used']['smoke'] else ''}"
            "Random weights; adapter names share a few weight sets in host memory (one per rank), each name has its "
            f"own pages and loads on the GPU. S-LoRA synthetic trace, lengths U[{res['lengths'][0]}, {res['lengths'][1]}), TTFT SLO "
            f"{res['slo_s']} s.", ""]  # fmt: skip
    (out / f"{name}.md").write_text("\n".join(head + REPORTS[name](res, out)) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=sorted(SUITES))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", default=Path("/tmp/sloray-suite"), type=Path, help="model configs, adapters")
    ap.add_argument("--quick", action="store_true", help="the reduced version for one ~8-minute device command")
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU (the code path, seconds)")
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None, help="s-lora-table settings")
    ap.add_argument("--adapters", nargs="+", type=int, default=None, help="n values (ablations/admission/http: n)")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than the shape (quicker, not the paper's)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of trace per run (60; --quick 15)")
    ap.add_argument("--points", type=int, default=None, help="replays per rate search (5; --quick 3)")
    ap.add_argument("--burst", type=int, default=None, help="requests of the saturated run (400; --quick 160)")
    ap.add_argument("--max-len", type=int, default=512, help="input and output lengths U[8, max_len)")
    ap.add_argument("--slo-s", type=float, default=None, help="TTFT SLO (6 s; --smoke 0.5 s)")
    ap.add_argument("--rate", type=float, default=None,
                    help="ablations/admission/http: this rate (req/s); s-lora-table: every n replayed once at this "
                    "rate on the same trace (pass or fail) instead of the rate search")  # fmt: skip
    ap.add_argument("--paired-share", type=float, default=None,
                    help="s-lora-table: the first n of --adapters gets the rate search, every later n one replay "
                    "at this share of its maximum (e.g. --adapters 100 2000 --paired-share 0.95: does n = 2000 "
                    "sustain 95%% of n = 100's maximum sustainable rate)")  # fmt: skip
    ap.add_argument("--rate-share", type=float, default=None,
                    help="else this share of the saturated capacity (ablations, http: 0.8) or of FCFS's maximum "
                    "sustainable rate (admission: 1)")  # fmt: skip
    ap.add_argument("--alphas", nargs="+", type=float, default=None, help="ablations: adapter popularity (1 0.3)")
    ap.add_argument("--cvs", nargs="+", type=float, default=None, help="admission: arrival cv (1 2 4 8)")
    ap.add_argument("--cluster-min-adapters", type=int, default=32, help="ablations: clustering threshold")
    ap.add_argument("--static-adapter-share", type=float, default=0.1, help="ablations: pool share for adapters")
    ap.add_argument("--no-peft", action="store_true", help="s-lora-table without the PEFT baseline")
    ap.add_argument("--peft-requests", type=int, default=32)
    ap.add_argument("--peft-adapters", type=int, default=8)
    ap.add_argument("--peft-max-len", type=int, default=128, help="PEFT workload lengths U[8, this)")
    ap.add_argument("--no-kernels", action="store_true", help="ablations without the kernel comparison")
    ap.add_argument("--max-num-seqs", type=int, default=None, help="256 (--smoke 8)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None, help="4096 (--smoke 64)")
    ap.add_argument("--gpu-memory-fraction", type=float, default=0.85)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--ingress-replicas", type=int, nargs="+", default=[1],
                    help="http: ingress replicas of the Serve app (several: one HTTP run each, zipped with the next)")  # fmt: skip
    ap.add_argument("--stream-interval-s", type=float, nargs="+", default=[GroupSettings().stream_interval_s],
                    help="http: the group's stream_interval_s (default: the app's; 0: one chunk per engine step)")  # fmt: skip
    ap.add_argument("--serve-env", nargs="+", default=[], metavar="NAME=VALUE",
                    help="http: environment variables of the Serve app's Ray processes (Ray's own switches, e.g. "
                    "RAY_SERVE_THROUGHPUT_OPTIMIZED=1)")  # fmt: skip
    ap.add_argument("--commit", default=None, help="the commit to name in the results (default: git's HEAD)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite NAME.md and the plots from an existing DIR/NAME.json (e.g. where matplotlib is)")  # fmt: skip
    a = ap.parse_args(argv)
    if any("=" not in kv for kv in a.serve_env):
        raise SystemExit("--serve-env takes NAME=VALUE pairs")
    if a.paired_share is not None and (a.rate is not None or a.paired_share <= 0):
        raise SystemExit("--paired-share takes a positive share and no --rate (each replaces the later n's search)")
    if a.report_only:
        write_report(a.suite, json.loads((a.out / f"{a.suite}.json").read_text()), a.out)
        print((a.out / f"{a.suite}.md").read_text())
        return
    a.device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    full = dict(duration=60.0, points=5, burst=400, slo_s=6.0, max_num_seqs=256, max_num_batched_tokens=4096)
    quick = dict(full, duration=15.0, points=3, burst=160)
    smoke = dict(duration=1.5, points=2, burst=12, slo_s=0.5, max_num_seqs=8, max_num_batched_tokens=64)
    for k, v in (smoke if a.smoke else quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.smoke:
        torch.set_num_threads(1)  # a tiny model gains nothing from threads, and a busy CPU stalls them
        a.peft_requests, a.peft_adapters = min(a.peft_requests, 6), min(a.peft_adapters, 3)
        a.cvs = a.cvs or [1.0, 4.0]
        a.alphas = a.alphas or [1.0]
        a.cluster_min_adapters = min(a.cluster_min_adapters, 2)
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    settings_used = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    res = {
        "suite": a.suite,
        "gpu": torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({platform.machine()})",
        "commit": a.commit or commit(),
        "torch": torch.__version__,
        "slo_s": a.slo_s,
        "lengths": lengths(a)[0],
        "settings_used": settings_used,
        "note": "random weights (load_format=dummy); adapter names share a few weight sets in host memory (one per "
        "rank); on the GPU every name has its own pages and its own load",
    }
    t0 = time.perf_counter()

    def save():
        res["wall_s"] = time.perf_counter() - t0
        (a.out / f"{a.suite}.json").write_text(json.dumps(res, indent=1, default=str))

    a.save = save
    # a time limit's SIGTERM (`timeout`) unwinds like an exception: what ran is saved and reported
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{a.suite}: terminated; partial results saved"))
    try:
        SUITES[a.suite](a, res)
    finally:
        save()
        try:
            write_report(a.suite, res, a.out)
            print((a.out / f"{a.suite}.md").read_text())
        except Exception as e:  # noqa: BLE001 - a partial run may lack what a table needs; the JSON has it all
            print(f"no report for the partial results: {e!r}")


if __name__ == "__main__":
    main()
