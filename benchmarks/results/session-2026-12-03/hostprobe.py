"""Host time of one launch of each piece of an eager step, on the GPU, with the GPU kept busy ahead of the
launches (torch.cuda._sleep) so that nothing waits for it: F.linear with a token count it has seen vs one it
has not (cuBLAS picks an algorithm per new shape), the Triton elementwise and attention wrappers, the LoRA
plan and the LoRA wrappers (1 and 64 adapters). Prints JSON.

    python benchmarks/results/session-2026-12-03/hostprobe.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from benchmarks.kernels import build_adapters, llama_groups  # noqa: E402
from kernels import get_backend  # noqa: E402


def host_us(fn, n: int) -> float:
    """Mean host microseconds per call of fn(i), i < n, behind ~1 s of GPU sleep."""
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    dt = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return round(dt, 1)


def per_call_us(fn, n: int) -> dict:
    """Host microseconds of each call of fn(i), i < n, behind ~1 s of GPU sleep: the median, the largest and
    the sum (one call that waits for the GPU shows as a largest of ~1 s)."""
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)
    ts = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        ts.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    ts.sort()
    return {"median": round(ts[n // 2], 1), "max": round(ts[-1], 1), "sum": round(sum(ts), 1)}


def new_shapes(res: dict) -> None:
    """F.linear on token counts never seen, per call, under each BLAS library torch offers."""
    dev, dt = "cuda", torch.bfloat16
    w = torch.randn(11008, 4096, device=dev, dtype=dt) * 0.02
    for lib, base in (("cublas", 2000), ("cublaslt", 3000), ("default", 4000)):
        if lib != "default":
            torch.backends.cuda.preferred_blas_library(lib)
        xs = [torch.randn(base + i, 4096, device=dev, dtype=dt) for i in range(100)]
        res[f"linear_new_M_{lib}"] = per_call_us(lambda i, xs=xs: F.linear(xs[i], w), 100)
        res[f"linear_new_M_{lib}_again"] = per_call_us(lambda i, xs=xs: F.linear(xs[i], w), 100)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(100):
            F.linear(xs[i][: base // 4 + i], w)
            torch.cuda.synchronize()
        res[f"linear_new_M_{lib}_synced_ms_each"] = round((time.perf_counter() - t) * 10, 3)
    torch.backends.cuda.preferred_blas_library("default")


def main() -> None:
    dev, dt = "cuda", torch.bfloat16
    be = get_backend("triton")
    res: dict = {}
    new_shapes(res)
    w = torch.randn(12288, 4096, device=dev, dtype=dt) * 0.02
    xs = [torch.randn(600 + i, 4096, device=dev, dtype=dt) for i in range(200)]
    x0 = torch.randn(1000, 4096, device=dev, dtype=dt)
    for _ in range(3):
        F.linear(x0, w)
    res["linear_same_M"] = host_us(lambda i: F.linear(x0, w), 200)
    res["linear_new_M_first_time"] = host_us(lambda i: F.linear(xs[i], w), 200)
    res["linear_new_M_second_time"] = host_us(lambda i: F.linear(xs[i], w), 200)
    res["torch_empty"] = host_us(lambda i: torch.empty(1000, 4096, device=dev, dtype=dt), 200)
    nw = torch.ones(4096, device=dev, dtype=dt)
    be.rms_norm(x0, nw, 1e-5)
    res["rms_norm_same_T"] = host_us(lambda i: be.rms_norm(x0, nw, 1e-5), 200)
    for x in xs:
        be.rms_norm(x, nw, 1e-5)
    res["rms_norm_varying_T"] = host_us(lambda i: be.rms_norm(xs[i], nw, 1e-5), 200)

    groups = llama_groups(4096, 11008)
    g = groups[0]  # q/k/v
    T = 1000
    x = torch.randn(T, 4096, device=dev, dtype=dt)
    y = torch.randn(T, 3 * 4096, device=dev, dtype=dt)
    v = torch.empty(T, 3, 64, device=dev, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    for n_ad in (1, 64):
        ranks = [(8, 16, 32, 64)[i % 4] for i in range(n_ad)]
        pool, page_table, _ = build_adapters(groups, ranks, 2 * 16 * 32 * 128, dt, dev, gen)
        scales = torch.ones(n_ad, device=dev)
        lens = [400, 300] + [1] * 300  # a mixed step: two prefill chunks and 300 decode tokens
        indptr = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=dev)
        slots = (torch.arange(len(lens)) % n_ad).to(torch.int32).to(dev)
        plan = be.lora_plan(indptr, slots, n_ad, T, 400)
        res[f"lora_plan_{n_ad}ad"] = host_us(lambda i: be.lora_plan(indptr, slots, n_ad, T, 400), 200)

        def apply(i, pool=pool, page_table=page_table, scales=scales, indptr=indptr, slots=slots, plan=plan):
            be.lora_apply(y, x, v, pool, page_table, g.a_off, g.b_off, g.ranks, scales, indptr, slots,
                          g.out_offsets, max_seg_len=400, aligned=True, plan=plan)  # fmt: skip

        apply(0)
        res[f"lora_apply_qkv_{n_ad}ad (2 launches)"] = host_us(apply, 200)
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "host_us": res}, indent=1))


if __name__ == "__main__":
    main()
