"""Which Triton kernel variants (as Triton would key them: constexprs, dtypes, pointer 16-byte alignment, int
specialization) does a flood-like workload launch that warm-up did not? The engine on the CPU, Triton under the
interpreter, the demo model as serve_config.yaml runs it (64 seats, max_lora_rank 64)."""
import os, random, sys, torch
assert os.environ.get("TRITON_INTERPRET") == "1"
from triton.runtime import interpreter

seen: set = set()
phase = ["warmup"]
by_phase: dict = {"warmup": set(), "serve": set()}
orig = interpreter.InterpretedFunction.run

def key(self, args, kwargs):
    dns = set(self.kwargs.get("do_not_specialize") or ())
    parts = []
    names = self.arg_names
    for name, a in list(zip(names, args)) + sorted(kwargs.items()):
        if name in ("grid", "warmup", "num_warps", "num_stages"):
            parts.append((name, a) if name in ("num_warps", "num_stages") else None); continue
        if isinstance(a, torch.Tensor):
            parts.append((name, str(a.dtype), a.data_ptr() % 16 == 0))
        elif isinstance(a, bool):
            parts.append((name, a))
        elif isinstance(a, int):
            if name in dns:
                parts.append((name, "i64" if not -2**31 <= a < 2**31 else "i32"))
            else:
                parts.append((name, "i64" if not -2**31 <= a < 2**31 else "i32", "1" if a == 1 else "D" if a % 16 == 0 else "N"))
        elif isinstance(a, float):
            parts.append((name, "fp32"))
        else:
            parts.append((name, repr(a)))
    return (self.fn.__name__, tuple(p for p in parts if p is not None))

def run(self, *args, grid, warmup, **kwargs):
    by_phase[phase[0]].add(key(self, args, kwargs))
    return orig(self, *args, grid=grid, warmup=warmup, **kwargs)

interpreter.InterpretedFunction.run = run

from app import LLM, SamplingParams
from app.demo import build_demo
demo = build_demo()
seqs = int(sys.argv[1]) if len(sys.argv) > 1 else 64
llm = LLM(str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", kernel_backend="triton", warmup="on",
          scheduler={"max_num_seqs": seqs}, lora={"max_lora_rank": 64})
e = llm.engine
print("warm-up", round(e.warmup_s, 1), "s,", len(by_phase["warmup"]), "variants", flush=True)
phase[0] = "serve"
names = [None, *sorted(e.adapters)]
rng = random.Random(0)
vocab = e.args.vocab_size
mode = sys.argv[2] if len(sys.argv) > 2 else "flood"
for i in range(int(sys.argv[3]) if len(sys.argv) > 3 else 120):
    if mode == "flood":  # benchmarks/flood.py: the base model, prompts 8-64, outputs 16-64, greedy
        n, a, out, temp = rng.randint(8, 63), None, rng.randint(16, 63), 0.0
    else:
        n = rng.choice([1, 2, 5, 8, 13, 16, 17, 31, 40, 64, 100, 250, 600])
        a, out, temp = names[i % len(names)], rng.randint(1, 64), rng.choice([0.0, 1.0])
    e.add_request([rng.randrange(3, vocab) for _ in range(n)], SamplingParams(max_tokens=out, temperature=temp, ignore_eos=True, seed=i), a, f"r{i}")
    if rng.random() < 0.3:
        e.step()
while e.has_unfinished():
    e.step()
new = by_phase["serve"] - by_phase["warmup"]
print(len(by_phase["serve"]), "variants while serving,", len(new), "not built by warm-up")
for k in sorted(new, key=str):
    same = [w for w in by_phase["warmup"] if w[0] == k[0]]
    diffs = set()
    for w in same:
        d = [(x, y) for x, y in zip(k[1], w[1]) if x != y]
        diffs.add(str(d)[:300])
    print("  NEW", k[0], "| closest differences from warm-up's:", sorted(diffs, key=len)[:2])
