"""Saturated end-to-end throughput on S-LoRA's S2 workload: the engine under a load it cannot keep up with,
with the base model alone and with n adapters, all in one run on one GPU (offline, no Ray).

    python benchmarks/saturated.py --out DIR [--settings llama2-7b-qkvo llama3-8b-all] [--adapters 0 1 100 1000]
    python benchmarks/saturated.py --smoke --out DIR          # tiny model on the CPU (the code path only)
    python benchmarks/saturated.py --out DIR --async-scheduling off on   # each run in both step loops

Per setting (a model shape and the LoRA targets; random bf16 weights made on the GPU, `load_format=dummy`):
`--requests` requests are submitted at once, input and output lengths U[8, 512) (ignore EOS), adapters drawn
uniformly over n (n = 0: the base model alone), ranks {64, 32, 16, 8} (S2), max_num_seqs 256, 4096 tokens
per step, CUDA graphs on. Adapter names share four weight sets in host memory (one per rank); on the GPU every
name gets its own pages and its own load. Reported per run: requests and output tokens per second, steps,
mean batch, steps by kind (decode only / with prefill), adapter loads, the share of the base run's
throughput, and the run's floor: every decode step reads the weights once (at least sum(output) /
max_num_seqs steps), every decoded token reads its sequence's cached K/V once, both at the copy bandwidth
measured in the run, and prefill costs its FLOPs at the measured bf16 matmul rate; the run's adapter copies
at the host-to-device rate measured from pinned memory (`load_copy_s`, apart from the floor: they may overlap
steps); and a per-step trace (`steps_trace`: kind, tokens, batch, distinct adapters, loads, wall and GPU ms,
KV pages held).
--profile adds a torch.profiler breakdown of GPU time by kernel kind over a window of steps of each run.
--async-scheduling off on: every run (and the online one) twice on the same engine, with the synchronous step loop and with
asynchronous scheduling (EngineConfig.async_scheduling), so that the before / after is one command.
--system-prompt L puts a system prompt of L tokens of its own (fixed per adapter, and for the base model)
before every request's input, as tenants' applications do; --prefix-caching off on runs each run with prefix
caching off and on (PoolConfig.enable_prefix_caching; the cache emptied before each run, so a run's hits are
its own and its untimed round's: the system prompts once seen). Without them, S2 as the paper (no shared
prefixes, caching off). The floor counts every input token's prefill FLOPs, cached or not.
Writes saturated.json, saturated.md and saturated.png (throughput vs adapters) into --out.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import platform
import pstats
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import EngineConfig  # noqa: E402
from app.demo import write_peft_adapter  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.request import SamplingParams  # noqa: E402
from benchmarks.engine import alias_adapters, write_model_config  # noqa: E402
from benchmarks.load import percentile  # noqa: E402

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = QKVO + ["gate_proj", "up_proj", "down_proj"]
SETTINGS = {
    "llama2-7b-qkvo": ("llama2-7b", QKVO),
    "llama3-8b-all": ("llama3-8b", ALL_LINEAR),
    "llama2-13b-qkvo": ("llama2-13b", QKVO),
    "tiny-all": ("tiny", ALL_LINEAR),
}
RANKS = (64, 32, 16, 8)


def commit() -> str:
    """git's HEAD, with "-dirty" when the tree differs from it (a copy sent to another machine may carry a
    stale .git: pass --commit there); "unknown" without git."""
    try:
        root = Path(__file__).resolve().parents[1]
        return (
            subprocess.run(
                ["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=root, capture_output=True, text=True
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


def measure_device(device: str) -> tuple[float, float, float]:
    """(copy bandwidth in bytes/s counting read + written, bf16 matmul FLOP/s, host-to-device copy bytes/s
    from pinned memory, as adapter loads copy), measured now."""
    if device != "cuda":
        return 20e9, 50e9, 10e9
    from benchmarks.engine import cuda_median_s

    n = 1 << 29
    src = torch.empty(n // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    bw = 2 * n / cuda_median_s(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    rate = 2 * 8192**3 / cuda_median_s(lambda: a @ a)
    host = torch.empty(1 << 28, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    h2d = (1 << 28) / cuda_median_s(lambda: dev.copy_(host, non_blocking=True))
    src = dst = a = host = dev = None  # frees the tensors (the closures above hold the same cells)
    torch.cuda.empty_cache()
    return bw, rate, h2d


def workload(
    n_requests: int, n_adapters: int, seed: int, lo: int = 8, hi: int = 512
) -> list[tuple[int, int, int | None]]:
    """(input length, output length, adapter index or None) per request. The lengths depend on the seed alone,
    so that every n (the base model's n = 0 included) runs the same requests and the ratios measure LoRA's
    cost only; the adapters are drawn from a stream of their own."""
    rng, pick = random.Random(seed), random.Random(f"adapters-{seed}")
    lengths = [(rng.randrange(lo, hi), rng.randrange(lo, hi)) for _ in range(n_requests)]
    return [(i, o, pick.randrange(n_adapters) if n_adapters else None) for i, o in lengths]


def floor_s(args_model, reqs, n_params: float, weight_bytes: float, max_num_seqs: int, bw: float, rate: float) -> dict:
    """The run's floor (module docstring): weights once per decode step, K/V once per decoded token, prefill
    FLOPs at the matmul rate."""
    a = args_model
    kv_bytes_per_token = 2 * a.num_layers * a.num_kv_heads * a.head_dim * 2  # K and V, bf16, all layers
    out_total = sum(o for _, o, _ in reqs)
    steps = out_total / max_num_seqs
    weights = steps * weight_bytes / bw
    kv = sum(sum(range(i, i + o)) for i, o, _ in reqs) * kv_bytes_per_token / bw
    prefill = sum(2 * n_params * i for i, _, _ in reqs) / rate
    return {"weights_s": weights, "kv_s": kv, "prefill_s": prefill, "floor_s": weights + kv + prefill}


PROFILE_STEPS = (40, 60)  # the window of steps --profile looks at (prefill chunks and decodes mixed)


def host_top(host, n: int = 15) -> list[dict]:
    """The host functions with the most own time in the profiled window (cProfile)."""
    st = pstats.Stats(host)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [{"own_ms": round(v[2] * 1e3, 2), "cum_ms": round(v[3] * 1e3, 2), "calls": v[1],
             "fn": f"{Path(k[0]).name}:{k[1]}({k[2]})"} for k, v in rows]  # fmt: skip


class GcTimer:
    """Wall time the garbage collector takes while this is in gc.callbacks, and collections by generation."""

    def __init__(self):
        self.ms = 0.0
        self.by_gen = [0, 0, 0]
        self._t = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.ms += (time.perf_counter() - self._t) * 1e3
            self.by_gen[info["generation"]] += 1


def gpu_by_kind(events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]]) -> dict[str, float]:
    """Seconds between each (kind, start, end) pair of recorded events, summed per kind (after a sync)."""
    out: dict[str, float] = {}
    for kind, a, b in events:
        out[kind] = out.get(kind, 0.0) + a.elapsed_time(b) / 1e3
    return {k: round(v, 3) for k, v in out.items()}


def system_prompt(adapter: int | None, length: int, vocab: int) -> list[int]:
    """The fixed system prompt of an adapter's requests (None: the base model's), `length` tokens."""
    rng = random.Random(f"system-{adapter}")
    return [rng.randrange(3, vocab) for _ in range(length)]


def allocator_counts() -> dict[str, int]:
    """The CUDA caching allocator's counters that mean host waits: retries after a failed cudaMalloc (each
    frees cached blocks, which synchronizes the device), cudaMalloc and cudaFree calls. Empty off CUDA."""
    if not torch.cuda.is_available():
        return {}
    st = torch.cuda.memory_stats()
    return {k: int(st.get(k, 0)) for k in ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_ooms")}


def run_once(
    engine: Engine, reqs, vocab: int, seed: int, profile: bool, window=PROFILE_STEPS, host_profile: bool = False,
    system_len: int = 0, trace: Path | None = None,
) -> dict:  # fmt: skip
    """One burst of `reqs`, stepped to the end. `step_s_by_kind`: the wall time of the `engine.step()` calls
    that launched a decode-only step / a step with a prefill chunk (with asynchronous scheduling a call also
    waits for the step before it, so a slow step shows in the next call's kind too). `gpu_s_by_kind` (CUDA): per
    kind, the GPU time between events recorded on the compute stream before and after each call, i.e. from
    the moment the device reached the call's first launch to its last (the work of the step it launched, and
    the device idle inside it); their sum against `elapsed_s` is the device idle between steps. `profile`: GPU
    kernels and (with `host_profile`, cProfile, which slows the host) host functions over the steps in `window`
    (the profiler's processing of its trace is left out of `elapsed_s`; its cost inside the window is not).
    `system_len`: each request's input follows its adapter's system prompt of that many tokens. `trace`: with
    `profile`, the window's kernels also go there as a gzipped Chrome trace (per-kernel start and end on each
    stream, for the critical path of a step)."""
    rng = random.Random(seed)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for name in list(engine.pool.resident_adapters()):  # every run starts with no adapter on the GPU
        engine.pool.evict(name)
    loads0, steps0 = engine.pool.loads, engine.steps
    sch = engine.scheduler
    prefetch0, wait0, hits0 = sch.num_prefetches, sch.num_load_wait_steps, sch.prefix_hit_tokens
    alloc0 = allocator_counts()
    systems = {a: system_prompt(a, system_len, vocab) for a in {a for _, _, a in reqs}} if system_len else {}
    sync()
    t0 = time.perf_counter()
    for i, o, a in reqs:
        p = SamplingParams(max_tokens=o, temperature=0.0, ignore_eos=True, detokenize=False)
        prompt = systems.get(a, []) + [rng.randrange(3, vocab) for _ in range(i)]
        engine.add_request(prompt, p, adapter=None if a is None else f"a{a}")
    batch, kinds, prof, distinct = [], {"decode": 0, "with_prefill": 0}, None, []
    tokens, loads, kv = [], [], []  # per step, for "steps_trace" below
    step_s: list[tuple[float, int, str]] = []
    events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
    cuda = torch.cuda.is_available()
    n = 0
    profiler_s = 0.0
    gc_timer = GcTimer()
    gc.callbacks.append(gc_timer)
    while engine.has_unfinished():
        running = len(engine.scheduler.running) + min(len(engine.scheduler.waiting), 1)
        if profile and n == window[0] and torch.cuda.is_available():
            sync()
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            prof.__enter__()
            host = cProfile.Profile() if host_profile else None
            if host is not None:
                host.enable()
            tw = time.perf_counter()
        ts = time.perf_counter()
        loads_before = engine.pool.loads
        if cuda:
            ev0 = torch.cuda.Event(enable_timing=True)
            ev0.record()
        engine.step()
        if cuda:
            ev1 = torch.cuda.Event(enable_timing=True)
            ev1.record()
        ts = time.perf_counter() - ts
        n += 1
        if prof is not None and n == window[1]:
            sync()
            if host is not None:
                host.disable()
            wall = time.perf_counter() - tw
            tp = time.perf_counter()
            prof.__exit__(None, None, None)
            if trace is not None:
                prof.export_chrome_trace(str(trace))  # gzipped by torch for a .gz path
            prof = kernel_breakdown(prof, wall)
            prof["host_top"] = host_top(host) if host is not None else None
            profiler_s += time.perf_counter() - tp  # the trace's processing, left out of elapsed_s
        batch.append(len(engine.scheduler.running))
        distinct.append(engine.last_step_adapters)
        kind = "with_prefill" if engine.last_step_tokens > running else "decode"
        kinds[kind] += 1
        step_s.append((ts, n, kind))
        tokens.append(engine.last_step_tokens)
        loads.append(engine.pool.loads - loads_before)
        kv.append(engine.pool.num_kv_pages)
        if cuda:
            events.append((kind, ev0, ev1))
    sync()
    elapsed = time.perf_counter() - t0 - profiler_s
    gc.callbacks.remove(gc_timer)
    if isinstance(prof, dict):  # what the profiled steps held (the window's batch and distinct adapters)
        lo, hi = window
        prof["window"] = {
            "mean_batch": round(statistics.mean(batch[lo:hi]), 1),
            "mean_distinct_adapters": round(statistics.mean(distinct[lo:hi]), 1),
            "steps_by_kind": {k: sum(1 for _, i, kd in step_s[lo:hi] if kd == k) for k in kinds},
        }
    out_tokens = sum(o for _, o, _ in reqs)
    return {
        "elapsed_s": elapsed,
        "req_s": len(reqs) / elapsed,
        "out_tok_s": out_tokens / elapsed,
        "steps": engine.steps - steps0,
        "mean_batch": sum(batch) / max(1, len(batch)),
        "mean_distinct_adapters": sum(distinct) / max(1, len(distinct)),
        "steps_by_kind": kinds,
        "step_s_by_kind": {k: round(sum(t for t, _, kd in step_s if kd == k), 3) for k in kinds},
        "gpu_s_by_kind": gpu_by_kind(events) if cuda else None,
        "adapter_loads": engine.pool.loads - loads0,
        "preemptions": engine.scheduler.num_preemptions,
        "prefetches": sch.num_prefetches - prefetch0,
        "load_wait_steps": sch.num_load_wait_steps - wait0,  # steps that copied an adapter they admitted
        "prefix_hit_tokens": sch.prefix_hit_tokens - hits0,
        # the longest engine.step() calls: (1-based step, kind, ms), a stall shows here
        "slowest_steps": [(i, k, round(t * 1e3, 1)) for t, i, k in sorted(step_s, reverse=True)[:6]],
        "gc_ms": round(gc_timer.ms, 1),
        "gc_collections_by_generation": gc_timer.by_gen,
        # the CUDA caching allocator over the run: retries (a failed cudaMalloc frees the cache, a device sync),
        # cudaMalloc / cudaFree calls (None off CUDA)
        "allocator": {k: v - alloc0[k] for k, v in allocator_counts().items()} if alloc0 else None,
        "profile": prof if isinstance(prof, dict) else None,
        # per step: kind ("d" decode only, "w" with a prefill chunk), tokens, running requests after it,
        # distinct adapters, adapter loads it issued (admitted and prefetched), wall ms of its engine.step()
        # call, GPU ms (as gpu_s_by_kind; None off CUDA), KV pages held by requests after it (what the decode
        # attention of the next steps reads)
        "steps_trace": [
            [kind[0], tok, b, d, ld, round(t * 1e3, 2), round(e[1].elapsed_time(e[2]), 2) if e else None, k]
            for (t, _, kind), tok, b, d, ld, e, k in zip(
                step_s, tokens, batch, distinct, loads, events or [None] * n, kv
            )  # fmt: skip
        ],
    }


def run_online(engine: Engine, n_adapters: int, rate: float, duration: float, vocab: int, seed: int) -> dict:
    """S-LoRA's synthetic trace in real time (Poisson arrivals at `rate`, adapters uniform over n, lengths
    U[8, 512)): time to first token (from arrival to the step that produced it) and throughput."""
    from benchmarks.trace import synthetic_trace

    trace = synthetic_trace(n_adapters, 1.0, rate, 1.0, duration, seed)
    rng = random.Random(seed)
    for name in list(engine.pool.resident_adapters()):
        engine.pool.evict(name)
    arrival, first, pending = {}, {}, list(trace)
    start = time.perf_counter()
    while pending or engine.has_unfinished():
        now = time.perf_counter() - start
        while pending and pending[0]["arrival_s"] <= now:
            r = pending.pop(0)
            p = SamplingParams(max_tokens=r["output_len"], temperature=0.0, ignore_eos=True, detokenize=False)
            ids = [rng.randrange(3, vocab) for _ in range(r["input_len"])]
            rid = engine.add_request(ids, p, adapter=f"a{r['adapter']}" if n_adapters else None)
            arrival[rid] = start + r["arrival_s"]
        if not engine.has_unfinished():
            time.sleep(min(0.002, max(0.0, pending[0]["arrival_s"] - now)) if pending else 0)
            continue
        outs = engine.step()
        t = time.perf_counter()
        for o in outs:
            first.setdefault(o.request_id, t)
    elapsed = time.perf_counter() - start
    ttft = [first[r] - arrival[r] for r in arrival]
    return {"adapters": n_adapters, "rate": rate, "duration_s": duration, "requests": len(trace),
            "req_s": len(trace) / elapsed, "ttft_p50_s": percentile(ttft, 0.5), "ttft_p90_s": percentile(ttft, 0.9),
            "ttft_p99_s": percentile(ttft, 0.99),
            "slo_attainment_6s": sum(t <= 6.0 for t in ttft) / len(ttft)}  # fmt: skip


def kernel_breakdown(prof, wall_s: float) -> dict:
    """GPU time (ms) over the profiled steps by kernel kind (from the kernels' names), the 12 costliest
    kernels, and the GPU's busy share of the window's wall time."""
    kinds = {
        "lora": ("lora_", "_plan_"),
        "attention_prefill": ("paged_attn_prefill",),
        "attention_decode": ("paged_attn_decode", "paged_attn_reduce"),
        "kv_append": ("kv_append",),
        "norm_rope_act": ("rms_norm", "silu", "rope", "elementwise", "vectorized", "reduce", "mul", "cat"),
        "gemm": ("gemm", "sm90", "cutlass", "nvjet", "ampere", "matmul", "splitk"),
    }
    by_kind: dict[str, float] = {}
    top = []
    for e in prof.key_averages():
        if e.device_type != torch.autograd.DeviceType.CUDA or e.device_time_total <= 0:
            continue
        name = e.key.lower()
        kind = next((k for k, pats in kinds.items() if any(p in name for p in pats)), "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + e.device_time_total / 1e3
        top.append((e.device_time_total / 1e3, e.count, e.key[:80]))
    top.sort(reverse=True)
    gpu = sum(by_kind.values())
    return {
        "kinds_ms": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": [{"ms": round(ms, 3), "calls": n, "kernel": k} for ms, n, k in top[:12]],
        "gpu_ms": round(gpu, 3),
        "wall_ms": round(wall_s * 1e3, 3),
        "gpu_busy_share": round(gpu / (wall_s * 1e3), 3) if wall_s else None,
    }


def bench_setting(name: str, args, work: Path, bw: float, rate: float, h2d: float) -> dict:
    shape, targets = SETTINGS[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = write_model_config(work / shape, shape, args.layers)
    srcs = {}
    for r in RANKS:
        d = work / f"{name}-r{r}"
        if not (d / "adapter_config.json").exists():
            write_peft_adapter(d, model_dir, r, 2.0 * r, targets, seed=r, std=0.02)
        srcs[f"src-r{r}"] = str(d)
    cfg = EngineConfig(
        model=str(model_dir),
        device=device,
        dtype="bfloat16" if device == "cuda" else "float32",
        load_format="dummy",
        # off: the same requests replay for every variant (S-LoRA's workload shares no prefixes)
        pool={"gpu_memory_fraction": 0.85, "page_size": 16, "enable_prefix_caching": False, **args.pool},
        scheduler={
            "max_num_seqs": args.max_num_seqs,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            **args.scheduler,
        },
        lora={**args.lora, "kernels": args.lora_kernels},
        **({"warmup": "on"} if device == "cuda" else {}),
    )
    t0 = time.perf_counter()
    engine = Engine(cfg)
    setup_s = time.perf_counter() - t0
    n_max = max(args.adapters)
    alias_adapters(engine, srcs, {f"a{i}": f"src-r{RANKS[i % 4]}" for i in range(n_max)})
    engine.freeze_heap()  # as a serving group does once its startup is done
    a = engine.args
    n_params = sum(w.numel() for k, w in engine.executor.model.w.items() if k not in ("embed",))
    weight_bytes = n_params * 2
    page_bytes = a.num_layers * engine.executor.page_elems * 2  # one pool page, all layers (bf16)
    # bytes of one adapter's weights (all layers, the mean rank of S2), as the pool holds them
    adapter_bytes = (
        sum(engine.adapters[f"a{i}"].num_pages for i in range(min(4, n_max))) / max(1, min(4, n_max)) * page_bytes
        if n_max
        else 0.0
    )
    runs = []
    modes = [m == "on" for m in args.async_scheduling] if args.async_scheduling else [engine.async_scheduling]
    caching = [m == "on" for m in args.prefix_caching] if args.prefix_caching else [False]
    for n, mode, pc in [(n, m, c) for n in args.adapters for m in modes for c in caching]:
        engine.async_scheduling = mode  # the engine is idle between runs
        engine.reset_prefix_cache()
        engine.pool.prefix_caching = pc
        reqs = workload(args.requests, n, args.seed, hi=args.max_len)
        # an untimed round first (every decode bucket): compiles, graphs, allocator, this n's adapters (and,
        # with prefix caching, the system prompts of this round's adapters)
        if (mode, pc) == (modes[0], caching[0]) or pc:
            run_once(engine, workload(min(args.max_num_seqs, args.requests), n, args.seed + 1, hi=args.max_len), a.vocab_size, 1,
                     False, system_len=args.system_prompt)  # fmt: skip
        row = {"adapters": n, "async_scheduling": mode, "prefix_caching": pc,
               **run_once(engine, reqs, a.vocab_size, args.seed, args.profile, tuple(args.profile_steps),
                            args.profile_host, system_len=args.system_prompt,
                            trace=args.profile_trace / f"trace_{name}_n{n}.json.gz" if args.profile_trace else None)}  # fmt: skip
        fl = floor_s(a, reqs, n_params, weight_bytes, args.max_num_seqs, bw, rate)
        # with adapters, each decode step also reads the LoRA weights of its distinct adapters once
        lora_bytes = row["mean_distinct_adapters"] * adapter_bytes
        fl["lora_s"] = fl["weights_s"] * lora_bytes / weight_bytes
        fl["floor_s"] += fl["lora_s"]
        row.update(fl, floor_share=fl["floor_s"] / row["elapsed_s"])
        # the run's adapter copies at the measured host-to-device rate (not in the floor: they may overlap steps)
        row["load_copy_s"] = row["adapter_loads"] * adapter_bytes / h2d
        runs.append(row)
        print(f"{name} n={n} async={mode} prefix_caching={pc} (hits {row['prefix_hit_tokens']} tokens): {row['req_s']:.2f} req/s, {row['out_tok_s']:.0f} tok/s, {row['steps']} steps, "
              f"mean batch {row['mean_batch']:.0f}, loads {row['adapter_loads']} (prefetched {row['prefetches']}, "
              f"{row['load_wait_steps']} steps waited), slowest steps {row['slowest_steps']}, gc {row['gc_ms']:.0f} ms "
              f"{row['gc_collections_by_generation']}, step s by kind {row['step_s_by_kind']} "
              f"(GPU {row['gpu_s_by_kind']}), "
              f"{row['floor_share']:.0%} of the floor ({fl['floor_s']:.1f} s) {row['profile'] or ''}", flush=True)  # fmt: skip
    online = []
    for mode in modes if args.online else []:
        engine.async_scheduling = mode
        n_on = args.online_adapters if args.online_adapters is not None else n_max
        o = run_online(engine, n_on, args.online, args.online_duration, a.vocab_size, args.seed)
        online.append({"async_scheduling": mode, **o})
        print(f"{name} online {args.online} req/s, n={n_on}, async={mode}: {o}", flush=True)
    for r in runs:
        base = next((b for b in runs if b["adapters"] == 0 and b["async_scheduling"] == r["async_scheduling"]
                     and b["prefix_caching"] == r["prefix_caching"]), None)  # fmt: skip
        r["share_of_base"] = None if base is None else r["req_s"] / base["req_s"]
    admission_headroom = engine.scheduler.cfg.admission_headroom_pages
    pool = {"pages": engine.pool.num_pages, "page_size": engine.pool.page_size}  # benchmarks/schedule_sim.py's --pages
    if device == "cuda":  # how much of the GPU the pool left unused (PoolConfig.gpu_memory_fraction's room)
        free, total = torch.cuda.mem_get_info()
        pool.update(gib=engine.pool.num_pages * page_bytes / 2**30, peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
                    free_gib_after=free / 2**30, total_gib=total / 2**30)  # fmt: skip
    del engine
    gc.unfreeze()  # what freeze_heap froze (this engine included) can be collected again: the next setting's
    gc.collect()  # engine gets the memory (without this, a second setting ran with a starved pool)
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"setting": name, "shape": shape, "targets": targets, "layers": a.num_layers, "setup_s": setup_s,
            "params_b": n_params / 1e9, "admission_headroom_pages": admission_headroom, "pool": pool,
            "runs": runs, "online": online}  # fmt: skip


def write_report(res: dict, out: Path) -> None:
    lines = [
        f"# Saturated S2 throughput: {res['gpu']} (commit {res['commit']})",
        *(["", f"LoRA kernel overrides: `{json.dumps(res['lora_kernels'])}`"] if res.get("lora_kernels") else []),
        *(["", f"LoRA overrides: `{json.dumps(res['lora'])}`"] if res.get("lora") else []),
        *(["", f"Scheduler overrides: `{json.dumps(res['scheduler'])}`"] if res.get("scheduler") else []),
        *(["", f"Pool overrides: `{json.dumps(res['pool'])}`"] if res.get("pool") else []),
        "",
        f"{res['requests']} requests submitted at once, input and output U[8, {res['max_len']}), "
        f"ranks {{64, 32, 16, 8}}, adapters uniform over n; max_num_seqs {res['max_num_seqs']}, "
        f"{res['max_num_batched_tokens']} tokens per step; "
        f"random bf16 weights. Copy bandwidth {res['copy_bandwidth_gbs']:.0f} GB/s, bf16 matmul "
        f"{res['matmul_tflops']:.0f} TFLOP/s (both measured in this run). Adapter names share four weight sets in "
        "host memory; each name has its own pages and loads on the GPU.",
        "",
        *(
            [f"Every input follows its adapter's system prompt of {res['system_prompt']} tokens.", ""]
            if res.get("system_prompt")
            else []
        ),  # fmt: skip
        "| setting | adapters | async | prefix caching (hit tokens) | req/s | out tok/s | % of base | steps (decode / "
        "with prefill) | mean batch (distinct adapters) | adapter loads | floor s | % of floor |",
        "|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for s in res["settings"]:
        for r in s["runs"]:
            share = "-" if r["share_of_base"] is None else f"{r['share_of_base']:.0%}"
            k = r["steps_by_kind"]
            lines.append(
                f"| {s['setting']} | {r['adapters']} | {'on' if r.get('async_scheduling') else 'off'} | "
                f"{'on' if r.get('prefix_caching') else 'off'} ({r.get('prefix_hit_tokens', 0)}) | "
                f"{r['req_s']:.2f} | {r['out_tok_s']:.0f} | {share} | "
                f"{r['steps']} ({k['decode']} / {k['with_prefill']}) | {r['mean_batch']:.0f} "
                f"({r.get('mean_distinct_adapters', 0):.0f}) | {r['adapter_loads']} | "
                f"{r['floor_s']:.1f} | {r['floor_share']:.0%} |"
            )
    for s in res["settings"]:
        for o in s.get("online") or []:
            lines += ["", f"Online, {s['setting']}, async scheduling {'on' if o['async_scheduling'] else 'off'}: Poisson {o['rate']} req/s for {o['duration_s']:.0f} s, {o['adapters']} "
                      f"adapters: {o['requests']} requests, TTFT p50 {o['ttft_p50_s'] * 1e3:.0f} ms, p90 "
                      f"{o['ttft_p90_s'] * 1e3:.0f} ms, p99 {o['ttft_p99_s'] * 1e3:.0f} ms, SLO (6 s) "
                      f"{o['slo_attainment_6s']:.0%}."]  # fmt: skip
    profiles = [(s["setting"], r, r["profile"]) for s in res["settings"] for r in s["runs"] if r["profile"]]
    if profiles:
        lines += [
            "",
            f"## Steps {res['profile_steps'][0]}-{res['profile_steps'][1]} of each run: GPU time by kernel kind (ms)",
            "",
        ]
        for setting, r, p in profiles:
            lines.append(
                f"- {setting}, n={r['adapters']}, async {'on' if r.get('async_scheduling') else 'off'}: wall {p['wall_ms']:.0f} ms, GPU busy {p['gpu_busy_share']:.0%}; "
                + ", ".join(f"{k} {v:.1f}" for k, v in p["kinds_ms"].items())
                + (
                    f"; the window: mean batch {w['mean_batch']}, {w['mean_distinct_adapters']} distinct adapters, "
                    f"steps {w['steps_by_kind']}"
                    if (w := p.get("window"))
                    else ""
                )
            )
    (out / "saturated.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    log_x = False
    for s in res["settings"]:
        for mode, pc in sorted({(r.get("async_scheduling"), r.get("prefix_caching")) for r in s["runs"]}, key=str):
            runs = [r for r in s["runs"] if (r.get("async_scheduling"), r.get("prefix_caching")) == (mode, pc)]
            label = s["setting"] + ("" if mode is None else f" async {'on' if mode else 'off'}")
            label += " prefix caching" if pc else ""
            xs = [max(r["adapters"], 0.5) for r in runs if r["adapters"] > 0]
            ys = [r["req_s"] for r in runs if r["adapters"] > 0]
            log_x = log_x or bool(xs)
            (line,) = ax.plot(xs, ys, "o-", label=label)
            base = next((r["req_s"] for r in runs if r["adapters"] == 0), None)
            if base:
                ax.axhline(base, ls="--", color=line.get_color(), alpha=0.6, label=f"{label} base only")
    if log_x:  # a run of the base model alone has no adapter counts to put on a log scale
        ax.set_xscale("log")
    ax.set_xlabel("adapters (n)")
    ax.set_ylabel("requests / s")
    ax.set_title(f"Saturated S2 throughput, {res['gpu']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "saturated.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", default="/tmp/sloray-saturated", type=Path)
    ap.add_argument("--settings", nargs="+", default=["llama2-7b-qkvo", "llama3-8b-all"], choices=sorted(SETTINGS))
    ap.add_argument("--adapters", nargs="+", type=int, default=[0, 1, 100, 1000, 2000])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--max-len", type=int, default=512, help="input and output lengths are U[8, max_len)")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than the shape (quick runs)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--profile-host",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="--profile also runs cProfile on the host: the host functions with the most own time, but it slows the "
        "host enough to starve the GPU (S2 n = 1000 on an H100: 58%% GPU busy with it, 101%% without, "
        "benchmarks/results/session-2026-12-06i/), so the busy share then says nothing about the engine",
    )
    ap.add_argument("--profile-steps", nargs=2, type=int, default=list(PROFILE_STEPS), help="the profiled steps")
    ap.add_argument(
        "--profile-trace",
        type=Path,
        default=None,
        help="with --profile, a folder for each run's gzipped Chrome trace of the profiled steps (trace_SETTING_nN.json.gz)",
    )
    ap.add_argument(
        "--online",
        type=float,
        default=None,
        help="also an online run at this rate (req/s) with the largest n of --adapters",
    )
    ap.add_argument("--online-duration", type=float, default=60.0)
    ap.add_argument(
        "--online-adapters", type=int, default=None, help="adapters of the online run (<= max of --adapters)"
    )
    ap.add_argument(
        "--async-scheduling",
        nargs="+",
        choices=["off", "on"],
        default=None,
        help="step loops to run each run with, in this order (default: the engine's default, on for CUDA)",
    )
    ap.add_argument(
        "--lora-kernels", default="{}", type=json.loads,
        help='EngineConfig.lora.kernels overrides as JSON, e.g. \'{"decode": {"expand_n": 128}}\' (an A/B of a '
        "launch configuration: one process each)",
    )  # fmt: skip
    ap.add_argument(
        "--lora", default="{}", type=json.loads,
        help='EngineConfig.lora overrides other than its kernels as JSON, e.g. \'{"overlap_shrink": true}\'',
    )  # fmt: skip
    ap.add_argument(
        "--scheduler", default="{}", type=json.loads,
        help='EngineConfig.scheduler overrides as JSON, e.g. \'{"admission_headroom_pages": 0}\' (an A/B of a '
        "scheduling policy: one process each)",
    )  # fmt: skip
    ap.add_argument(
        "--pool", default="{}", type=json.loads,
        help='EngineConfig.pool overrides as JSON, e.g. \'{"gpu_memory_fraction": 0.9}\' (the pool\'s size: one process '
        "each)",
    )  # fmt: skip
    ap.add_argument(
        "--system-prompt", type=int, default=0, help="tokens of a fixed system prompt per adapter before each input"
    )
    ap.add_argument(
        "--prefix-caching", nargs="+", choices=["off", "on"], default=None,
        help="prefix caching modes to run each run with, in this order (default: off, as S-LoRA)",
    )  # fmt: skip
    ap.add_argument("--commit", default=None, help="the commit to name in the results (default: git's HEAD)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny model, few requests (the CPU)")
    args = ap.parse_args()
    if args.smoke:
        args.settings, args.adapters, args.requests, args.max_len = ["tiny-all"], [0, 1, 3], 12, 24
        args.max_num_seqs, args.max_num_batched_tokens = 8, 64
        args.online, args.online_duration = args.online and 4.0, 3.0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile_trace:
        args.profile_trace.mkdir(parents=True, exist_ok=True)
    bw, rate, h2d = measure_device("cuda" if torch.cuda.is_available() else "cpu")
    res = dict(
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})",
        commit=args.commit or commit(), torch=torch.__version__, requests=args.requests, max_len=args.max_len, seed=args.seed,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        copy_bandwidth_gbs=bw / 1e9, matmul_tflops=rate / 1e12, h2d_gbs=h2d / 1e9, profile_steps=args.profile_steps,
        lora_kernels=args.lora_kernels, lora=args.lora, scheduler=args.scheduler, pool=args.pool, system_prompt=args.system_prompt, settings=[],
    )  # fmt: skip
    for name in args.settings:
        res["settings"].append(bench_setting(name, args, args.work, bw, rate, h2d))
        (args.out / "saturated.json").write_text(json.dumps(res, indent=1))
    write_report(res, args.out)
    print((args.out / "saturated.md").read_text())


if __name__ == "__main__":
    main()
