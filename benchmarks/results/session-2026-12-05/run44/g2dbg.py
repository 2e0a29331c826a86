"""Session 2026-12-05 run 44: why the gemma2 GPU test's first token differs from transformers + PEFT's.
Our first-token top-5 log-probabilities (GPU triton, GPU torch, CPU torch) against transformers + PEFT's (CPU,
and the same model on the GPU), for every request of the test's setup."""

import json
import random
import tempfile
from pathlib import Path

import torch
import transformers

from app import LLM, SamplingParams
from tests.models import ADAPTERS, HFReference, make_model, make_peft_adapters

root = Path(tempfile.mkdtemp())
model = make_model(root, "gemma2")
adapters = {k: str(v) for k, v in make_peft_adapters(root, model).items()}
vocab = json.loads((model / "config.json").read_text())["vocab_size"]
rng = random.Random(5)
names = list(ADAPTERS) + [None]
reqs = [([rng.randrange(3, vocab) for _ in range(rng.choice([1, 3, 17, 40, 90]))], names[i % 9]) for i in range(36)]
print(
    "allow_tf32",
    torch.backends.cuda.matmul.allow_tf32,
    "precision",
    torch.get_float32_matmul_precision(),
    "fp32_precision",
    getattr(torch.backends.cuda.matmul, "fp32_precision", None),
    flush=True,
)
sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True, logprobs=5)
ours = {}
for name, kw in {
    "gpu-triton": dict(device="cuda", kernel_backend="triton"),
    "gpu-torch": dict(device="cuda", kernel_backend="torch"),
    "cpu-torch": dict(device="cpu", kernel_backend="torch"),
}.items():
    if kw["device"] == "cuda" and not torch.cuda.is_available():
        continue
    llm = LLM(model=str(model), adapters=adapters, dtype="float32", **kw)
    outs = llm.generate([r[0] for r in reqs], adapters=[r[1] for r in reqs], sampling_params=sp)
    ours[name] = [o.logprobs[0] for o in outs]
    del llm
    print(
        name,
        "after: allow_tf32",
        torch.backends.cuda.matmul.allow_tf32,
        torch.get_float32_matmul_precision(),
        flush=True,
    )
hf = HFReference(model, adapters)
print("transformers attention:", hf.model.base_model.model.config._attn_implementation, flush=True)
_orig = transformers.AutoModelForCausalLM.from_pretrained
transformers.AutoModelForCausalLM.from_pretrained = lambda *a, **k: _orig(*a, **{**k, "attn_implementation": "eager"})
hf_eager = HFReference(model, adapters)
transformers.AutoModelForCausalLM.from_pretrained = _orig
print("eager reference attention:", hf_eager.model.base_model.model.config._attn_implementation, flush=True)
worst = {}
for i, (ids, a) in enumerate(reqs):
    lp = hf.logprobs(ids, a)[-1]
    lpe = hf_eager.logprobs(ids, a)[-1]
    worst["hf-eager"] = max(worst.get("hf-eager", 0), float((lp - lpe).abs().max()))
    top = torch.topk(lp, 5)
    hft = [(int(t), round(float(v), 6)) for v, t in zip(top.values, top.indices)]
    line = [f"req {i} {a} len {len(ids)} hf {hft[:3]}"]
    for name, L in ours.items():
        mine = L[i].top
        d = max(abs(float(lp[t]) - v) for t, v in mine)
        worst[name] = max(worst.get(name, 0), d)
        line.append(f"{name} {[(t, round(v, 6)) for t, v in mine[:3]]} maxdiff {d:.2e}")
    print(" | ".join(line))
print("worst |our logprob - hf logprob| over the top-5:", worst)
