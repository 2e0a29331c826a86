"""The engine on the GPU: the Triton backend gives the torch backend's greedy tokens (float32) and
transformers + PEFT's; bfloat16 runs and stays close to float32."""

from __future__ import annotations

import json
import random
import threading

import pytest
import torch

from app import LLM, SamplingParams
from app.lora.layer import LORA_GROUPS
from tests.models import ADAPTERS, HFReference, make_model, make_peft_adapters

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module", params=["gqa", "mha", "qwen3", "phi3", "gemma2"])
def setup(request, tmp_path_factory):
    """gqa: the k/v LoRA outputs are 32 wide (generic decode kernels for q/k/v); mha: all 64 wide (the
    aligned fast path for the q/k/v group too); qwen3: q/k head norms fused into RoPE, head_dim 32; phi3:
    fused checkpoint and adapters, partial rotary, LongRoPE; gemma2: sliding windows and soft caps."""
    root = tmp_path_factory.mktemp("gpu")
    model = make_model(root, request.param)
    adapters = make_peft_adapters(root, model)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    rng = random.Random(5)
    names = list(ADAPTERS) + [None]
    reqs = [([rng.randrange(3, vocab) for _ in range(rng.choice([1, 3, 17, 40, 90]))], names[i % 9]) for i in range(36)]
    return model, {k: str(v) for k, v in adapters.items()}, reqs


def generate(model, adapters, reqs, n=10, **cfg):
    llm = LLM(model=str(model), adapters=adapters, device="cuda", **cfg)
    outs = llm.generate(
        [r[0] for r in reqs],
        adapters=[r[1] for r in reqs],
        sampling_params=SamplingParams(max_tokens=n, temperature=0, ignore_eos=True),
    )
    assert llm.engine.is_idle_clean()
    return [o.token_ids for o in outs]


def test_triton_equals_torch_and_peft_float32(setup):
    model, adapters, reqs = setup
    tri = generate(model, adapters, reqs, dtype="float32", kernel_backend="triton")
    ref = generate(model, adapters, reqs, dtype="float32", kernel_backend="torch")
    assert tri == ref
    hf = HFReference(model, {k: v for k, v in adapters.items()})
    assert tri == [hf.greedy(ids, a, 10) for ids, a in reqs]


def test_triton_tiny_pool_float32(setup):
    model, adapters, reqs = setup
    ref = generate(model, adapters, reqs, dtype="float32", kernel_backend="torch")
    small = generate(
        model,
        adapters,
        reqs,
        dtype="float32",
        kernel_backend="triton",
        pool={"page_size": 16, "num_pages": 120},
        scheduler={"max_num_batched_tokens": 128},
    )
    assert small == ref


def evicting_pool(model, adapters) -> dict:
    """LLM arguments (float32, Triton) with a pool too small for every adapter at once: room for the largest,
    a sequence's KV (<= 7 pages) and half the others; 4 sequences, 64 tokens a step."""
    probe = LLM(model=str(model), adapters=adapters, device="cuda", dtype="float32", warmup="off")
    sizes = [probe.engine.adapters[name].num_pages for name in adapters]
    del probe
    pages = max(sizes) + 8 + (sum(sizes) - max(sizes) - 8) // 2
    assert pages < sum(sizes), sizes
    return dict(dtype="float32", kernel_backend="triton", pool={"page_size": 16, "num_pages": pages},
                scheduler={"max_num_seqs": 4, "max_num_batched_tokens": 64})  # fmt: skip


def test_prefetch_under_evictions_changes_no_token(setup):
    """Adapters prefetched on the copy stream for queued requests give the tokens of an engine without
    prefetch, in a pool too small for every adapter at once: prefetched and cached adapters are evicted
    while requests queue, and their pages reused."""
    model, adapters, reqs = setup
    cfg = evicting_pool(model, adapters)
    ref = generate(model, adapters, reqs, lora={"prefetch": False}, **cfg)
    llm = LLM(model=str(model), adapters=adapters, device="cuda", **cfg)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    outs = llm.generate([r[0] for r in reqs], adapters=[r[1] for r in reqs], sampling_params=params)
    assert [o.token_ids for o in outs] == ref
    e = llm.engine
    assert e.scheduler.num_prefetches > 0 and e.pool.evictions > 0, (e.scheduler.num_prefetches, e.pool.evictions)
    assert e.is_idle_clean()


def test_prefetch_behind_the_steps_changes_no_token(setup, monkeypatch):
    """The compute stream waits for the prefetched copies on the side stream (ModelRunner._load_adapters):
    with every such copy held back (a ~5 ms device sleep before it), the host runs ahead of the copies, and
    the tokens still equal an engine without prefetch, in a pool where prefetched adapters are evicted and their
    pages reused as KV. (Without the wait it fails: benchmarks/results/session-2026-12-07d/ runs 3-4.)"""
    model, adapters, reqs = setup
    cfg = evicting_pool(model, adapters)
    ref = generate(model, adapters, reqs, lora={"prefetch": False}, **cfg)
    llm = LLM(model=str(model), adapters=adapters, device="cuda", **cfg)
    runner = llm.engine.executor
    fill, delayed = runner.fill_adapter_pages, []

    def slow_fill(name, pages):
        if torch.cuda.current_stream() == runner.copy_stream:
            torch.cuda._sleep(10_000_000)  # ~5 ms of device clock cycles
            delayed.append(name)
        fill(name, pages)

    monkeypatch.setattr(runner, "fill_adapter_pages", slow_fill)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    outs = llm.generate([r[0] for r in reqs], adapters=[r[1] for r in reqs], sampling_params=params)
    assert [o.token_ids for o in outs] == ref
    assert delayed and llm.engine.pool.evictions > 0, (len(delayed), llm.engine.pool.evictions)
    assert llm.engine.is_idle_clean()


def test_prefix_cached_requests_equal_uncached_float32(setup):
    """Prefix caching on the GPU (Triton kernels, CUDA graphs, asynchronous scheduling): a second wave whose
    requests share their adapter's cached system prompt, repeat a first-wave prompt (one token left to
    compute: a one-token row of a new request in a decode step) or continue a first-wave conversation gives
    the tokens of the torch backend without caching."""
    model, adapters, _ = setup
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    rng = random.Random(8)
    names = [*adapters, None]
    system = {a: [rng.randrange(3, vocab) for _ in range(48)] for a in names}
    wave1 = [(system[a] + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 20))], a) for a in names]
    wave2 = [(system[a] + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 20))], a) for a in names]
    wave2 += [(system[a] + [7] * 16 + [9], a) for a in names[:3]]  # 65 tokens: after wave 1's copy, 1 to compute
    wave1 += [(system[a] + [7] * 16 + [9], a) for a in names[:3]]
    want = [generate(model, adapters, w, dtype="float32", kernel_backend="torch",
                     pool={"enable_prefix_caching": False}) for w in (wave1, wave2)]  # fmt: skip
    llm = LLM(model=str(model), adapters=adapters, device="cuda", dtype="float32", kernel_backend="triton")
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    got = []
    for w in (wave1, wave2):
        outs = llm.generate([r[0] for r in w], adapters=[r[1] for r in w], sampling_params=params)
        got.append([o.token_ids for o in outs])
    cached = [o.metrics["num_cached_tokens"] for o in outs]
    assert got == want
    assert all(c >= 48 for c in cached) and cached[-1] == 64, cached
    assert llm.engine.is_idle_clean()


def test_bfloat16_close_to_float32(setup):
    model, adapters, reqs = setup
    f32 = generate(model, adapters, reqs, n=1, dtype="float32", kernel_backend="triton")
    b16 = generate(model, adapters, reqs, n=1, dtype="bfloat16", kernel_backend="triton")
    b16_ref = generate(model, adapters, reqs, n=1, dtype="bfloat16", kernel_backend="torch")
    agree = sum(a == b for a, b in zip(f32, b16)) / len(reqs)
    agree_ref = sum(a == b for a, b in zip(b16_ref, b16)) / len(reqs)
    assert agree >= 0.8 and agree_ref >= 0.8, (agree, agree_ref)


def test_adapters_pageable_at_start_then_pinned_beside_the_steps(setup):
    """add_adapters(pin=False) (a server's start) leaves the host copies pageable; pin_adapters, run in
    another thread while requests run, moves them to pinned memory; the tokens are those of adapters pinned
    at once, before, during and after."""
    model, adapters, reqs = setup
    ref = generate(model, adapters, reqs, dtype="float32", kernel_backend="triton")
    llm = LLM(model=str(model), device="cuda", dtype="float32", kernel_backend="triton")
    llm.engine.add_adapters(adapters, pin=False)
    shards = llm.engine.executor.adapters
    assert set(shards) == set(adapters) and not any(p.data.is_pinned() for p in shards.values())
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    pinned: list[int] = []
    t = threading.Thread(target=lambda: pinned.append(llm.engine.pin_adapters()))
    t.start()
    during = llm.generate([r[0] for r in reqs], adapters=[r[1] for r in reqs], sampling_params=params)
    t.join()
    assert pinned == [len(adapters)] and all(p.data.is_pinned() for p in shards.values())
    assert llm.engine.pin_adapters() == 0
    for name in adapters:  # the next requests fill their pages from the pinned copies
        if llm.engine.pool.is_resident(name):
            llm.engine.pool.evict(name)
    after = llm.generate([r[0] for r in reqs], adapters=[r[1] for r in reqs], sampling_params=params)
    assert [o.token_ids for o in during] == ref == [o.token_ids for o in after]


def test_cuda_graphs_equal_eager(setup):
    """Decode steps replayed from CUDA graphs (several batch-size buckets as requests finish, padding
    rows, mixed adapters) give the eager path's tokens."""
    model, adapters, reqs = setup
    params = [SamplingParams(max_tokens=2 + i % 12, temperature=0, ignore_eos=True) for i in range(len(reqs))]
    res = []
    for graphs in (False, True):
        llm = LLM(
            model=str(model),
            adapters=adapters,
            device="cuda",
            dtype="float32",
            kernel_backend="triton",
            cuda_graphs=graphs,
            scheduler={"max_num_seqs": 64},
        )
        outs = llm.generate([r[0] for r in reqs], adapters=[r[1] for r in reqs], sampling_params=params)
        res.append([o.token_ids for o in outs])
    assert res[0] == res[1]
    assert len(llm.engine.executor.graphs.graphs) >= 3  # several buckets were captured and replayed


class _Replays(dict):
    """A DecodeGraphs.graphs that records the keys replayed."""

    def __init__(self):
        super().__init__()
        self.used = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)


def test_cuda_graphs_plan_slot_bounds_equal_eager(setup):
    """Decode graphs per adapter-slot bound of the LoRA plan (app/cuda_graphs.py): steps of few adapters replay
    the graph whose plan is built for 16 slots, steps of more than 16 the one for max_loras_per_batch (64 here;
    the test adapters under three names each: 24 adapters), with the eager path's tokens."""
    model, adapters, reqs = setup
    many = {f"{name}-{i}": path for i in range(3) for name, path in adapters.items()}
    names = [*many, None]
    waves = [[(ids, names[i % 4]) for i, (ids, _) in enumerate(reqs)],  # 4 adapters in a step
             [(ids, names[i % len(names)]) for i, (ids, _) in enumerate(reqs)]]  # fmt: skip
    p = [SamplingParams(max_tokens=2 + i % 12, temperature=0, ignore_eos=True) for i in range(len(reqs))]
    for wave in waves:
        outs = []
        for graphs in (False, True):
            llm = LLM(model=str(model), adapters=many, device="cuda", dtype="float32", kernel_backend="triton",
                      cuda_graphs=graphs, warmup="off", scheduler={"max_num_seqs": 64})  # fmt: skip
            if graphs:
                replays = llm.engine.executor.graphs.graphs = _Replays()
            outs.append([o.token_ids for o in llm.generate([r[0] for r in wave], p, [r[1] for r in wave])])
        assert outs[0] == outs[1]
        bounds = {n for bs, groups, n in replays.used if groups and bs > 16}
        assert (bounds == {16}) if wave is waves[0] else (64 in bounds), sorted(replays.used)


class _CountingStream(torch.cuda.Stream):
    """A side stream that counts the forks onto it (wait_stream calls)."""

    forks = 0

    def wait_stream(self, stream):
        self.forks += 1
        super().wait_stream(stream)


def test_lora_shrink_side_stream_equals_one_stream(setup):
    """LoRAConfig.overlap_shrink: in the decode graphs each shrink forks onto a second stream beside its group's
    base matmul and joins before the expand; the tokens equal the one-stream eager ones (float32, mixed
    adapters, several buckets), and eager steps stay on one stream."""
    model, adapters, reqs = setup
    p = [SamplingParams(max_tokens=2 + i % 12, temperature=0, ignore_eos=True) for i in range(len(reqs))]
    outs, forks = [], []
    for graphs, overlap in ((False, False), (False, True), (True, True)):
        llm = LLM(model=str(model), adapters=adapters, device="cuda", dtype="float32", kernel_backend="triton",
                  cuda_graphs=graphs, warmup="off", scheduler={"max_num_seqs": 64},
                  lora={"overlap_shrink": overlap})  # fmt: skip
        ex = llm.engine.executor
        assert (ex.lora_stream is not None) == overlap
        if overlap:
            ex.lora_stream = _CountingStream(priority=-1)
        outs.append([o.token_ids for o in llm.generate([r[0] for r in reqs], p, [r[1] for r in reqs])])
        forks.append(ex.lora_stream.forks if overlap else None)
    assert outs[1] == outs[0] and outs[2] == outs[0]
    assert forks[1] == 0 and forks[2] > 0, forks  # eager: one stream; graphs: the captures forked


def test_cuda_graphs_of_the_base_model_alone_launch_no_lora_kernel(setup):
    """A decode step without adapters replays the graph without LoRA kernels and gives the eager tokens."""
    model, adapters, reqs = setup
    base = [(r[0], None) for r in reqs]
    outs = [generate(model, adapters, base, n=6, dtype="float32", kernel_backend="triton", cuda_graphs=g)
            for g in (False, True)]  # fmt: skip
    assert outs[0] == outs[1]
    llm = LLM(model=str(model), device="cuda", dtype="float32", kernel_backend="triton", warmup="off")
    llm.generate([r[0] for r in base], sampling_params=SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    graphs = llm.engine.executor.graphs
    assert graphs.graphs and all(not groups for _, groups, _ in graphs.graphs)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
    with prof:
        llm.generate([[5, 6, 7]] * 3, sampling_params=SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
        torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    assert names and not any("lora" in n for n in names), sorted(n for n in names if "lora" in n)


def test_cuda_graphs_run_only_the_targeted_lora_groups(setup):
    """A decode step whose adapters target attention only replays a graph without the MLP groups' LoRA
    kernels (and one with only the MLP's, the other way), with the eager path's tokens."""
    model, adapters, reqs = setup
    for names, groups in (
        (["a-r1-q", "a-r8-attn", None], ("qkv", "o")),
        (["a-r16-mlp", "a-r4-down"], ("gate_up", "down")),
    ):
        sub = [(ids, names[i % len(names)]) for i, (ids, _) in enumerate(reqs)]
        outs, keys = [], None
        for g in (False, True):
            llm = LLM(model=str(model), adapters=adapters, device="cuda", dtype="float32", kernel_backend="triton",
                      cuda_graphs=g, warmup="off")  # fmt: skip
            p = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
            outs.append([o.token_ids for o in llm.generate([r[0] for r in sub], p, [r[1] for r in sub])])
            keys = llm.engine.executor.graphs.graphs if g else keys
        assert outs[0] == outs[1]
        assert keys and {k[1] for k in keys} <= {groups, ()} and any(k[1] == groups for k in keys), sorted(keys)


def test_warmup_captures_every_graph_and_changes_nothing(setup):
    """warmup (auto: on with CUDA) compiles the kernels and captures every decode-graph bucket before the
    first request, leaves the engine idle with no pages held, and the greedy tokens are an engine
    without warmup's."""
    model, adapters, reqs = setup
    cfg = dict(dtype="float32", kernel_backend="triton", scheduler={"max_num_seqs": 16})
    llm = LLM(model=str(model), adapters=adapters, device="cuda", **cfg)
    e = llm.engine
    graphs = e.executor.graphs
    assert graphs.buckets == [1, 2, 4, 8, 16]  # each bucket with LoRA and for steps of the base model alone
    # the warm-up adapters target every module; then the LoRA groups of each of the test adapters (ranks 1-64
    # on q, q/v, q/k/v/o, the MLP, down, k/o/up, all seven modules: warmup_adapter_graphs)
    kinds = {(), tuple(LORA_GROUPS)} | {info.groups for info in e.adapters.values()}
    assert len(kinds) >= 6 and e.warmup_s is not None
    assert set(graphs.graphs) == {(b, g, graphs.max_loras) for b in graphs.buckets for g in kinds}  # no bound < 16
    s = e.pool_stats()
    assert e.is_idle_clean() and not e.requests and (s.kv, s.adapter, s.free, s.loads) == (0, 0, s.total, 0)
    assert e.steps == 0 and "sloray/warmup" not in e.executor.adapters
    e.pool.check()
    outs = llm.generate(
        [r[0] for r in reqs],
        adapters=[r[1] for r in reqs],
        sampling_params=SamplingParams(max_tokens=10, temperature=0, ignore_eos=True),
    )
    assert [o.token_ids for o in outs] == generate(model, adapters, reqs, warmup="off", **cfg)


def test_h2d_many_one_copy_aligned_views():
    """A step's metadata in one host-to-device copy: every part equals torch.tensor of it, in its dtype and
    shape, at a 16-byte aligned address (Triton specializes pointers on it)."""
    import numpy as np

    from app.runner import h2d_many

    parts = [
        ([1, 2, 3], torch.int32),
        ([[5, 6], [7, 8], [9, 10]], torch.int32),
        ([], torch.int64),
        (np.arange(12, dtype=np.int32).reshape(3, 4), torch.int32),
        ([2**40, -1], torch.int64),
        ([0.25, 3.5], torch.float32),
    ]
    for (values, dtype), t in zip(parts, h2d_many(parts, "cuda")):
        want = torch.as_tensor(np.asarray(values), dtype=dtype)
        assert t.device.type == "cuda" and t.dtype == dtype and t.data_ptr() % 16 == 0
        assert torch.equal(t.cpu(), want)


def variant_diff(name: str, late: dict, warm: list[dict]) -> str:
    """A kernel variant built after warm-up, as what differs from the nearest variant warm-up built (Triton's
    specialization data: signature, constexprs, argument attributes such as 16-byte alignment)."""
    if not warm:
        return f"{name}: no variant of it in warm-up; {json.dumps(late)[:1500]}"

    def diff(w: dict) -> dict:
        return {k: (w.get(k), v) for k, v in late.items() if w.get(k) != v}

    return f"{name}: (warm-up, serving) where they differ: {json.dumps(min(map(diff, warm), key=len))[:1500]}"


@pytest.mark.parametrize("kind", ["demo", "qwen2"])
def test_no_kernel_compiles_after_warmup(tmp_path, kind):
    """Warm-up compiles every Triton kernel variant that serving needs: a flood-like mix afterwards (the demo
    as `serve_config.yaml` runs it: 64 seats, prompts of 1-600 tokens arriving a few per step while others
    decode, with and without adapters of every demo rank, greedy and sampled) makes Triton build nothing
    more and captures no CUDA graph of the kinds warm-up captures (`warmup_adapter_graphs`'s too). A build
    mid-serving stalls the whole step, seconds on a fresh machine's empty cache: the first flood after a fresh
    start had TTFT p90 1.5 s where later floods had 0.8-1.0 s (session-2026-12-04e). qwen2: another model
    (q/k/v bias, tied embeddings, GQA, a 512-token context) with the test adapters (ranks 1-64, every target
    set)."""
    import triton

    from app.demo import build_demo

    if kind == "demo":
        demo = build_demo(tmp_path / "demo")
        model, adapters = demo / "model", str(demo / "adapters")
    else:
        model = make_model(tmp_path, kind)
        adapters = {k: str(v) for k, v in make_peft_adapters(tmp_path, model).items()}
    builds: dict[str, list[tuple[str, dict]]] = {"warm-up": [], "serving": []}
    phase = "warm-up"

    def hook(*, repr, compile, **_):  # a kernel variant not in memory: Triton builds or loads it
        data = compile.get("specialization_data")
        builds[phase].append((repr.partition("[")[0], json.loads(data) if data else {"repr": repr}))
        return None

    old, triton.knobs.runtime.jit_cache_hook = triton.knobs.runtime.jit_cache_hook, hook
    try:
        llm = LLM(
            str(model),
            adapters=adapters,
            device="cuda",
            scheduler={"max_num_seqs": 64},
            lora={"max_lora_rank": 64},
        )
        e = llm.engine
        assert e.warmup_s is not None
        names = [None, *sorted(e.adapters)]
        graphs = set(e.executor.graphs.graphs)  # the decode CUDA graphs captured by warm-up
        phase = "serving"
        rng = random.Random(0)
        vocab = e.args.vocab_size
        for i in range(240):
            n = min(rng.choice([1, 2, 5, 8, 13, 16, 17, 31, 40, 64, 100, 250, 600]), e.max_model_len - 64)
            params = SamplingParams(
                max_tokens=rng.randint(1, 64), temperature=rng.choice([0.0, 1.0]), ignore_eos=True, seed=i
            )
            e.add_request([rng.randrange(3, vocab) for _ in range(n)], params, names[i % len(names)], f"r{i}")
            if rng.random() < 0.4:  # a few arrivals per step: prefill chunks beside decoding requests
                e.step()
        while e.has_unfinished():
            e.step()
    finally:
        triton.knobs.runtime.jit_cache_hook = old
    assert e.is_idle_clean()
    assert not builds["serving"], f"{len(builds['serving'])} kernel variant(s) built after warm-up:\n" + "\n".join(
        variant_diff(name, data, [d for n, d in builds["warm-up"] if n == name]) for name, data in builds["serving"]
    )
    # and no graph of the kinds warm-up captures (the base model alone, every LoRA group, the groups of each
    # adapter: the demo's q/v, MLP, q/k/v/o ... adapters) captured mid-serving; a step mixing adapters of
    # different sets runs their union, captured on first use, by design (app/cuda_graphs.py)
    warm = {(), tuple(LORA_GROUPS)} | {info.groups for info in e.adapters.values()}
    late = {g for _, g, _ in set(e.executor.graphs.graphs) - graphs}
    assert not late & warm, late & warm
