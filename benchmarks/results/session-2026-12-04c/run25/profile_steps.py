"""Run 25: where the engine's host time per step goes at a moderate rate (issue 16's http workload: S2 shape,
100 adapters, 8 req/s, 15 s of S-LoRA's trace, in-process). The in-process replay of run 24 measured
engine.step() at 9.2 ms wall = 9.2 ms CPU per step: host-bound. cProfile of one replay (after an unprofiled
one that warms everything), top functions by own and by cumulative time, to $OUT/profile.txt."""

import cProfile
import io
import os
import pstats
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import benchmarks.suite as S

cuda = torch.cuda.is_available()  # without a GPU: the suite's smoke shape, to check this script runs
a = SimpleNamespace(
    smoke=not cuda,
    work=Path("/tmp/sloray-suite"),
    layers=None,
    device="cuda" if cuda else "cpu",
    gpu_memory_fraction=0.85,
    max_num_seqs=256 if cuda else 8,
    max_num_batched_tokens=4096 if cuda else 64,
    max_len=512,
    duration=15.0 if cuda else 1.5,
    slo_s=6.0,
)
a.work.mkdir(parents=True, exist_ok=True)
trace = S.trace_for(a, 100, 8.0)
engine = S.engine_for(a, "S2", 100)
r0 = S.replay(engine, trace, 6.0, drain_s=24)
print(
    "unprofiled:",
    {k: r0[k] for k in ("req_s", "ttft_p50_s", "tpot_mean_s", "steps", "step_wall_mean_s", "step_cpu_mean_s")},
)
pr = cProfile.Profile()
pr.enable()
r1 = S.replay(engine, trace, 6.0, drain_s=24)
pr.disable()
print(
    "profiled:",
    {k: r1[k] for k in ("req_s", "ttft_p50_s", "tpot_mean_s", "steps", "step_wall_mean_s", "step_cpu_mean_s")},
)
out = io.StringIO()
st = pstats.Stats(pr, stream=out)
st.sort_stats("tottime").print_stats(45)
st.sort_stats("cumulative").print_stats(70)
Path(os.environ["OUT"], "profile.txt").write_text(out.getvalue())
st.dump_stats(str(Path(os.environ["OUT"], "profile.pstats")))
print(out.getvalue()[:6000])
sys.stdout.flush()
