"""Which Triton kernel variants (as Triton keys them: constexprs, dtypes, pointers' 16-byte alignment, specialized
ints) does a workload launch after warm-up that warm-up did not? The engine on the CPU with its Triton backend
under the interpreter, the demo model as serve_config.yaml runs it (max_lora_rank 64).

    TRITON_INTERPRET=1 python probe.py SEATS flood|mix REQUESTS

flood: benchmarks/flood.py's requests (the base model, prompts 8-63, outputs 16-63, greedy); mix: prompts of 1-600
tokens, every demo adapter and the base model, greedy and sampled. Requests arrive a few per step."""

from __future__ import annotations

import os
import random
import sys

import torch
from triton.runtime import interpreter

from app import LLM, SamplingParams
from app.demo import build_demo

KEPT_OPTIONS = ("num_warps", "num_stages")


def variant(fn, args, kwargs) -> tuple:
    """Triton's cache key of a launch, approximately."""
    dns = set(fn.kwargs.get("do_not_specialize") or ())
    parts = []
    for name, a in list(zip(fn.arg_names, args)) + sorted(kwargs.items()):
        if name in KEPT_OPTIONS:
            parts.append((name, a))
        elif isinstance(a, torch.Tensor):
            parts.append((name, str(a.dtype), a.data_ptr() % 16 == 0))
        elif isinstance(a, bool):
            parts.append((name, a))
        elif isinstance(a, int):
            width = "i32" if -(2**31) <= a < 2**31 else "i64"
            spec = () if name in dns else ("1" if a == 1 else "D" if a % 16 == 0 else "N",)
            parts.append((name, width, *spec))
        elif isinstance(a, float):
            parts.append((name, "fp32"))
        else:
            parts.append((name, repr(a)))
    return (fn.fn.__name__, tuple(parts))


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run under TRITON_INTERPRET=1"
    seats, mode, n_req = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    seen: dict[str, set] = {"warmup": set(), "serve": set()}
    phase = ["warmup"]
    run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        seen[phase[0]].add(variant(self, args, kwargs))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = recording_run
    demo = build_demo()
    llm = LLM(
        str(demo / "model"),
        adapters=str(demo / "adapters"),
        device="cpu",
        kernel_backend="triton",
        warmup="on",
        scheduler={"max_num_seqs": seats},
        lora={"max_lora_rank": 64},
    )
    e = llm.engine
    print(f"warm-up {e.warmup_s:.1f} s, {len(seen['warmup'])} variants", flush=True)
    phase[0] = "serve"
    names = [None, *sorted(e.adapters)]
    rng = random.Random(0)
    vocab = e.args.vocab_size
    for i in range(n_req):
        if mode == "flood":
            n, adapter, out, temp = rng.randint(8, 63), None, rng.randint(16, 63), 0.0
        else:
            n = rng.choice([1, 2, 5, 8, 13, 16, 17, 31, 40, 64, 100, 250, 600])
            adapter, out, temp = names[i % len(names)], rng.randint(1, 64), rng.choice([0.0, 1.0])
        params = SamplingParams(max_tokens=out, temperature=temp, ignore_eos=True, seed=i)
        e.add_request([rng.randrange(3, vocab) for _ in range(n)], params, adapter, f"r{i}")
        if rng.random() < 0.3:
            e.step()
    while e.has_unfinished():
        e.step()
    new = seen["serve"] - seen["warmup"]
    print(f"{len(seen['serve'])} variants while serving, {len(new)} not built by warm-up")
    for name, parts in sorted(new, key=str):
        print("  NEW", name, parts)


if __name__ == "__main__":
    main()
