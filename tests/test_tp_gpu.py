"""Tensor parallelism on GPUs (run on a machine with >= 2 CUDA GPUs: pytest -m gpu tests/test_tp_gpu.py):
TP=2 over NCCL (two Ray rank actors in a STRICT_PACK placement group) gives the greedy tokens of TP=1
and of transformers + PEFT in float32, and logits close to TP=1's in bfloat16 (step by step, both
engines fed the same tokens)."""

from __future__ import annotations

import pytest
import ray  # noqa: E402
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.ray,  # starts Ray (tests/conftest.py)
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs >= 2 CUDA GPUs"),
]

from app.config import EngineConfig  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.request import ModelOutput, SamplingParams  # noqa: E402
from deployments.tp import TPExecutor  # noqa: E402
from tests.models import HFReference  # noqa: E402
from tests.tp_common import AT_START, check, generate, random_requests  # noqa: E402


@pytest.fixture(scope="module")
def ray_gpu():
    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tp_case):
    model, adapters = tp_case
    return model, adapters, random_requests(model, 15, [1, 3, 9, 17, 33, 60])


def engine(
    model, adapters, dtype: str, tp: int | None, cuda_graphs: bool = True, warmup: str = "off", **pool
) -> Engine:
    """warmup is off unless asked (it is slow; the graphs variant of the float32 test runs it on both
    engines, through the TP executor and NCCL for TP=2, before the checked requests)."""
    cfg = EngineConfig(
        model=str(model),
        device="cuda",
        dtype=dtype,
        pool={"page_size": 16, **pool},
        cuda_graphs=cuda_graphs,
        warmup=warmup,
    )
    e = Engine(cfg, executor=TPExecutor(cfg, tp) if tp else None)
    for n in AT_START:
        e.add_adapter(n, adapters[n])
    return e


@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "graphs"])
def test_tp2_nccl_equals_tp1_and_peft_float32(ray_gpu, setup, cuda_graphs):
    """Decode steps eager, then replayed from CUDA graphs captured on both ranks (NCCL inside)."""
    model, adapters, reqs = setup
    # num_pages from free memory: the ranks take the minimum over NCCL
    warm = "on" if cuda_graphs else "off"
    tp2 = engine(model, adapters, "float32", 2, cuda_graphs=cuda_graphs, warmup=warm, gpu_memory_fraction=0.05)
    try:
        got = generate(tp2, reqs)
        print("control per step:", tp2.executor.control.summary())
    finally:
        tp2.executor.shutdown()
    ref = HFReference(model, adapters)
    want = [ref.greedy(ids, a, m) for ids, a, m in reqs]
    check(got, reqs, want, "TP=2 (NCCL) vs transformers+PEFT, float32")
    tp1 = engine(model, adapters, "float32", None, cuda_graphs=cuda_graphs, warmup=warm, num_pages=4096)
    check(generate(tp1, reqs), reqs, want, "TP=1 vs transformers+PEFT, float32")


def test_tp2_nccl_logits_close_bfloat16(ray_gpu, setup):
    model, adapters, reqs = setup
    tp1 = engine(model, adapters, "bfloat16", None, num_pages=4096)
    tp2 = engine(model, adapters, "bfloat16", 2, num_pages=4096)
    try:
        for e in (tp1, tp2):
            for p, a, _ in reqs:
                e.add_request(p, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True), a)
        worst = 0.0
        for step in range(5):  # a prefill of every request, then decodes, both fed TP=1's tokens
            o1, o2 = tp1.scheduler.schedule(), tp2.scheduler.schedule()
            assert [s.request_id for s in o1.seqs] == [s.request_id for s in o2.seqs]
            l1 = tp1.executor.forward_logits(o1).cpu()
            l2 = tp2.executor.logits(o2)
            assert l1.shape == l2.shape and l1.shape[0] == len(reqs)
            err = ((l2 - l1).abs().max() / l1.abs().max()).item()
            worst = max(worst, err)
            assert err < 0.05, f"step {step}: max |TP2 - TP1| = {err:.3g} of max |logit| (bfloat16)"
            cos = torch.nn.functional.cosine_similarity(l1, l2, dim=-1)
            assert cos.min() > 0.999, f"step {step}: logits cosine similarity {cos.min():.5f}"
            tokens = l1.argmax(-1).tolist()
            tp1.scheduler.update(o1, tp1.requests, ModelOutput(tokens))
            tp2.scheduler.update(o2, tp2.requests, ModelOutput(tokens))
        print(f"bf16 logits: worst max|TP2-TP1| / max|logit| = {worst:.3g}")
    finally:
        tp2.executor.shutdown()
