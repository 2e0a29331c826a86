"""Tensor parallelism on 2 GPUs, with its baselines in the same run (run on a 2-GPU machine with Ray):

    python benchmarks/tp.py --out DIR [--layers 32] [--serve-adapters 200] [--smoke]

(a) engine, Llama-2-7B shape, random bf16 weights, 32 requests (prompt 128, output 64) over 32 distinct
    rank-16 q/k/v/o adapters: TP=1 in-process vs TP=2 over NCCL (Ray rank actors): tok/s, greedy token
    agreement, and the per-step control overhead of the TP group (driver broadcast + reply, measured).
(b) NCCL all-reduce times of the sizes one decode step sends: LoRA's x@A (batch x G x r, one per LoRA
    group per layer) against the base model's (batch x hidden, two per layer): LoRA's share of the
    communication time, next to S-LoRA's cost model.
(c) the Ray Serve app with tensor_parallel_size=2 serving hundreds of adapters over HTTP, driven by the
    load client on a synthetic trace (60 s at 2 req/s by default); the result keeps the groups' full
    time-to-first-token and inter-token-latency histograms next to the client's figures.
`--smoke` runs a tiny model on the CPU (gloo) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import EngineConfig  # noqa: E402
from app.demo import write_peft_adapter  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.lora.adapter import load_peft_adapter  # noqa: E402
from app.request import SamplingParams  # noqa: E402
from benchmarks.engine import write_random_llama  # noqa: E402


def fixed_batch(engine: Engine, prompts, adapters, out_len: int, sync) -> tuple[float, list[list[int]]]:
    params = SamplingParams(max_tokens=out_len, temperature=0, ignore_eos=True, detokenize=False)
    sync()
    t = time.perf_counter()
    ids = [engine.add_request(p, params, adapter=a) for p, a in zip(prompts, adapters)]
    done = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                done[o.request_id] = o.token_ids
    sync()
    return time.perf_counter() - t, [done[i] for i in ids]


def register(engine: Engine, names: dict[str, str]) -> None:
    """Registers every name (validation + packing + object store per name); files read once per path."""
    cache = {}
    for name, path in names.items():
        w = cache.get(path) or load_peft_adapter(name, path, engine.args, engine.cfg.lora.max_lora_rank)
        cache[path] = w
        n = engine.executor.add_adapter(name, w)
        from app.engine import AdapterInfo

        engine.adapters[name] = AdapterInfo(name, path, w.rank, w.scale, n)


def bench_engine(args, model_dir: Path, adapter_paths: list[str]) -> dict:
    from deployments.tp import TPExecutor

    dev = "cpu" if args.smoke else "cuda"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    dtype = "float32" if args.smoke else "bfloat16"
    cfg = EngineConfig(
        model=str(model_dir),
        device=dev,
        dtype=dtype,
        pool={"num_pages": args.pool_pages, "enable_prefix_caching": False},
        scheduler={"max_num_seqs": 256, "max_num_batched_tokens": 8192},
    )
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(args.prompt_len)] for _ in range(args.requests)]
    names = {f"r16-{i}": adapter_paths[i % len(adapter_paths)] for i in range(32)}
    adapters = [f"r16-{i % 32}" for i in range(args.requests)]
    res = {}
    outs = {}
    for tp in (1, args.tp):
        engine = Engine(cfg) if tp == 1 else Engine(cfg, executor=TPExecutor(cfg, tp))
        t0 = time.perf_counter()
        register(engine, names)
        res[f"tp{tp}_register_32_adapters_s"] = time.perf_counter() - t0
        fixed_batch(engine, prompts, adapters, 4, sync)  # warm-up (Triton compiles, graphs)
        if tp > 1:
            engine.executor.control.__init__()  # count the measured run only
        t, toks = fixed_batch(engine, prompts, adapters, args.output_len, sync)
        outs[tp] = toks
        res[f"tp{tp}_s"] = t
        res[f"tp{tp}_tok_s"] = args.requests * args.output_len / t
        res[f"tp{tp}_steps"] = engine.steps
        if tp > 1:
            res[f"tp{tp}_control"] = engine.executor.control.summary()
            engine.executor.shutdown()
        del engine
        if dev == "cuda":
            torch.cuda.empty_cache()
    res["greedy_sequences_equal"] = sum(a == b for a, b in zip(outs[1], outs[args.tp])) / len(outs[1])
    res["first_token_equal"] = sum(a[0] == b[0] for a, b in zip(outs[1], outs[args.tp])) / len(outs[1])
    return res


def _allreduce_worker(rank: int, world: int, port: int, shapes: list[tuple], q) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from benchmarks.engine import cuda_median_s

    times = {}
    for shape in shapes:
        x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
        times[str(shape)] = cuda_median_s(lambda: dist.all_reduce(x), warmup=10, iters=50) * 1e6
    if rank == 0:
        q.put(times)
    dist.destroy_process_group()


def bench_comm(hidden: int, world: int = 2) -> dict:
    import socket

    import torch.multiprocessing as mp

    rows = []
    shapes = []
    for b in (32, 256):
        for r in (16, 64):
            rows.append((b, r))
            shapes += [(b, 3, r), (b, 2, r), (b, 1, r)]
        shapes.append((b, hidden))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_allreduce_worker, args=(i, world, port, shapes, q)) for i in range(world)]
    for p in procs:
        p.start()
    times = q.get(timeout=300)
    for p in procs:
        p.join()
    out = {"allreduce_us": times, "per_layer": []}
    for b, r in rows:
        # ours: one all-reduce of x@A per column-parallel group (qkv, gate_up); S-LoRA's: also o and down
        lora = times[str((b, 3, r))] + times[str((b, 2, r))]
        slora = lora + 2 * times[str((b, 1, r))]
        base = 2 * times[str((b, hidden))]
        out["per_layer"].append(
            {
                "batch": b,
                "rank": r,
                "lora_us": lora,
                "base_us": base,
                "lora_share": lora / (lora + base),
                "slora_scheme_lora_us": slora,
                "slora_scheme_lora_share": slora / (slora + base),
                # S-LoRA's cost model: LoRA 5(N-1)Br/N vs base 2(N-1)Bh/N
                "model_lora_share": 5 * r / (5 * r + 2 * hidden),
            }
        )
    return out


def bench_equality_fp32(args, model_dir: Path, adapter_paths: list[str]) -> dict:
    """float32, the same model shape: TP=2 greedy tokens against TP=1's, mixed adapters and base."""
    from deployments.tp import TPExecutor

    dev = "cpu" if args.smoke else "cuda"
    cfg = EngineConfig(model=str(model_dir), device=dev, dtype="float32", pool={"num_pages": 400})
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.choice([1, 7, 40, 130]))] for _ in range(12)]
    names = {f"e{i}": adapter_paths[i % len(adapter_paths)] for i in range(4)}
    adapters = [(list(names) + [None])[i % 5] for i in range(12)]
    outs = {}
    for tp in (1, args.tp):
        engine = Engine(cfg) if tp == 1 else Engine(cfg, executor=TPExecutor(cfg, tp))
        register(engine, names)
        _, outs[tp] = fixed_batch(engine, prompts, adapters, 16, lambda: None)
        if tp > 1:
            engine.executor.shutdown()
        del engine
        if dev == "cuda":
            torch.cuda.empty_cache()
    return {
        "requests": len(prompts),
        "tokens_each": 16,
        "tp": args.tp,
        "greedy_equal": sum(a == b for a, b in zip(outs[1], outs[args.tp])) / len(prompts),
    }


SERVE_HISTOGRAMS = ("sloray_time_to_first_token_seconds", "sloray_inter_token_latency_seconds")


def bench_serve(args, model_dir: Path, adapter_paths: list[str], work: Path) -> dict:
    """The Serve app (TP=2) with `--serve-adapters` adapter directories, driven over HTTP."""
    import asyncio

    import httpx
    from ray import serve

    from benchmarks.load import replay
    from benchmarks.trace import synthetic_trace
    from deployments.builder import BuildArgs, build_app

    adir = work / f"serve-adapters-{args.serve_adapters}"
    adir.mkdir(parents=True, exist_ok=True)
    for i in range(args.serve_adapters):  # each name its own directory (files linked)
        d = adir / f"a{i}"
        if not d.exists():
            d.mkdir()
            src = Path(adapter_paths[i % len(adapter_paths)])
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                os.symlink(src / f, d / f)
    t0 = time.perf_counter()
    stream = {} if args.stream_interval_s is None else {"stream_interval_s": args.stream_interval_s}
    build_args = BuildArgs(
        model=str(model_dir),
        adapter_dir=str(adir),
        tensor_parallel_size=args.tp,
        device="cpu" if args.smoke else "cuda",
        dtype="float32" if args.smoke else "bfloat16",
        max_num_seqs=128,
        gpu_memory_fraction=0.6,
        max_lora_rank=64,
        engine={"pool": {"num_pages": args.pool_pages}} if args.smoke else {},
        **stream,
    )
    app = build_app(build_args)
    serve.run(app, name="sloray", route_prefix="/", blocking=False)
    url = "http://127.0.0.1:8000"
    models = httpx.get(f"{url}/v1/models", timeout=60).json()
    startup = time.perf_counter() - t0
    trace = synthetic_trace(
        args.serve_adapters, args.alpha, args.rate, 1.0, args.duration, 3, in_range=(8, 256), out_range=(8, 128)
    )
    res = asyncio.run(replay(url, trace, "a", 6.0, None, 300.0))
    metrics = httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
    res.update(
        startup_s=startup,
        models_listed=len(models["data"]),
        trace_adapters=args.serve_adapters,
        alpha=args.alpha,
        rate=args.rate,
        duration_s=args.duration,
        stream_interval_s=build_args.group.stream_interval_s,
        # the group-side latency histograms in full (buckets, sum, count), next to the client's view
        histograms={name: [ln for ln in metrics if ln.startswith(name)] for name in SERVE_HISTOGRAMS},
        metrics_sample=[ln for ln in metrics if ln.startswith("sloray_")][:40],
    )
    serve.shutdown()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/sloray-tp")
    ap.add_argument("--shape", default="llama2-7b", help="a key of benchmarks.engine.SHAPES")
    ap.add_argument("--tp", type=int, default=2, help="tensor-parallel size compared against TP=1")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--pool-pages", type=int, default=1500)
    ap.add_argument("--serve-adapters", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=None, help="seconds of trace (default 60; 10 with --smoke)")
    ap.add_argument(
        "--stream-interval-s",
        type=float,
        default=None,
        help="BuildArgs.stream_interval_s of the Serve app (default: BuildArgs' default)",
    )
    ap.add_argument("--skip", nargs="*", default=[], help="equality engine comm serve")
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU (gloo), to test the script")
    args = ap.parse_args()
    if args.duration is None:
        args.duration = 10.0 if args.smoke else 60.0
    import ray

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    shape = "tiny" if args.smoke else args.shape
    t0 = time.time()
    model_dir = write_random_llama(work / f"{shape}-{args.layers or 'all'}", shape, args.layers)
    paths = []
    for r in (8, 16):
        d = work / f"adapter-r{r}"
        if not (d / "adapter_config.json").exists():
            write_peft_adapter(d, model_dir, r, 2.0 * r, ["q_proj", "k_proj", "v_proj", "o_proj"], seed=r, std=0.02)
        paths.append(str(d))
    res = {
        "gpu": "cpu (smoke)" if args.smoke else f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}",
        "shape": shape,
        "layers": args.layers or "all",
        "setup_s": time.time() - t0,
    }
    ray.init(num_cpus=8, num_gpus=0 if args.smoke else torch.cuda.device_count(), include_dashboard=False)
    try:
        if "equality" not in args.skip:
            small = write_random_llama(work / f"{shape}-2", shape, 2)
            small_paths = []
            for r in (8, 16):
                d = work / f"adapter-2l-r{r}"
                if not (d / "adapter_config.json").exists():
                    write_peft_adapter(
                        d,
                        small,
                        r,
                        2.0 * r,
                        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                        seed=r,
                        std=0.05,
                    )
                small_paths.append(str(d))
            res["equality_fp32_2_layers"] = bench_equality_fp32(args, small, small_paths)
            print(json.dumps(res["equality_fp32_2_layers"]), flush=True)
        if "engine" not in args.skip:
            res["engine"] = bench_engine(args, model_dir, paths[1:])
            print(json.dumps(res["engine"], indent=1), flush=True)
        if "comm" not in args.skip and not args.smoke:
            from benchmarks.engine import SHAPES

            res["comm"] = bench_comm(SHAPES[shape]["hidden_size"], args.tp)
            print(json.dumps(res["comm"]["per_layer"], indent=1), flush=True)
        if "serve" not in args.skip:
            res["serve"] = bench_serve(args, model_dir, paths, work)
            print(
                json.dumps(
                    {k: v for k, v in res["serve"].items() if k not in ("metrics_sample", "histograms")}, indent=1
                ),
                flush=True,
            )
    finally:
        (out / "tp.json").write_text(json.dumps(res, indent=2))
        ray.shutdown()


if __name__ == "__main__":
    main()
