"""End-to-end engine benchmark on one GPU (offline, no Ray), with its baselines in the same run.

    python benchmarks/engine.py --out DIR [--layers 32] [--smoke]

(a) fixed batch (BENCHMARKS.md's lead setting): Llama-2-7B shape, random bf16 weights, 32 requests,
    prompt 128, output 64, rank 16 on q/k/v/o, 8 and 32 distinct adapters:
    ours (Triton) vs ours base model only vs Hugging Face PEFT mixed batch (`adapter_names=`) vs PEFT one
    adapter at a time (`set_adapter`) vs HF base model; plus the physical bound of a decode step.
(b) S-LoRA synthetic trace (S2 ranks {64, 32, 16, 8}, power-law adapter popularity, Gamma arrivals),
    replayed in real time: throughput, TTFT percentiles, SLO attainment, user satisfaction.
Many adapter names share a few distinct weight sets in host memory (one per rank); on the GPU every name
gets its own pages and its own load (written in the results).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import EngineConfig  # noqa: E402
from app.demo import write_peft_adapter  # noqa: E402
from app.engine import AdapterInfo, Engine  # noqa: E402
from app.request import SamplingParams  # noqa: E402
from benchmarks.load import percentile  # noqa: E402
from benchmarks.trace import synthetic_trace  # noqa: E402

SHAPES = {
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
        num_hidden_layers=32,
        vocab_size=32000,
    ),
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=32,
        vocab_size=128256,
    ),
    "llama2-13b": dict(
        hidden_size=5120,
        intermediate_size=13824,
        num_attention_heads=40,
        num_key_value_heads=40,
        num_hidden_layers=40,
        vocab_size=32000,
    ),
    "llama-30b": dict(
        hidden_size=6656,
        intermediate_size=17920,
        num_attention_heads=52,
        num_key_value_heads=52,
        num_hidden_layers=60,
        vocab_size=32000,
    ),
    "llama2-70b": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_attention_heads=64,
        num_key_value_heads=8,
        num_hidden_layers=80,
        vocab_size=32000,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=512,
    ),
}


def model_config(shape: str, layers: int | None) -> dict:
    """The Hugging Face config.json of a Llama shape of SHAPES (optionally with fewer layers)."""
    cfg = dict(SHAPES[shape])
    if layers:
        cfg["num_hidden_layers"] = layers
    cfg.update(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=4096,
        hidden_act="silu",
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
        bos_token_id=0,
        eos_token_id=1,
    )
    return cfg


def write_model_config(d: Path, shape: str, layers: int | None) -> Path:
    """A model directory without weights: config.json and a word tokenizer (for `load_format="dummy"`)."""
    d.mkdir(parents=True, exist_ok=True)
    cfg = model_config(shape, layers)
    write_word_tokenizer(d, cfg["vocab_size"])
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def write_random_llama(d: Path, shape: str, layers: int | None, dtype=torch.bfloat16, seed=0) -> Path:
    """config.json + model.safetensors with random weights (std 0.02), written without transformers'
    slow init; the engine and transformers both load it as a normal checkpoint."""
    from safetensors.torch import save_file

    write_model_config(d, shape, layers)
    cfg = model_config(shape, layers)
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    D = H // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * D
    g = torch.Generator(device="cuda" if torch.cuda.is_available() else "cpu").manual_seed(seed)
    dev = g.device

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=dev) * 0.02).to(dtype).cpu()

    w = {
        "model.embed_tokens.weight": rnd(cfg["vocab_size"], H),
        "lm_head.weight": rnd(cfg["vocab_size"], H),
        "model.norm.weight": torch.ones(H, dtype=dtype),
    }
    for i in range(L):
        p = f"model.layers.{i}."
        w.update(
            {
                p + "input_layernorm.weight": torch.ones(H, dtype=dtype),
                p + "post_attention_layernorm.weight": torch.ones(H, dtype=dtype),
                p + "self_attn.q_proj.weight": rnd(H, H),
                p + "self_attn.k_proj.weight": rnd(kv, H),
                p + "self_attn.v_proj.weight": rnd(kv, H),
                p + "self_attn.o_proj.weight": rnd(H, H),
                p + "mlp.gate_proj.weight": rnd(I, H),
                p + "mlp.up_proj.weight": rnd(I, H),
                p + "mlp.down_proj.weight": rnd(H, I),
            }
        )
    save_file(w, str(d / "model.safetensors"))
    return d


def write_word_tokenizer(d: Path, vocab_size: int) -> None:
    """A word-level tokenizer with one visible word per id ("w0 w1 ..."): a random model's tokens all
    decode to text, so streamed HTTP responses carry every token (a small trained BPE would leave most
    of a 32k-vocabulary model's ids without text, and the ingress sends no empty chunks)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    vocab.update({"<s>": 0, "</s>": 1})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(str(d))


def alias_adapters(engine: Engine, sources: dict[str, str], names: dict[str, str]) -> None:
    """Registers `names` (alias -> source name): the alias shares the source's packed host tensor
    (host-memory saving for benchmarks); in the pool it is a separate adapter with its own pages/loads."""
    for src, path in sources.items():
        if src not in engine.adapters:
            engine.add_adapter(src, path)
    for alias, src in names.items():
        if alias in engine.adapters:
            continue
        engine.executor.add_packed(alias, engine.executor.adapters[src])
        info = engine.adapters[src]
        engine.adapters[alias] = AdapterInfo(alias, info.path, info.rank, info.scale, info.num_pages)


def run_batch(engine: Engine, prompts, adapters, out_len) -> tuple[float, int]:
    params = SamplingParams(max_tokens=out_len, temperature=0, ignore_eos=True, detokenize=False)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for p, a in zip(prompts, adapters):
        engine.add_request(p, params, adapter=a)
    n = 0
    while engine.has_unfinished():
        n += sum(1 for o in engine.step() if o.finished)
    torch.cuda.synchronize()
    return time.perf_counter() - t, n


def cuda_median_s(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median GPU time of `fn()` in seconds, each call timed by CUDA events after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    return statistics.median(ts)


def copy_bandwidth() -> float:
    """Device-to-device copy rate, bytes read + written per second."""
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = cuda_median_s(lambda: y.copy_(x))
    return 2 * (2 << 30) / t


def peft_baselines(model_dir: Path, path: str, prompts, distinct: list[int], out_len: int) -> dict:
    """Hugging Face PEFT on the same GPU: mixed-adapter batches (`adapter_names=`) and one adapter at a
    time (`set_adapter`, the paper's baseline), plus the HF base model; every adapter name a copy of
    `path`. Returns {distinct: {name: seconds}}."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16).cuda().eval()
    names = [f"r16-{i}" for i in range(max(distinct))]
    m = PeftModel.from_pretrained(base, path, adapter_name=names[0])
    for n in names[1:]:
        m.load_adapter(path, adapter_name=n)
    m.eval()
    ids = torch.tensor(prompts, device="cuda")
    kw = dict(max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False, pad_token_id=2)

    def timed(fn):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    res = {}
    with torch.no_grad():
        m.generate(ids[:2], max_new_tokens=2, do_sample=False, pad_token_id=2)  # warm-up
        with m.disable_adapter():
            hf_base = timed(lambda: m.generate(ids, **kw))
        for n_ad in distinct:
            adapters = [names[i % n_ad] for i in range(len(prompts))]

            def one_at_a_time():
                for n in sorted(set(adapters)):
                    m.set_adapter(n)
                    m.generate(ids[[i for i, a in enumerate(adapters) if a == n]], **kw)

            res[n_ad] = {
                "hf_base": hf_base,
                "peft_mixed": timed(lambda: m.generate(ids, adapter_names=adapters, **kw)),
                "peft_one_at_a_time": timed(one_at_a_time),
            }
    m = base = None  # frees the model (the closures above hold the same cell)
    torch.cuda.empty_cache()
    return res


def bench_fixed(args, model_dir: Path, adapter_src: dict[str, str]) -> dict:
    n_req, p_len, o_len = args.requests, args.prompt_len, args.output_len
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(p_len)] for _ in range(n_req)]
    cfg = EngineConfig(
        model=str(model_dir),
        device="cuda",
        dtype="bfloat16",
        kernel_backend=args.backend,
        pool={"num_pages": args.pool_pages, "page_size": 16, "enable_prefix_caching": False},
        scheduler={"max_num_seqs": 256, "max_num_batched_tokens": 8192},
    )
    engine = Engine(cfg)
    out = {"requests": n_req, "prompt_len": p_len, "output_len": o_len, "runs": []}
    for n_ad in args.distinct:
        names = {f"r16-{i}": "src-r16" for i in range(n_ad)}
        alias_adapters(engine, {"src-r16": adapter_src["src-r16"]}, names)
        adapters = [f"r16-{i % n_ad}" for i in range(n_req)]
        run_batch(engine, prompts, adapters, 4)  # warm-up: Triton compiles
        t, n = run_batch(engine, prompts, adapters, o_len)
        row = {
            "distinct_adapters": n_ad,
            "ours_s": t,
            "ours_tok_s": n_req * o_len / t,
            "adapter_loads": engine.pool.loads,
            "steps": engine.steps,
        }
        out["runs"].append(row)
    run_batch(engine, prompts, [None] * n_req, 4)
    t, _ = run_batch(engine, prompts, [None] * n_req, o_len)
    out["ours_base_only_tok_s"] = n_req * o_len / t
    del engine
    torch.cuda.empty_cache()
    if not args.no_peft:
        pb = peft_baselines(model_dir, adapter_src["src-r16"], prompts, args.distinct, o_len)
        for row in out["runs"]:
            row.update({k + "_tok_s": n_req * o_len / v for k, v in pb[row["distinct_adapters"]].items()})
    return out


def bench_trace(args, model_dir: Path, adapter_src: dict[str, str]) -> dict:
    ranks = [64, 32, 16, 8]
    cfg = EngineConfig(
        model=str(model_dir),
        device="cuda",
        dtype="bfloat16",
        kernel_backend=args.backend,
        pool={"gpu_memory_fraction": 0.8, "page_size": 16, "enable_prefix_caching": False},
        scheduler={"max_num_seqs": 256, "max_num_batched_tokens": 4096},
    )
    engine = Engine(cfg)
    names = {f"a{i}": f"src-r{ranks[i % 4]}" for i in range(args.trace_adapters)}
    alias_adapters(engine, {k: v for k, v in adapter_src.items() if k in set(names.values())}, names)
    trace = synthetic_trace(args.trace_adapters, args.alpha, args.rate, args.cv, args.duration, 1)
    rng = random.Random(2)
    run_batch(engine, [[5] * 64] * 8, [f"a{i}" for i in range(8)], 4)  # warm-up
    params = {}
    start = time.perf_counter()
    pending = list(trace)
    done = {}
    first = {}
    rid_arrival = {}
    adapters_per_step = []
    while pending or engine.has_unfinished():
        now = time.perf_counter() - start
        while pending and pending[0]["arrival_s"] <= now:
            r = pending.pop(0)
            p = SamplingParams(max_tokens=r["output_len"], temperature=0, ignore_eos=True, detokenize=False)
            rid = engine.add_request(
                [rng.randrange(3, 500) for _ in range(r["input_len"])], p, adapter=f"a{r['adapter']}"
            )
            rid_arrival[rid] = start + r["arrival_s"]
            params[rid] = r
        if not engine.has_unfinished():
            time.sleep(min(0.005, max(0.0, pending[0]["arrival_s"] - now)) if pending else 0)
            continue
        outs = engine.step()
        adapters_per_step.append(engine.last_step_adapters)
        t = time.perf_counter()
        for o in outs:
            first.setdefault(o.request_id, t)
            if o.finished:
                done[o.request_id] = t
    elapsed = time.perf_counter() - start
    ttft = sorted(first[r] - rid_arrival[r] for r in done)
    e2e = [done[r] - rid_arrival[r] for r in done]
    out_tokens = sum(params[r]["output_len"] for r in done)
    slo = args.slo_s
    return {
        "adapters": args.trace_adapters,
        "alpha": args.alpha,
        "rate": args.rate,
        "cv": args.cv,
        "duration_s": args.duration,
        "requests": len(trace),
        "finished": len(done),
        "elapsed_s": elapsed,
        "req_s": len(done) / elapsed,
        "out_tok_s": out_tokens / elapsed,
        "ttft_mean_s": statistics.mean(ttft),
        "ttft_p50_s": percentile(ttft, 0.5),
        "ttft_p90_s": percentile(ttft, 0.9),
        "ttft_p99_s": percentile(ttft, 0.99),
        "e2e_mean_s": statistics.mean(e2e),
        "slo_s": slo,
        "slo_attainment": sum(t <= slo for t in ttft) / len(ttft),
        "user_satisfaction": statistics.mean(max(0.0, 1 - (t / slo) ** 2) for t in ttft),
        "distinct_adapters_per_step_mean": statistics.mean(adapters_per_step),
        "adapter_loads": engine.pool.loads,
        "adapter_evictions": engine.pool.evictions,
        "pool_pages": engine.pool.num_pages,
        "preemptions": engine.scheduler.num_preemptions,
        "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/sloray-bench")
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--distinct", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--pool-pages", type=int, default=1200)
    ap.add_argument("--no-peft", action="store_true")
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--trace-adapters", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--cv", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--slo-s", type=float, default=6.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    t0 = time.time()
    model_dir = write_random_llama(work / f"{args.shape}-{args.layers or 'all'}", args.shape, args.layers)
    adapter_src = {}
    for r in (8, 16, 32, 64):
        d = work / f"adapter-r{r}"
        if not (d / "adapter_config.json").exists():
            write_peft_adapter(d, model_dir, r, 2.0 * r, ["q_proj", "k_proj", "v_proj", "o_proj"], seed=r, std=0.02)
        adapter_src[f"src-r{r}"] = str(d)
    res = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shape": args.shape,
        "layers": args.layers or SHAPES[args.shape]["num_hidden_layers"],
        "backend": args.backend,
        "setup_s": time.time() - t0,
        "note": "adapter names share a few distinct weight sets in host memory (one per rank); "
        "each name gets its own pool pages and its own load on the GPU",
    }
    res["copy_bandwidth_GBs"] = copy_bandwidth() / 1e9
    weight_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    res["decode_step_bound_ms"] = weight_bytes / (res["copy_bandwidth_GBs"] * 1e9 / 2) * 1e3
    res["fixed"] = bench_fixed(args, model_dir, adapter_src)
    bound = args.requests / (res["decode_step_bound_ms"] / 1e3)
    res["fixed"]["bound_tok_s"] = bound
    if args.trace:
        res["trace"] = bench_trace(args, model_dir, adapter_src)
    (out / "engine.json").write_text(json.dumps(res, indent=2))
    lines = [
        f"# Engine benchmark on {res['gpu']}",
        "",
        f"{args.shape} shape ({res['layers']} layers), random bf16 weights, backend {args.backend}; "
        f"{args.requests} requests, prompt {args.prompt_len}, output {args.output_len}, rank 16 q/k/v/o.",
        f"Copy bandwidth {res['copy_bandwidth_GBs']:.0f} GB/s (read+write); decode-step bound "
        f"{res['decode_step_bound_ms']:.2f} ms => {bound:.0f} tok/s at this batch.",
        "",
        "| distinct adapters | ours tok/s | PEFT mixed tok/s | PEFT one-at-a-time tok/s | HF base tok/s |",
        "|---|---|---|---|---|",
    ]
    for r in res["fixed"]["runs"]:
        lines.append(
            f"| {r['distinct_adapters']} | {r['ours_tok_s']:.0f} | {r.get('peft_mixed_tok_s', 0):.0f} | "
            f"{r.get('peft_one_at_a_time_tok_s', 0):.0f} | {r.get('hf_base_tok_s', 0):.0f} |"
        )
    lines += ["", f"Ours, base model only: {res['fixed']['ours_base_only_tok_s']:.0f} tok/s.", ""]
    if "trace" in res:
        lines += ["## Synthetic trace", "", "```", json.dumps(res["trace"], indent=1), "```"]
    (out / "engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
