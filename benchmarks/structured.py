"""Structured output's cost in a full batch: the same batch of requests with half of them constrained by a
JSON schema against none constrained (offline engine, no Ray).

    python benchmarks/structured.py --out DIR [--requests 256] [--output-len 128] [--smoke]

Model: a random Llama-2-7B shape (bf16, load_format=dummy: made on the device), with a 32k byte-level BPE
tokenizer trained on the Python standard library (benchmarks/grammar_libs.py) so that JSON has real tokens;
rank-16 adapters (8 distinct by default) on every request. The constrained requests' schema (8 variants, so
the grammar cache is used as in a service) is an object holding an array of at least 100000 records: no
request can finish before `--output-len` tokens, so both runs have the same batches at every step (EOS is
ignored by the others).
Measured: each decode step with every request running (wall time; a step ends with its tokens on the
host), the host time filling the grammar bitmask per step, tokens/s; the ratio constrained / free. The goal
(issue 14): at most 10 % more per step on an H200 with 256 requests. `--smoke`: the tiny shape on the CPU.
Writes structured.json and structured.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import EngineConfig  # noqa: E402
from app.demo import write_peft_adapter, write_tokenizer  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.request import SamplingParams  # noqa: E402
from app.structured import StructuredOutputs  # noqa: E402
from benchmarks.engine import alias_adapters, write_model_config  # noqa: E402
from benchmarks.grammar_libs import write_bpe_tokenizer  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def schema(variant: int) -> str:
    record = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "score": {"type": "integer", "minimum": 0, "maximum": 10**6},
            "kind": {"enum": ["alpha", "beta", "gamma", f"v{variant}"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 4},
        },
        "required": ["name", "score", "kind", "tags"],
        "additionalProperties": False,
    }
    return json.dumps(
        {
            "type": "object",
            # minItems: the JSON cannot be complete (EOS allowed) within --output-len tokens
            "properties": {
                "id": {"type": "integer"},
                "records": {"type": "array", "items": record, "minItems": 100000},
            },
            "required": ["id", "records"],
            "additionalProperties": False,
        }
    )


def build(work: Path, smoke: bool, layers: int | None) -> Path:
    """The random model with a tokenizer that can write JSON (the BPE, or the demo's for --smoke)."""
    shape = "tiny" if smoke else "llama2-7b"
    model = write_model_config(work / f"{shape}-{layers or 'all'}-bpe", shape, layers)  # weights: load_format=dummy
    if smoke:
        write_tokenizer(model)
    else:
        bpe = write_bpe_tokenizer(work / "bpe32k-tokenizer", 32000)
        for f in TOKENIZER_FILES:
            if (bpe / f).exists():
                shutil.copy(bpe / f, model / f)
    return model


def run(engine: Engine, prompts, adapters, params) -> dict:
    """Runs one batch to the end; times the steps in which every request decodes."""
    fills: list[float] = []
    constraints = engine.executor.constraints
    if constraints is not None:  # time the host's bitmask fill (the part that must hide under the device)
        fill = constraints.fill

        def timed_fill(*a, **kw):
            t = time.perf_counter()
            fill(*a, **kw)
            fills.append(time.perf_counter() - t)

        constraints.fill = timed_fill
    for p, a, sp in zip(prompts, adapters, params):
        engine.add_request(p, sp, adapter=a)
    steps, tokens, n = [], 0, len(prompts)
    early = 0  # requests that finished before max_tokens (none expected: the runs must match step by step)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    while engine.has_unfinished():
        t = time.perf_counter()
        outs = engine.step()
        dt = time.perf_counter() - t
        tokens += sum(len(o.delta_token_ids) for o in outs)
        early += sum(o.finished and o.finish_reason != "length" for o in outs)
        if len(outs) == n and not any(o.finished for o in outs):
            steps.append(dt)
    total = time.perf_counter() - t0
    if constraints is not None:
        constraints.fill = fill
    return {
        "decode_steps": len(steps),
        "step_ms_median": 1e3 * statistics.median(steps),
        "step_ms_mean": 1e3 * statistics.mean(steps),
        "fill_ms_median": 1e3 * statistics.median(fills) if fills else 0.0,
        "total_s": total,
        "tok_s": tokens / total,
        "tokens": tokens,
        "finished_early": early,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/sloray-bench")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--distinct", type=int, default=8, help="distinct rank-16 adapters over the requests")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each batch, alternating; the best is kept")
    ap.add_argument("--smoke", action="store_true", help="tiny shape on the CPU, 8 requests, 12 tokens")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.output_len, args.prompt_len, args.distinct, args.repeats = 8, 12, 8, 2, 1
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    model = build(work, args.smoke, args.layers)
    adapter = work / f"structured-adapter-r16-{'tiny' if args.smoke else '7b'}"
    if not (adapter / "adapter_config.json").exists():
        write_peft_adapter(adapter, model, 16, 32.0, ["q_proj", "k_proj", "v_proj", "o_proj"], seed=1, std=0.02)
    device = "cpu" if args.smoke else "cuda"
    cfg = EngineConfig(
        model=str(model),
        device=device,
        dtype="float32" if args.smoke else "bfloat16",
        kernel_backend="torch" if args.smoke else "triton",
        load_format="dummy",
        scheduler={"max_num_seqs": args.requests, "max_num_batched_tokens": 8192},
        pool={"enable_prefix_caching": False},
    )
    engine = Engine(cfg)
    names = {f"r16-{i}": "src" for i in range(args.distinct)}
    alias_adapters(engine, {"src": str(adapter)}, names)
    rng = random.Random(0)
    vocab = engine.args.vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(args.prompt_len)] for _ in range(args.requests)]
    adapters = [f"r16-{i % args.distinct}" for i in range(args.requests)]
    free = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    half = [
        SamplingParams(max_tokens=args.output_len, temperature=0.0, structured=StructuredOutputs(json=schema(i % 8)))
        if i % 2
        else free
        for i in range(args.requests)
    ]
    run(engine, prompts[:8], adapters[:8], half[:8])  # warm-up: compiles, graphs, grammar caches
    runs = {"free": [], "half_constrained": []}
    for _ in range(args.repeats):
        runs["free"].append(run(engine, prompts, adapters, [free] * args.requests))
        runs["half_constrained"].append(run(engine, prompts, adapters, half))
    best = {k: min(v, key=lambda r: r["step_ms_median"]) for k, v in runs.items()}
    ratio = best["half_constrained"]["step_ms_median"] / best["free"]["step_ms_median"]
    res = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": "tiny" if args.smoke else "llama2-7b",
        "layers": engine.args.num_layers,
        "vocab": vocab,
        "requests": args.requests,
        "constrained": sum(p.structured is not None for p in half),
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "distinct_adapters": args.distinct,
        "runs": runs,
        "best": best,
        "step_ratio_constrained_over_free": ratio,
        "goal": "step_ratio <= 1.10 (H200, 256 requests)",
    }
    (out / "structured.json").write_text(json.dumps(res, indent=2))
    lines = [
        f"# Structured output in a batch on {res['device']}",
        "",
        f"{res['shape']} shape ({res['layers']} layers), vocabulary {vocab}, {args.requests} requests "
        f"({res['constrained']} constrained by a JSON schema, 8 variants), prompt {args.prompt_len}, output "
        f"{args.output_len}, {args.distinct} distinct rank-16 adapters. Decode steps with every request running.",
        "",
        "| batch | step ms (median) | step ms (mean) | host bitmask fill ms (median) | tok/s |",
        "|---|---|---|---|---|",
    ]
    for k, r in best.items():
        lines.append(
            f"| {k} | {r['step_ms_median']:.2f} | {r['step_ms_mean']:.2f} | {r['fill_ms_median']:.2f} "
            f"| {r['tok_s']:.0f} |"
        )
    lines += ["", f"Per-step ratio constrained / free: {ratio:.3f} (goal: at most 1.10 on an H200 with 256 requests)."]
    (out / "structured.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
