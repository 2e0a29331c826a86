"""The scheduler and the pool alone on saturated.py's workload: how many steps a saturated run takes, at what
batch and how many distinct adapters a step, for a pool of a given size, on the CPU in seconds (no model, no GPU).

    python -m benchmarks.schedule_sim --pages 7000 [--shape llama2-7b] [--targets qkvo] [--adapters 0 1 1000]
    python -m benchmarks.schedule_sim --from DIR/saturated.json [--pages N]   # beside a GPU run's counts

The workload is saturated.py's (`workload`: --requests requests submitted at once, lengths U[8, 512), adapters
uniform over n, ranks {64, 32, 16, 8} by adapter index); the scheduler and page pool are the engine's
(app/scheduler.py, app/pool.py) with saturated.py's sizes (max_num_seqs 256, 4096 tokens a step, page size 16,
prefix caching off) and its default policies. A fake executor gives each sampled sequence one token a step (the
engine's synchronous loop; saturated.py's GPU runs use asynchronous scheduling, which can shift an admission
by a step). An adapter's pages are what the engine packs for it (app/lora/adapter.py's `pack_adapter`, at
TP = 1). Step time is not modelled: the figures say what admission and the pool's memory make of the workload
(the step count a GPU run's per-step cost multiplies), not how fast it runs. `--from` simulates each run of a
saturated.json (its shape, targets, sizes, seed and --scheduler / --lora overrides) at the pool size the run
recorded (`settings[].pool.pages`, since session 06h; older files need --pages) and prints the run's counts
beside the simulation's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import LoRAConfig, SchedulerConfig  # noqa: E402
from app.lora.adapter import LoRAWeights, module_shapes, pack_adapter  # noqa: E402
from app.model.llama import ModelArgs  # noqa: E402
from app.pool import PagePool  # noqa: E402
from app.request import ModelOutput, Request, SamplingParams  # noqa: E402
from app.scheduler import Scheduler  # noqa: E402
from benchmarks.engine import SHAPES, model_config  # noqa: E402
from benchmarks.saturated import ALL_LINEAR, QKVO, RANKS, workload  # noqa: E402

TARGETS = {"qkvo": QKVO, "all": ALL_LINEAR}


def adapter_pages(shape: str, targets: list[str], rank: int, page_size: int) -> int:
    """Pool pages of one adapter of `rank` on `targets` of a SHAPES model (TP = 1), as the engine packs it."""
    args = ModelArgs.from_hf(model_config(shape, None))
    io = module_shapes(args)
    w = LoRAWeights(name="x", path="", rank=rank, alpha=rank, scale=1.0,
                    targets={t: (torch.zeros(1, rank, io[t][0]), torch.zeros(1, io[t][1], rank)) for t in targets})  # fmt: skip
    page_elems = 2 * page_size * args.num_kv_heads * args.head_dim  # a page: K and V of page_size tokens, one layer
    return pack_adapter(w, page_elems, torch.float32).layout.num_pages


def simulate(n: int, pages: int, *, shape: str = "llama2-7b", targets: list[str] = QKVO, requests: int = 400,
             max_len: int = 512, seed: int = 0, max_num_seqs: int = 256, max_num_batched_tokens: int = 4096,
             page_size: int = 16, scheduler: dict | None = None, lora: dict | None = None) -> dict:  # fmt: skip
    """One saturated run of `requests` over `n` adapters (0: the base model) with a pool of `pages` pages;
    `scheduler` / `lora`: SchedulerConfig / LoRAConfig fields set as saturated.py's --scheduler / --lora do."""
    per_rank = {r: adapter_pages(shape, targets, r, page_size) for r in RANKS}
    pool = PagePool(num_pages=pages, page_size=page_size)
    sch = Scheduler(
        SchedulerConfig(
            **{"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens, **(scheduler or {})}
        ),  # fmt: skip
        LoRAConfig(**{"max_loras_per_batch": max_num_seqs, **(lora or {})}),
        pool,
        lambda name: per_rank[RANKS[int(name[1:]) % 4]],
        clock=lambda: 0.0,
    )
    reqs = {}
    for i, (inp, out, a) in enumerate(workload(requests, n, seed, hi=max_len)):
        p = SamplingParams(max_tokens=out, temperature=0.0, ignore_eos=True, detokenize=False)
        reqs[f"r{i}"] = Request(f"r{i}", [5] * inp, None if a is None else f"a{a}", p, arrival_time=0.0)
        sch.add(reqs[f"r{i}"])
    steps = decode = batch = distinct = 0
    while sch.has_unfinished():
        out = sch.schedule()
        steps += 1
        batch += len(out.seqs)
        decode += all(len(s.token_ids) == 1 for s in out.seqs)
        distinct += len({s.adapter for s in out.seqs if s.adapter})
        for req in sch.update(out, reqs, ModelOutput(tokens=[7] * sum(s.sample for s in out.seqs))):
            if len(req.output_token_ids) >= req.params.max_tokens:
                sch.finish(req, "length")
    return {"adapters": n, "pages": pages, "steps": steps, "decode_steps": decode, "mean_batch": batch / steps,
            "mean_distinct_adapters": distinct / steps, "preemptions": sch.num_preemptions,
            "adapter_pages_by_rank": per_rank}  # fmt: skip


def beside_record(path: Path, pages: int | None = None) -> list[str]:
    """A markdown table: each run of a saturated.json (`--from`) beside its simulation at the run's pool size
    (or `pages`). Runs with prefix caching on are left out (the simulation has no prompt tokens to match)."""
    res = json.loads(path.read_text())
    lines = [f"{res['gpu']}, commit {res['commit']}: measured / simulated", "",
             "| setting | pages | adapters | steps | decode steps | mean batch | distinct adapters |",
             "|---|---:|---:|---|---|---|---|"]  # fmt: skip
    for s in res["settings"]:
        n_pages = pages or (s.get("pool") or {}).get("pages")
        if n_pages is None:
            raise SystemExit(f"{path}: setting {s['setting']} has no recorded pool size: give --pages")
        for r in s["runs"]:
            if r.get("prefix_caching") or res.get("system_prompt"):
                continue
            sim = simulate(r["adapters"], n_pages, shape=s["shape"], targets=s["targets"], requests=res["requests"],
                           max_len=res["max_len"], seed=res.get("seed", 0), max_num_seqs=res["max_num_seqs"],
                           max_num_batched_tokens=res["max_num_batched_tokens"],
                           page_size=(s.get("pool") or {}).get("page_size", 16), scheduler=res.get("scheduler"),
                           lora=res.get("lora"))  # fmt: skip
            lines.append(
                f"| {s['setting']} | {n_pages} | {r['adapters']} | {r['steps']} / {sim['steps']} | "
                f"{r['steps_by_kind']['decode']} / {sim['decode_steps']} | {r['mean_batch']:.1f} / "
                f"{sim['mean_batch']:.1f} | {r['mean_distinct_adapters']:.1f} / {sim['mean_distinct_adapters']:.1f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, nargs="+", help="pool sizes in pages (one run each; with --from: one)")
    ap.add_argument("--from", dest="record", type=Path, help="a saturated.json: its runs beside their simulation")
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    ap.add_argument("--targets", default="qkvo", choices=sorted(TARGETS))
    ap.add_argument("--adapters", type=int, nargs="+", default=[0, 1, 1000])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.record:
        print("\n".join(beside_record(a.record, a.pages[0] if a.pages else None)))
        return
    if not a.pages:
        ap.error("--pages or --from is needed")
    print("| pages | adapters | steps | decode steps | mean batch (distinct adapters) | preemptions | steps / base |")
    print("|---:|---:|---:|---:|---|---:|---:|")
    for pages in a.pages:
        base = None
        for n in a.adapters:
            r = simulate(n, pages, shape=a.shape, targets=TARGETS[a.targets], requests=a.requests, seed=a.seed)
            base = r["steps"] if n == 0 else base
            ratio = f"{r['steps'] / base:.3f}" if base else "-"
            print(f"| {pages} | {n} | {r['steps']} | {r['decode_steps']} | {r['mean_batch']:.1f} "
                  f"({r['mean_distinct_adapters']:.1f}) | {r['preemptions']} | {ratio} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
