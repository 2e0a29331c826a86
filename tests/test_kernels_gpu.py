"""Triton kernels on CUDA against their torch references: bfloat16 (which the CPU interpreter cannot
check), realistic Llama shapes, and a CUDA-graph capture + replay of a decode step made of kv_append,
paged_attention, lora_shrink and lora_expand whose static input buffers change between replays.

Run on the GPU machine: python -m pytest tests/test_kernels_gpu.py -q -m gpu
"""

from __future__ import annotations

import pytest
import torch
from test_kernels import make_adapters, make_batch, make_kv_cache, random_ranks

import kernels.lora as kl
from kernels import attention
from kernels.attention import kv_append, kv_append_ref, paged_attention, paged_attention_ref
from kernels.lora import lora_expand, lora_shrink
from kernels.lora_ref import lora_expand_ref, lora_shrink_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}
DEV = "cuda"


def _cuda(*ts):
    return [t.to(DEV) for t in ts]


def lora_inputs(seg_lens, n_slots, popularity, max_rank, K, n_out, page_elems, dtype, seed, align=1):
    gen = torch.Generator().manual_seed(seed)
    ranks = random_ranks(n_slots, len(n_out), max_rank, gen)
    pool, pt, a_off, b_off = make_adapters(ranks, K, n_out, page_elems, torch.float32, gen, align=align)
    indptr, slots = make_batch(seg_lens, n_slots, popularity, gen)
    x = torch.randn(int(indptr[-1]), K, generator=gen)
    return _cuda(pool.to(dtype), pt, a_off, b_off, ranks, indptr, slots, x.to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kind", ["decode", "decode_aligned", "decode_aligned_small_pages", "prefill", "mixed_aligned"])
@pytest.mark.parametrize("popularity", ["distinct", "zipf", "identical"])
def test_lora_cuda(dtype, kind, popularity):
    """Llama-2-7B q/k/v shapes, 64 adapters of ranks up to 256 (several rank blocks, several expand
    passes): decode steps, prefill steps and a mixed step (prefill chunks of many tiles and decode tokens
    of many adapters), each through one plan as the engine passes it; small pages: rows straddle pages."""
    seg_lens = {"prefill": [128, 1, 300, 17, 64], "mixed_aligned": [1] * 60 + [700, 1, 1, 33, 129] + [1] * 40}.get(
        kind, [1] * 96
    )
    n_out = [4096, 1024, 1024]
    aligned = "aligned" in kind
    pool, pt, a_off, b_off, ranks, indptr, slots, x = lora_inputs(
        seg_lens, 64, popularity, 256, 4096, n_out, 192 if "small_pages" in kind else 131072, dtype,
        seed=len(seg_lens), align=64 if aligned else 1,
    )  # fmt: skip
    T, G, R = x.shape[0], len(n_out), 256
    msl = max(seg_lens)
    plan = kl.plan_for_step(indptr, slots, pt.shape[0], T, msl)
    fast = dict(aligned=aligned, plan=plan)
    lora_rows = torch.zeros(T, dtype=torch.bool)
    for i, s_ in enumerate(slots.tolist()):
        lora_rows[int(indptr[i]) : int(indptr[i + 1])] = s_ >= 0
    # a float32 v (as the engine passes it: the decode shrink splits K) and a v of the pool's dtype
    for v_dtype in (torch.float32, dtype):
        out = torch.full((T, G, R), float("nan"), device=DEV, dtype=v_dtype)
        want = out.clone()
        lora_shrink(x, pool, pt, a_off, ranks, indptr, slots, out, max_seg_len=msl, **fast)
        lora_shrink_ref(x, pool, pt, a_off, ranks, indptr, slots, want)
        torch.testing.assert_close(out[lora_rows], want[lora_rows], **TOL[dtype])
        base = torch.randn(T, 6200, device=DEV).to(dtype)
        y, want_y = base.clone()[:, 10 : 10 + 6144], base.clone()[:, 10 : 10 + 6144]
        scales = torch.rand(pt.shape[0], device=DEV) + 0.5
        offs = [0, 4096, 5120, 6144]
        lora_expand(y, want, pool, pt, b_off, ranks, scales, indptr, slots, offs, max_seg_len=msl, **fast)
        lora_expand_ref(want_y, want, pool, pt, b_off, ranks, scales, indptr, slots, offs)
        torch.testing.assert_close(y, want_y, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("Hq,Hkv,D", [(32, 32, 128), (32, 8, 128), (16, 2, 64)])
@pytest.mark.parametrize("batch,partition", [(8, 512), (8, 256), (160, 512)])
def test_attention_decode_cuda(dtype, Hq, Hkv, D, batch, partition, monkeypatch):
    """batch 8: split-K decode (few programs); batch 160 with 8+ KV heads: one pass per sequence."""
    monkeypatch.setattr(attention, "DECODE_PARTITION", partition)
    gen = torch.Generator().manual_seed(Hq + Hkv + D + batch)
    seq_lens = torch.randint(1, 3000, (batch - 2,), generator=gen).tolist() + [1, 4096]
    pool, table = make_kv_cache(seq_lens, 16, Hkv, D, torch.float32, gen)
    q = torch.randn(len(seq_lens), Hq, D, generator=gen)
    pool, table, q = _cuda(pool.to(dtype), table, q.to(dtype))
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEV)
    ind = torch.arange(len(seq_lens) + 1, dtype=torch.int32, device=DEV)
    out = torch.full_like(q, float("nan"))
    want = out.clone()
    paged_attention(q, pool, 16, Hkv, table, seq, ind, D**-0.5, out, max_q_len=1)
    paged_attention_ref(q, pool, 16, Hkv, table, seq, ind, D**-0.5, want)
    torch.testing.assert_close(out, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("window,softcap", [(0, 0.0), (512, 0.0), (4096, 50.0)])
def test_attention_windowed_softcapped_cuda(dtype, window, softcap, monkeypatch):
    """Gemma's sliding windows (512: Gemma 3 1B's; 4096: Gemma 2's, with its score soft-cap) on a mixed step:
    split decode rows (partitions wholly before the window), prefill over cached context past the window."""
    monkeypatch.setattr(attention, "DECODE_PARTITION", 256)
    gen = torch.Generator().manual_seed(window + 1)
    seq_lens, q_lens = [3000, 9, 6000, 700, 1300, 1], [1, 1, 1, 700, 200, 1]
    pool, table = make_kv_cache(seq_lens, 16, 4, 256, torch.float32, gen)
    q = torch.randn(sum(q_lens), 8, 256, generator=gen)
    pool, table, q = _cuda(pool.to(dtype), table, q.to(dtype))
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEV)
    ind = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    out = torch.full_like(q, float("nan"))
    want = out.clone()
    kw = dict(window=window, softcap=softcap)
    paged_attention(q, pool, 16, 4, table, seq, ind, 256**-0.5, out, max_q_len=700, num_decode=3, **kw)
    paged_attention_ref(q, pool, 16, 4, table, seq, ind, 256**-0.5, want, **kw)
    torch.testing.assert_close(out, want, **(TOL[dtype] if dtype != torch.float32 else dict(atol=1e-3, rtol=1e-3)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("Hq,Hkv,D", [(32, 8, 128), (8, 8, 64)])
def test_attention_prefill_cuda(dtype, Hq, Hkv, D):
    gen = torch.Generator().manual_seed(D)
    seq_lens, q_lens = [700, 1300, 5, 1, 257], [700, 200, 5, 1, 3]
    pool, table = make_kv_cache(seq_lens, 16, Hkv, D, torch.float32, gen)
    T = sum(q_lens)
    q = torch.randn(T, Hq, D, generator=gen)
    pool, table, q = _cuda(pool.to(dtype), table, q.to(dtype))
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEV)
    ind = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)
    out = torch.full_like(q, float("nan"))
    want = out.clone()
    paged_attention(q, pool, 16, Hkv, table, seq, ind, D**-0.5, out, max_q_len=max(q_lens))
    paged_attention_ref(q, pool, 16, Hkv, table, seq, ind, D**-0.5, want)
    torch.testing.assert_close(out, want, **(TOL[dtype] if dtype != torch.float32 else dict(atol=1e-3, rtol=1e-3)))


def test_kv_append_cuda_bf16():
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(20, 2 * 16 * 8 * 128, generator=gen).to(torch.bfloat16).to(DEV)
    want = pool.clone()
    slots = torch.randperm(20 * 16, generator=gen)[:100]
    slots[::7] = -1
    k, v = torch.randn(2, 100, 8, 128, generator=gen).to(torch.bfloat16).to(DEV)
    slots = slots.to(DEV)
    kv_append(pool, 16, k, v, slots)
    kv_append_ref(want, 16, k, v, slots)
    assert torch.equal(pool, want)


@pytest.mark.parametrize("aligned", [False, True])
def test_cuda_graph_decode_step(aligned):
    """Capture one decode step (kv_append -> paged_attention -> shrink -> expand) with static buffers,
    then replay it with new contents (new tokens, adapters, sequence lengths) and check each replay.
    aligned: the LoRA fast path, its plan built inside the graph once and shared by shrink and expand."""
    dtype, B, Hq, Hkv, D, P = torch.bfloat16, 8, 16, 2, 64, 16  # K = 1024: the aligned shrink splits K
    K, n_out, n_slots, max_pages = Hq * D, [Hq * D, Hkv * D, Hkv * D], 6, 64
    gen = torch.Generator().manual_seed(1)
    ranks = random_ranks(n_slots, 3, 32, gen)
    lpool, lpt, a_off, b_off = make_adapters(ranks, K, n_out, 65536, torch.float32, gen, align=64 if aligned else 1)
    lpool, lpt, a_off, b_off, ranks = _cuda(lpool.to(dtype), lpt, a_off, b_off, ranks)
    scales = torch.rand(n_slots, device=DEV) + 0.5
    kv_pool = torch.randn(B * max_pages, 2 * P * Hkv * D, generator=gen).to(dtype).to(DEV)
    table = torch.randperm(B * max_pages, generator=gen).view(B, max_pages).to(torch.int32).to(DEV)
    # static buffers
    x = torch.zeros(B, K, dtype=dtype, device=DEV)
    q = torch.zeros(B, Hq, D, dtype=dtype, device=DEV)
    k = torch.zeros(B, Hkv, D, dtype=dtype, device=DEV)
    v = torch.zeros(B, Hkv, D, dtype=dtype, device=DEV)
    seq_lens = torch.ones(B, dtype=torch.int32, device=DEV)
    slot_mapping = torch.zeros(B, dtype=torch.int64, device=DEV)
    q_indptr = torch.arange(B + 1, dtype=torch.int32, device=DEV)
    seg_slot = torch.zeros(B, dtype=torch.int32, device=DEV)
    attn_out = torch.zeros(B, Hq, D, dtype=dtype, device=DEV)
    vbuf = torch.zeros(B, 3, 32, dtype=torch.float32 if aligned else dtype, device=DEV)  # as the engine
    y = torch.zeros(B, sum(n_out) + 8, dtype=dtype, device=DEV)
    offs = [0, n_out[0], n_out[0] + n_out[1], sum(n_out)]

    def step():
        kv_append(kv_pool, P, k, v, slot_mapping)
        paged_attention(q, kv_pool, P, Hkv, table, seq_lens, q_indptr, D**-0.5, attn_out, max_q_len=1)
        fast = dict(aligned=True, plan=kl.plan_for_step(q_indptr, seg_slot, n_slots, B, 1)) if aligned else {}
        lora_shrink(x, lpool, lpt, a_off, ranks, q_indptr, seg_slot, vbuf, max_seg_len=1, **fast)
        lora_expand(
            y[:, 4 : 4 + sum(n_out)],
            vbuf,
            lpool,
            lpt,
            b_off,
            ranks,
            scales,
            q_indptr,
            seg_slot,
            offs,
            max_seg_len=1,
            **fast,
        )

    def fill(seed):
        g = torch.Generator().manual_seed(seed)
        x.copy_(torch.randn(B, K, generator=g))
        q.copy_(torch.randn(B, Hq, D, generator=g))
        k.copy_(torch.randn(B, Hkv, D, generator=g))
        v.copy_(torch.randn(B, Hkv, D, generator=g))
        lens = torch.randint(1, max_pages * P, (B,), generator=g)
        seq_lens.copy_(lens)
        pos = lens - 1
        slot_mapping.copy_(table.cpu().long()[torch.arange(B), pos // P] * P + pos % P)
        sl = torch.randint(-1, n_slots, (B,), generator=g)
        seg_slot.copy_(sl)
        y.copy_(torch.randn(B, y.shape[1], generator=g))

    fill(0)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up: compile every kernel outside the capture
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for seed in (1, 2, 3):
        fill(seed)
        pool0, y0 = kv_pool.clone(), y.clone()
        graph.replay()
        torch.cuda.synchronize()
        kv_append_ref(pool0, P, k, v, slot_mapping)
        assert torch.equal(kv_pool, pool0)
        want = torch.empty_like(attn_out)
        paged_attention_ref(q, pool0, P, Hkv, table, seq_lens, q_indptr, D**-0.5, want)
        torch.testing.assert_close(attn_out, want, **TOL[dtype])
        want_v = torch.empty_like(vbuf)
        lora_shrink_ref(x, lpool, lpt, a_off, ranks, q_indptr, seg_slot, want_v)
        rows = seg_slot >= 0  # rows of tokens without a LoRA are unspecified
        torch.testing.assert_close(vbuf[rows], want_v[rows], **TOL[dtype])
        lora_expand_ref(y0[:, 4 : 4 + sum(n_out)], want_v, lpool, lpt, b_off, ranks, scales, q_indptr, seg_slot, offs)
        torch.testing.assert_close(y, y0, **TOL[dtype])


def test_elementwise_cuda_bf16():
    """kernels/elementwise.py in bfloat16 on Llama-2-7B / Llama-3-8B row widths against the references."""
    from kernels.elementwise import (
        add_rms_norm,
        add_rms_norm_ref,
        gelu_mul,
        gelu_mul_ref,
        rms_norm,
        rms_norm_ref,
        rope,
        rope_ref,
        silu_mul,  # fmt: skip
        silu_mul_ref,
    )

    gen = torch.Generator(device=DEV).manual_seed(0)
    bf = torch.bfloat16
    for T in (1, 300, 4096):
        x = torch.randn(T, 4096, device=DEV, generator=gen).to(bf)
        w = (torch.rand(4096, device=DEV, generator=gen) + 0.5).to(bf)
        torch.testing.assert_close(rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5), atol=2e-2, rtol=2e-2)
        h, y = x.clone(), torch.randn(T, 4096, device=DEV, generator=gen).to(bf)
        h2 = h.clone()
        torch.testing.assert_close(add_rms_norm(h, y, w, 1e-5), add_rms_norm_ref(h2, y, w, 1e-5), atol=2e-2, rtol=2e-2)
        assert torch.equal(h, h2)
        gu = torch.randn(T, 2 * 14336, device=DEV, generator=gen).to(bf)
        torch.testing.assert_close(silu_mul(gu), silu_mul_ref(gu), atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(gelu_mul(gu), gelu_mul_ref(gu), atol=2e-2, rtol=2e-2)
        qkv = torch.randn(T, 6144, device=DEV, generator=gen).to(bf)  # 32 q heads, 8 k, 8 v of 128
        pos = torch.randint(0, 8000, (T,), device=DEV, generator=gen).float()
        f = pos[:, None] * (1.0 / 500000 ** (torch.arange(0, 128, 2, device=DEV).float() / 128))[None]
        want = qkv.clone()
        rope(qkv, f.cos(), f.sin(), 32, 8, 128)
        rope_ref(want, f.cos(), f.sin(), 32, 8, 128)
        torch.testing.assert_close(qkv, want, atol=2e-2, rtol=2e-2)
        wq, wk = (torch.rand(128, device=DEV, generator=gen) + 0.5).to(bf), torch.rand(128, device=DEV).to(bf)
        want = qkv.clone()  # Qwen3's q/k head norms fused into the rotation
        rope(qkv, f.cos(), f.sin(), 32, 8, 128, q_norm=wq, k_norm=wk, eps=1e-6)
        rope_ref(want, f.cos(), f.sin(), 32, 8, 128, q_norm=wq, k_norm=wk, eps=1e-6)
        torch.testing.assert_close(qkv, want, atol=3e-2, rtol=2e-2)
        want = qkv.clone()  # partial rotary, Phi-4-mini's: 96 of 128 dims
        rope(qkv, f[:, :48].cos(), f[:, :48].sin(), 32, 8, 128, rotary_dim=96)
        rope_ref(want, f[:, :48].cos(), f[:, :48].sin(), 32, 8, 128, rotary_dim=96)
        torch.testing.assert_close(qkv, want, atol=2e-2, rtol=2e-2)
