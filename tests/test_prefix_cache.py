"""Prefix caching (app/pool.py, app/scheduler.py): the pool's block cache (keys, reference counts, idle
pages evicted first, invariants under random operations) and the engine reusing cached pages with greedy
float32 tokens still equal to transformers + PEFT's: shared prefixes across waves and in one wave, several
adapters on the same prompt, chunked prefill, preemption, prompt logprobs, an adapter reloaded under the
same name."""

from __future__ import annotations

import random

import pytest

from app import LLM, SamplingParams
from app.model.llama import ModelArgs
from app.pool import PagePool
from tests.models import ADAPTERS, HFReference, make_model, make_peft_adapters


def blocks(tokens: list[int], ps: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + ps]) for i in range(0, len(tokens) - len(tokens) % ps, ps)]


def test_pool_blocks_are_shared_then_cached_then_evicted_first():
    pool = PagePool(num_pages=12, page_size=4, prefix_caching=True)
    toks = list(range(100, 112))  # three blocks
    assert pool.grow_kv("r1", 12)
    pool.register_blocks("r1", "a", blocks(toks, 4)[:2])
    assert pool.registered_blocks("r1") == 2
    pool.register_blocks("r1", "a", blocks(toks, 4)[2:])
    r1 = list(pool.kv_pages("r1"))
    assert pool.match_prefix("a", blocks(toks, 4)) == r1
    assert pool.match_prefix(None, blocks(toks, 4)) == []  # the base model's K/V differ from an adapter's
    assert pool.match_prefix("b", blocks(toks, 4)) == []
    assert pool.match_prefix("a", blocks(toks[:4] + [0] * 4 + toks[8:], 4)) == pool.kv_pages("r1")[:1]
    # a second request attaches the first two blocks: the pages are held twice
    shared = pool.match_prefix("a", blocks(toks, 4)[:2])
    pool.attach_prefix("r2", "a", shared)
    assert pool.grow_kv("r2", 16) and pool.kv_pages("r2")[:2] == shared and pool.stats().kv == 5
    # r2 computes block 2 again (same tokens): the cached page keeps the key, r2's copy stays private
    pool.register_blocks("r2", "a", blocks(toks, 4)[2:3])
    assert pool.match_prefix("a", blocks(toks, 4))[2] == pool.kv_pages("r1")[2]
    pool.free_kv("r1")
    s = pool.stats()
    assert (s.kv, s.kv_cached, s.free) == (4, 1, 7)  # r1's third block idle; its first two still held by r2
    pool.check()
    pool.free_kv("r2")
    s = pool.stats()
    assert (s.kv, s.kv_cached, s.free) == (0, 3, 9) and pool.available() == 12
    pool.check()
    # an adapter needing 10 pages: the idle blocks go first, the deepest first
    assert pool.load_adapter("x", 10) is not None
    assert pool.stats().kv_cached == 2 and pool.match_prefix("a", blocks(toks, 4)) == r1[:2]
    pool.check()
    assert pool.drop_prefixes("a") == 2 and pool.stats().kv_cached == 0 and pool.num_free == 2
    pool.check()


def test_pool_without_prefix_caching_frees_at_once():
    pool = PagePool(num_pages=4, page_size=4)
    assert pool.grow_kv("r", 8)
    pool.register_blocks("r", None, [(1, 2, 3, 4), (5, 6, 7, 8)])  # a no-op
    assert pool.match_prefix(None, [(1, 2, 3, 4)]) == []
    pool.free_kv("r")
    assert pool.num_free == 4 and pool.stats().kv_cached == 0
    pool.check()


def test_static_split_counts_idle_blocks_as_kv():
    pool = PagePool(num_pages=10, page_size=4, adapter_limit=4, prefix_caching=True)
    assert pool.grow_kv("r", 24)
    pool.register_blocks("r", None, blocks(list(range(24)), 4))
    pool.free_kv("r")
    assert pool.stats().kv_cached == 6 and pool.num_free == 4
    assert pool.load_adapter("x", 4) is not None and pool.stats().kv_cached == 6  # the adapters' share was free
    assert pool.grow_kv("s", 20) and pool.stats().kv_cached == 1  # KV's share: the idle blocks make room
    assert not pool.grow_kv("t", 8)  # one idle page left in KV's share, two needed
    pool.check()


def test_pool_invariants_with_prefix_caching_under_random_operations():
    """Random requests growing, registering, attaching matched prefixes and freeing, adapters loading and
    pinned, blocks dropped: every page owned exactly once, reference counts exact, matches always the
    registered pages of equal keys."""
    rng = random.Random(3)
    pool = PagePool(num_pages=48, page_size=2, prefix_caching=True)
    seqs: dict[str, tuple[str | None, list[int]]] = {}
    pins: dict[str, int] = {}
    for _ in range(4000):
        op = rng.random()
        rid = f"r{rng.randrange(12)}"
        adapter = rng.choice([None, "a0", "a1"])
        if op < 0.3 and rid not in seqs:
            toks = [rng.randrange(3) for _ in range(rng.randint(1, 14))]  # few symbols: many shared prefixes
            pages = pool.match_prefix(adapter, blocks(toks[:-1], 2))
            pool.attach_prefix(rid, adapter, pages)
            if pool.grow_kv(rid, len(toks)):
                seqs[rid] = (adapter, toks)
            else:
                pool.free_kv(rid)
        elif op < 0.55 and rid in seqs:
            adapter, toks = seqs[rid]
            have = pool.registered_blocks(rid)
            pool.register_blocks(rid, adapter, blocks(toks, 2)[have:])
        elif op < 0.75 and rid in seqs:
            pool.free_kv(rid)
            del seqs[rid]
        elif op < 0.85:
            name = f"x{rng.randrange(4)}"
            if pool.load_adapter(name, rng.randint(1, 6)) is not None:
                pool.pin(name)
                pins[name] = pins.get(name, 0) + 1
        elif op < 0.95:
            name = rng.choice([n for n, c in pins.items() if c] or ["none"])
            if pins.get(name):
                pool.unpin(name)
                pins[name] -= 1
        else:
            pool.drop_prefixes(adapter, everything=rng.random() < 0.3)
        pool.check()
        held = {p for r in seqs for p in pool.kv_pages(r)}
        for adapter, toks in seqs.values():
            got = pool.match_prefix(adapter, blocks(toks, 2))
            assert len(got) <= len(blocks(toks, 2)) and len(set(got)) == len(got)
            # a matched page is held or idle: never one an allocation could hand out as free
            assert len(set(got) - held) <= pool.stats().kv_cached
    for rid in list(seqs):
        pool.free_kv(rid)
    assert pool.stats().kv == 0
    pool.check()


# ---- the engine --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["gqa", "phi3"])
def setup(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("pc")
    model = make_model(root, request.param)
    specs = {n: ADAPTERS[n] for n in ("a-r8-attn", "a-r16-mlp", "a-r64-all")}
    adapters = make_peft_adapters(root, model, specs)
    return root, model, adapters, HFReference(model, adapters), ModelArgs.from_dir(model).vocab_size


def make_llm(model, adapters, **cfg) -> LLM:
    return LLM(model=str(model), adapters={k: str(v) for k, v in adapters.items()}, device="cpu", dtype="float32",
               **cfg)  # fmt: skip


def generate(llm, reqs, **params):
    return llm.generate(
        [ids for ids, _, _ in reqs],
        adapters=[a for _, a, _ in reqs],
        sampling_params=[SamplingParams(max_tokens=m, temperature=0.0, ignore_eos=True, **params) for _, _, m in reqs],
    )


def check(ref, reqs, outs):
    bad = [(i, a) for i, ((ids, a, m), o) in enumerate(zip(reqs, outs)) if o.token_ids != ref.greedy(ids, a, m)]
    assert not bad, f"{len(bad)} requests differ from transformers + PEFT: {bad[:4]}"


def test_shared_prefixes_reuse_pages_and_equal_peft(setup):
    """Wave 1 fills the cache; wave 2 has the same system prompt with other questions, the same prompts
    again, each first-wave conversation continued (its prompt + output + a new turn), and the same prompt
    under another adapter and the base model (never matched across them); tokens equal transformers +
    PEFT's and the hits are counted per request."""
    _, model, adapters, ref, vocab = setup
    rng = random.Random(5)
    system = [rng.randrange(3, vocab) for _ in range(37)]
    names = [*adapters, None]
    wave1 = [(system + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 9))], names[i % 4], 6) for i in range(6)]
    llm = make_llm(model, adapters, pool={"page_size": 4}, scheduler={"max_num_batched_tokens": 64})
    out1 = generate(llm, wave1)
    check(ref, wave1, out1)
    assert llm.engine.scheduler.prefix_hit_tokens >= 4 * 4  # wave 1's later requests found the system prompt
    sch = llm.engine.scheduler
    before = sch.prefix_hit_tokens
    wave2 = [
        *((system + [rng.randrange(3, vocab) for _ in range(5)], names[i % 4], 5) for i in range(4)),
        *((ids, a, 4) for ids, a, _ in wave1[:3]),
        *(
            (ids + o.token_ids + [rng.randrange(3, vocab) for _ in range(3)], a, 5)
            for (ids, a, _), o in zip(wave1, out1)
        ),  # fmt: skip
        (wave1[0][0], names[1], 4),
        (wave1[1][0], None, 4),
    ]
    out2 = generate(llm, wave2)
    check(ref, wave2, out2)
    cached = [o.metrics["num_cached_tokens"] for o in out2]
    assert all(c >= 36 for c in cached[:13]), cached  # the system prompt's 9 full pages at least
    assert all(c % 4 == 0 and c < len(r[0]) for c, r in zip(cached, wave2))
    assert sch.prefix_hit_tokens - before == sum(cached)
    llm.engine.pool.check()
    s = llm.engine.pool_stats()
    assert s.kv == 0 and s.kv_cached > 0 and s.free + s.adapter + s.kv_cached == s.total


def test_prefix_caching_under_preemption_chunks_and_a_small_pool(setup):
    """A pool too small for the batch: requests are preempted and recomputed (matching their own blocks),
    idle blocks are evicted for KV and adapters, prefills run in chunks; tokens still equal."""
    _, model, adapters, ref, vocab = setup
    rng = random.Random(9)
    system = [rng.randrange(3, vocab) for _ in range(21)]
    names = [*adapters, None]
    reqs = [(system + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 6))], names[i % 4], 12) for i in range(12)]
    probe = make_llm(model, adapters, pool={"page_size": 4})
    pages = sum(a.num_pages for a in probe.engine.adapters.values()) + 40
    llm = make_llm(model, adapters, pool={"page_size": 4, "num_pages": pages},
                   scheduler={"max_num_batched_tokens": 24, "max_num_seqs": 8})  # fmt: skip
    outs = generate(llm, reqs)
    check(ref, reqs, outs)
    sch = llm.engine.scheduler
    assert sch.num_preemptions > 0 and sch.prefix_hit_tokens > 0
    llm.engine.pool.check()


def test_prompt_logprobs_are_computed_not_matched(setup):
    """A request asking for prompt logprobs computes its whole prompt even when it is cached: every
    prompt logprob is there and equals transformers + PEFT's."""
    _, model, adapters, ref, vocab = setup
    rng = random.Random(2)
    ids = [rng.randrange(3, vocab) for _ in range(19)]
    name = next(iter(adapters))
    llm = make_llm(model, adapters, pool={"page_size": 4})
    generate(llm, [(ids, name, 2)])
    (out,) = generate(llm, [(ids, name, 2)], prompt_logprobs=0)
    assert out.metrics["num_cached_tokens"] == 0 and len(out.prompt_logprobs) == len(ids)
    want = ref.logprobs(ids, name)
    for i, lp in enumerate(out.prompt_logprobs[1:], start=1):
        assert abs(lp.logprob - float(want[i - 1, ids[i]])) < 1e-4
    (again,) = generate(llm, [(ids, name, 2)])
    assert again.metrics["num_cached_tokens"] == 16


def test_reloaded_adapter_does_not_match_the_old_one(setup):
    """Unloading an adapter drops its cached blocks: a different adapter loaded under the same name
    computes its own K/V (its tokens equal transformers + PEFT's with the new weights)."""
    root, model, adapters, ref, vocab = setup
    name = next(iter(adapters))
    other = make_peft_adapters(root / "other", model, {name: ADAPTERS["a-r16-ko-up"]})
    ref2 = HFReference(model, other)
    rng = random.Random(4)
    ids = [rng.randrange(3, vocab) for _ in range(30)]
    llm = make_llm(model, adapters, pool={"page_size": 4})
    check(ref, [(ids, name, 5)], generate(llm, [(ids, name, 5)]))
    llm.remove_adapter(name)
    llm.add_adapter(name, str(other[name]))
    (out,) = generate(llm, [(ids, name, 5)])
    assert out.metrics["num_cached_tokens"] == 0
    check(ref2, [(ids, name, 5)], [out])


def test_cache_salt_separates_the_cached_prefixes(setup):
    """vLLM's cache_salt: requests share cached prefix pages only with requests of the same salt (and
    adapter); unsalted requests share among themselves; the tokens are the same either way. In the pool:
    a salted chain is not found unsalted or under another salt."""
    _, model, adapters, ref, vocab = setup
    name = next(iter(adapters))
    ids = list(range(3, 40))
    llm = make_llm(model, adapters, pool={"page_size": 4})
    runs = [(None, 0), ("tenant-a", 0), ("tenant-a", 36), ("tenant-b", 0), (None, 36)]
    outs = []
    for salt, cached in runs:  # one at a time: each finds what the ones before it left
        (out,) = generate(llm, [(ids, name, 3)], cache_salt=salt)
        assert out.metrics["num_cached_tokens"] == cached, (salt, out.metrics)
        outs.append(out)
    check(ref, [(ids, name, 3)] * len(outs), outs)
    with pytest.raises(ValueError, match="cache_salt"):
        SamplingParams(cache_salt="")
    pool = PagePool(num_pages=4, page_size=4, prefix_caching=True)
    assert pool.grow_kv("r", 8)
    pool.register_blocks("r", "a", blocks(list(range(8)), 4), salt="s")
    assert pool.match_prefix("a", blocks(list(range(8)), 4), salt="s") == pool.kv_pages("r")
    assert pool.match_prefix("a", blocks(list(range(8)), 4)) == []
    assert pool.match_prefix("a", blocks(list(range(8)), 4), salt="t") == []


def test_disabled_prefix_caching_matches_nothing(setup):
    _, model, adapters, ref, vocab = setup
    ids = list(range(3, 40))
    llm = make_llm(model, adapters, pool={"page_size": 4, "enable_prefix_caching": False})
    outs = generate(llm, [(ids, None, 3)] * 2)
    assert [o.metrics["num_cached_tokens"] for o in outs] == [0, 0] and llm.engine.scheduler.prefix_hit_tokens == 0
    s = llm.engine.pool_stats()
    assert s.kv_cached == 0 and s.free + s.adapter == s.total
    assert llm.engine.reset_prefix_cache() == 0


def test_penalized_and_structured_requests_after_a_cached_prefix(demo):
    """Requests whose sampling reads their tokens so far (penalties, bad words, a grammar) and start after
    cached pages get those tokens from the scheduler (ScheduledSeq.history_ids): their outputs equal an
    engine's without prefix caching (whose penalties and grammars tests/test_sampling.py and
    test_structured.py check against references)."""
    from app.structured import StructuredOutputs

    base = {"model": str(demo / "model"), "adapters": str(demo / "adapters"), "device": "cpu", "dtype": "float32"}
    prefix = [5, 9, 11, 5, 9, 40, 3, 8, 2, 33, 2, 61, 7, 7, 19, 4, 4, 30, 12, 13]
    prompts = [prefix + [21, 22], prefix + [23], prefix + [24, 25, 26]]
    names = ["demo-r4-attn", None, "demo-r8-mlp"]
    params = [
        SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, repetition_penalty=1.6, bad_words_ids=[[7]]),
        SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, presence_penalty=1.5, frequency_penalty=0.5),
        SamplingParams(max_tokens=12, temperature=0.0, structured=StructuredOutputs(regex="[a-z]{3,6}")),
    ]
    plain = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    want = [o.token_ids for o in LLM(**base, pool={"enable_prefix_caching": False}).generate(prompts, params, names)]
    llm = LLM(**base, pool={"page_size": 4})
    llm.generate(prompts, [plain] * 3, names)  # fills the cache
    outs = llm.generate(prompts, params, names)
    assert all(o.metrics["num_cached_tokens"] >= 20 for o in outs)
    assert [o.token_ids for o in outs] == want


@pytest.mark.parametrize("trial", range(6))
def test_random_shared_prefix_workloads_equal_an_engine_without_caching(demo, trial):
    """Differential: random waves of requests over three shared system prompts (adapters, greedy, seeded,
    penalized and prompt-logprob requests, aborts), random pool / token budget / seats / step loop: an engine
    with prefix caching gives every finished request the tokens of one without it, and its pool stays
    consistent after each wave. (60 trials of this ran clean by hand; six here.)"""
    from app.config import EngineConfig
    from app.engine import Engine

    names = [None, "demo-r4-attn", "demo-r8-mlp", "demo-r1-qv"]
    rng = random.Random(trial)
    systems = [[rng.randrange(3, 300) for _ in range(rng.randint(4, 30))] for _ in range(3)]
    waves = []
    for _ in range(rng.randint(1, 3)):
        wave = []
        for _ in range(rng.randint(2, 10)):
            extra = rng.choice(
                [{}, {}, {"repetition_penalty": 1.3}, {"temperature": 1.0, "seed": 7}, {"prompt_logprobs": 1}]
            )
            params = SamplingParams(max_tokens=rng.randint(1, 12), ignore_eos=True, **({"temperature": 0.0} | extra))
            prompt = rng.choice(systems) + [rng.randrange(3, 300) for _ in range(rng.randint(1, 12))]
            wave.append((prompt, rng.choice(names), params, rng.randint(1, 6) if rng.random() < 0.15 else None))
        waves.append(wave)
    sizes = {"kv": rng.choice([12, 24, 200]), "tokens": rng.choice([16, 32, 256]), "seqs": rng.choice([2, 4, 16])}
    async_scheduling = rng.random() < 0.5

    def run(caching: bool) -> dict:
        base = {"model": str(demo / "model"), "device": "cpu", "dtype": "float32"}
        probe = Engine(EngineConfig(**base, pool={"page_size": 4}))
        adapter_pages = 0
        for n in names[1:]:
            adapter_pages += probe.add_adapter(n, str(demo / "adapters" / n)).num_pages
        cfg = EngineConfig(
            **base,
            pool={"page_size": 4, "num_pages": adapter_pages + sizes["kv"], "enable_prefix_caching": caching},
            scheduler={"max_num_batched_tokens": sizes["tokens"], "max_num_seqs": sizes["seqs"]},
            async_scheduling=async_scheduling,
        )
        e = Engine(cfg)
        for n in names[1:]:
            e.add_adapter(n, str(demo / "adapters" / n))
        outs = {}
        for wave in waves:
            ids = [(e.add_request(p, sp, a), ab) for p, a, sp, ab in wave]
            steps = 0
            while e.has_unfinished():
                outs.update({o.request_id: (o.token_ids, o.finish_reason) for o in e.step() if o.finished})
                steps += 1
                for rid, ab in ids:
                    if ab == steps:
                        e.abort(rid)
            e.pool.check()
        return outs

    plain, cached = run(False), run(True)
    done = [k for k in plain if plain[k][1] != "abort" and cached.get(k, (None, "abort"))[1] != "abort"]
    assert done and all(plain[k] == cached[k] for k in done), [
        (k, plain[k], cached[k]) for k in done if plain[k] != cached[k]
    ]


def test_prefix_cached_requests_on_the_triton_kernels(setup):
    """The Triton kernels (interpreted on the CPU) with asynchronous scheduling: requests that attach cached
    pages of other requests (a shared system prompt; a repeat with one token left, a one-token row of a new
    request beside decodes) give the torch backend's tokens without caching. (The same on the GPU, CUDA
    graphs included: tests/test_engine_gpu.py -k prefix_cached.)"""
    _, model, adapters, ref, vocab = setup
    rng = random.Random(12)
    names = [*adapters, None]
    system = {a: [rng.randrange(3, vocab) for _ in range(20)] for a in names}
    wave1 = [(system[a] + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 6))], a, 4) for a in names]
    wave2 = [(system[a] + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 6))], a, 4) for a in names]
    wave1.append((system[names[0]] + [7, 9, 9, 5, 3], names[0], 4))
    wave2.append((system[names[0]] + [7, 9, 9, 5, 3], names[0], 4))  # 25 tokens: 24 cached, 1 to compute
    plain = make_llm(model, adapters, pool={"page_size": 4, "enable_prefix_caching": False})
    tri = make_llm(model, adapters, pool={"page_size": 4}, kernel_backend="triton", async_scheduling=True)
    for wave in (wave1, wave2):
        outs = generate(tri, wave)
        assert [o.token_ids for o in outs] == [o.token_ids for o in generate(plain, wave)]
    cached = [o.metrics["num_cached_tokens"] for o in outs]
    assert all(c >= 20 for c in cached) and cached[-1] == 24, cached
