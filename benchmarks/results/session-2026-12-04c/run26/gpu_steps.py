"""Run 26: GPU time of a decode step at the http workload's batch (issue 16): S2 shape (Llama-2-7B, q/k/v/o
LoRA ranks {64, 32, 16, 8}), 24 running requests of 24 distinct adapters (then of none: the base model),
~300-token contexts. Per case: mean wall ms per step over 40 steps (engine.step() back to back, async
scheduling, the decode CUDA graphs), then torch.profiler over 10 steps: kernels by device time."""

import os
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

import benchmarks.suite as S
from app.request import SamplingParams

cuda = torch.cuda.is_available()  # without a GPU: the suite's smoke shape, to check this script runs
a = SimpleNamespace(smoke=not cuda, work=Path("/tmp/sloray-suite"), layers=None, device="cuda" if cuda else "cpu",
                    gpu_memory_fraction=0.85, max_num_seqs=256 if cuda else 32, max_num_batched_tokens=8192 if cuda else 2048,
                    max_len=512, duration=15.0, slo_s=6.0)  # fmt: skip
a.work.mkdir(parents=True, exist_ok=True)
engine = S.engine_for(a, "S2", 100)
sync = torch.cuda.synchronize if cuda else (lambda: None)
out = Path(os.environ.get("OUT", "/tmp"))
rng = random.Random(0)
vocab = engine.args.vocab_size
report = []
for case, adapters in (("24 adapters", [f"a{i}" for i in range(24)]), ("base model", [None] * 24)):
    for ad in adapters:
        ids = [rng.randrange(3, vocab) for _ in range(300 if cuda else 20)]
        engine.add_request(ids, SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True, detokenize=False),
                           adapter=ad)  # fmt: skip
    for _ in range(8):  # the prefills, then decode only
        engine.step()
    sync()
    t = time.perf_counter()
    for _ in range(40):
        engine.step()
    sync()
    ms = (time.perf_counter() - t) / 40 * 1e3
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(10):
            engine.step()
        sync()
    table = prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=30,
                                      max_name_column_width=70)  # fmt: skip
    line = f"== {case}: {ms:.2f} ms per step (wall, 40 decode steps, batch {len(engine.scheduler.running)})"
    print(line, flush=True)
    report += [line, table]
    for rid in list(engine.requests):
        engine.abort(rid)
    while engine.has_unfinished():
        engine.step()
(out / "gpu_steps.txt").write_text("\n".join(report))
print("\n".join(report)[:9000])
