"""Run 30: deferred adapter loads (lora.defer_loads) against inline loads on the S2 workload with 2000 adapters,
at two offered rates near the maximum sustainable one (run 29), off / on interleaved twice on one engine. Each
replay is the rate search's (benchmarks/suite.py `replay`, 20 s S-LoRA trace, ended once every request has its
first token). Prints one line per replay and writes ab_defer.json."""

import argparse
import json
import sys
from pathlib import Path

from benchmarks import suite

out = Path(sys.argv[1])
rates = [float(x) for x in sys.argv[2].split(",")]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
a = argparse.Namespace(smoke=False, work=Path("/tmp/sloray-suite"), layers=None, device="cuda",
                       gpu_memory_fraction=0.85, max_num_seqs=256, max_num_batched_tokens=4096, duration=20.0,
                       max_len=512, slo_s=6.0)  # fmt: skip
a.work.mkdir(parents=True, exist_ok=True)
engine = suite.engine_for(a, "S2", n)
rows = []
for rep in range(2):
    for rate in rates:
        trace = suite.trace_for(a, n, rate)
        for defer in (False, True):
            engine.set_policies(lora={**suite.DEFAULT_LORA_POLICIES, "defer_loads": defer})
            r = suite.replay(engine, trace, a.slo_s, drain_s=2 * a.slo_s, first_tokens_only=True)
            r.update(rate=rate, defer_loads=defer, rep=rep)
            rows.append(r)
            print(
                f"n={n} rate {rate:.1f} defer={defer!s:5}: kept up {r['kept_up']:.3f}, {r['out_tok_s_window']:.0f} "
                f"tok/s, attainment {r['slo_attainment']:.2f}, TTFT p50 {r['ttft_p50_s'] * 1e3:.0f} ms p99 "
                f"{r['ttft_p99_s'] * 1e3:.0f} ms, steps {r['steps']}, load-wait steps {r['load_wait_steps']}, "
                f"deferred {r['deferred_loads']}, step wall {r['step_wall_mean_s'] * 1e3:.2f} ms, "
                f"distinct/step {r['distinct_adapters_per_step']:.0f}, batch {r['batch_mean']:.0f}",
                flush=True,
            )
            (out / "ab_defer.json").write_text(json.dumps(rows, indent=1, default=str))
