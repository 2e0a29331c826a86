"""Engine behaviour on the CPU: sampling, stop conditions, continuous batching, pool and scheduler
invariants, the offline API."""

from __future__ import annotations

import pytest

from app import LLM, SamplingParams
from app.demo import DEMO_ADAPTERS, build_demo
from app.engine import WARMUP_PREFIX
from app.pool import PagePool
from app.tokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def llm(demo):
    return LLM(model=str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype="float32")


def greedy(n=8, **kw):
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def test_offline_api_text_and_ids(llm):
    assert set(llm.engine.adapters) == set(DEMO_ADAPTERS)
    outs = llm.generate(["Hello, world", [5, 6, 7]], adapters=["demo-r4-attn", None], sampling_params=greedy())
    assert [len(o.token_ids) for o in outs] == [8, 8]
    assert outs[0].text == llm.engine.tokenizer.decode(outs[0].token_ids)
    assert outs[0].prompt == "Hello, world" and outs[1].prompt_token_ids == [5, 6, 7]
    assert all(o.finish_reason == "length" and o.finished for o in outs)
    # an adapter changes the output; the same adapter in a different batch gives the same tokens
    base = llm.generate(["Hello, world"], sampling_params=greedy())[0]
    assert base.token_ids != outs[0].token_ids
    again = llm.generate(["x", "Hello, world"], adapters=[None, "demo-r4-attn"], sampling_params=greedy())[1]
    assert again.token_ids == outs[0].token_ids


def test_seeded_sampling_is_batch_independent(llm):
    p = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    alone = llm.generate(["The quick brown"], sampling_params=p, adapters="demo-r8-mlp")[0].token_ids
    crowd = llm.generate(
        ["a", "The quick brown", "b c d", "e"],
        adapters="demo-r8-mlp",
        sampling_params=[
            SamplingParams(max_tokens=5, temperature=1.0, ignore_eos=True),
            p,
            greedy(),
            SamplingParams(max_tokens=9, seed=3, ignore_eos=True),
        ],
    )
    assert crowd[1].token_ids == alone
    other = llm.generate(
        ["The quick brown"],
        adapters="demo-r8-mlp",
        sampling_params=SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=99, ignore_eos=True),
    )[0].token_ids
    assert other != alone


def test_topk1_and_tiny_topp_are_greedy(llm):
    g = llm.generate(["Hello"], sampling_params=greedy(10))[0].token_ids
    k1 = llm.generate(
        ["Hello"], sampling_params=SamplingParams(max_tokens=10, temperature=0.8, top_k=1, ignore_eos=True)
    )[0].token_ids
    p0 = llm.generate(
        ["Hello"], sampling_params=SamplingParams(max_tokens=10, temperature=0.8, top_p=1e-6, ignore_eos=True)
    )[0].token_ids
    assert g == k1 == p0


def test_stop_strings_and_stop_tokens(llm):
    full = llm.generate(["The quick brown"], sampling_params=greedy(16))[0]
    assert len(full.text) > 4
    stop = full.text[3:5]
    out = llm.generate(["The quick brown"], sampling_params=greedy(16, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.text == full.text[: full.text.find(stop)]
    tok = full.token_ids[4]
    out = llm.generate(["The quick brown"], sampling_params=greedy(16, stop_token_ids=[tok]))[0]
    assert out.finish_reason == "stop" and out.token_ids == full.token_ids[: full.token_ids.index(tok) + 1]


def test_eos_stops_unless_ignored(llm):
    eos = llm.engine.tokenizer.eos_token_id
    # find a prompt whose greedy continuation hits EOS by forcing it through stop_token_ids equivalence:
    # with ignore_eos=False the engine must stop at the first EOS it samples
    e = llm.engine
    e.eos_token_ids = {eos} | set(llm.generate([[9, 9]], sampling_params=greedy(3))[0].token_ids[1:2])
    out = llm.generate([[9, 9]], sampling_params=SamplingParams(max_tokens=3, temperature=0))[0]
    assert out.finish_reason == "stop" and len(out.token_ids) == 2
    e.eos_token_ids = {eos}


def test_streaming_deltas_add_up(llm):
    e = llm.engine
    rid = e.add_request("Hello, world", greedy(12), adapter="demo-r16-all")
    text, ids = "", []
    while e.has_unfinished():
        for o in e.step():
            assert o.request_id == rid
            text += o.delta_text
            ids += o.delta_token_ids
            last = o
    assert last.finished and text == last.text and ids == last.token_ids


def test_continuous_batching_mixes_prefill_decode_and_base(llm):
    e = llm.engine
    a = e.add_request([3] * 5, greedy(6), adapter="demo-r1-qv")
    e.step()  # a: prefill
    b = e.add_request([4] * 9, greedy(6))  # base model joins while a decodes
    out = e.scheduler.schedule()
    kinds = {(s.request_id, len(s.token_ids), s.adapter) for s in out.seqs}
    assert kinds == {(a, 1, "demo-r1-qv"), (b, 9, None)}
    e.scheduler.update(out, e.requests, e.executor.execute(out))
    while e.has_unfinished():
        e.step()
    assert e.is_idle_clean()


def test_abort_frees_pages(llm):
    e = llm.engine
    rid = e.add_request([7] * 40, greedy(50), adapter="demo-r64-all")
    e.step()
    assert e.pool_stats().kv > 0 and e.pool_stats().adapter_pinned > 0
    e.abort(rid)
    e.step()
    s = e.pool_stats()
    assert s.kv == 0 and s.adapter_pinned == 0 and not e.has_unfinished()
    e.pool.check()


def test_bad_requests_are_refused(llm):
    e = llm.engine
    with pytest.raises(ValueError, match="empty"):
        e.add_request([], greedy())
    with pytest.raises(ValueError, match="vocabulary"):
        e.add_request([10**6], greedy())
    with pytest.raises(ValueError, match="context length"):
        e.add_request([1] * 10, greedy(10**5))
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    assert not e.has_unfinished()


def test_max_loras_per_batch(demo):
    llm = LLM(
        model=str(demo / "model"),
        adapters=str(demo / "adapters"),
        device="cpu",
        dtype="float32",
        lora={"max_loras_per_batch": 2},
    )
    e = llm.engine
    for name in list(DEMO_ADAPTERS)[:4]:
        e.add_request([5, 6], greedy(3), adapter=name)
    seen = 0
    while e.has_unfinished():
        e.step()
        assert e.last_step_adapters <= 2
        seen = max(seen, e.last_step_adapters)
    assert seen == 2
    # the queued requests' adapters were prefetched into free pages before their admission
    assert e.scheduler.num_prefetches >= 2 and e.pool.loads == 4


def test_request_larger_than_pool_is_refused(demo):
    llm = LLM(model=str(demo / "model"), device="cpu", dtype="float32", pool={"page_size": 16, "num_pages": 4})
    with pytest.raises(ValueError, match="pool pages"):
        llm.engine.add_request([1] * 40, greedy(40))


def test_pool_lru_and_pins():
    pool = PagePool(num_pages=10, page_size=4)
    assert pool.load_adapter("a", 3) and pool.load_adapter("b", 3)
    pool.pin("a")
    assert pool.load_adapter("a", 3) == []  # hit
    assert pool.grow_kv("r1", 16)  # 4 pages: all free pages used
    assert pool.num_free == 0 and pool.available() == 3  # only b is evictable
    assert pool.load_adapter("c", 4) is None  # a is pinned, b is too small a victim
    assert pool.load_adapter("c", 3) is not None and not pool.is_resident("b")
    with pytest.raises(RuntimeError):
        pool.evict("a")
    pool.unpin("a")
    pool.free_kv("r1")
    s = pool.stats()
    assert (s.kv, s.adapter, s.free, s.evictions, s.hits) == (0, 6, 4, 1, 1)
    pool.check()


def test_incremental_detokenizer_matches_full_decode(llm):
    tok = llm.engine.tokenizer
    ids = tok.encode("Hello, world! Serving thousands of concurrent LoRA adapters. é ü 日本")
    d = IncrementalDetokenizer(tok)
    for i in range(1, len(ids) + 1):
        d.add(ids[:i])
    assert d.text == tok.decode(ids)


def test_early_abort_drops_requests_past_their_deadline(demo):
    llm = LLM(
        model=str(demo / "model"),
        device="cpu",
        dtype="float32",
        scheduler={"early_abort_ttft_slo_s": 5.0, "max_num_seqs": 1},
    )
    e = llm.engine
    import time as _time

    late = e.add_request([5, 6], greedy(3), arrival_time=_time.monotonic() - 10)
    ok = e.add_request([5, 6], greedy(3))
    outs = e.step()
    aborted = [o for o in outs if o.request_id == late]
    assert aborted and aborted[0].finished and aborted[0].finish_reason == "abort" and not aborted[0].token_ids
    while e.has_unfinished():
        outs += e.step()
    assert [o for o in outs if o.request_id == ok][-1].finish_reason == "length"
    assert e.scheduler.num_early_aborts == 1 and e.is_idle_clean()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_runs_close_to_float32(demo, llm, dtype):
    """float16 / bfloat16 weights, pool and adapters: the first greedy token mostly agrees with float32."""
    half = LLM(model=str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype=dtype)
    assert half.engine.executor.pool.dtype == getattr(__import__("torch"), dtype)
    prompts = [[3 + i, 7 + 2 * i, 11 + i] for i in range(12)]
    names = [None] + list(DEMO_ADAPTERS)
    adapters = [names[i % len(names)] for i in range(12)]
    a = [o.token_ids[0] for o in llm.generate(prompts, greedy(1), adapters)]
    b = [o.token_ids[0] for o in half.generate(prompts, greedy(1), adapters)]
    assert sum(x == y for x, y in zip(a, b)) >= 9, (a, b)


def test_triton_backend_in_the_engine_equals_torch(demo, llm):
    """The engine on the Triton kernels (the CPU runs them under TRITON_INTERPRET=1): prefill, decode,
    mixed adapters and base requests give the torch backend's greedy tokens."""
    tri = LLM(
        model=str(demo / "model"),
        adapters=str(demo / "adapters"),
        device="cpu",
        dtype="float32",
        kernel_backend="triton",
    )
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15, 16, 17], [18, 19]]
    names = ["demo-r64-all", None, "demo-r8-mlp", "demo-r1-qv"]
    want = [o.token_ids for o in llm.generate(prompts, greedy(4), names)]
    assert [o.token_ids for o in tri.generate(prompts, greedy(4), names)] == want


def test_token_slice_matches_all_token_ids():
    from app.request import Request

    r = Request("x", [1, 2, 3, 4], None, SamplingParams())
    r.output_token_ids = [5, 6, 7]
    for start in range(8):
        for n in range(8):
            assert r.token_slice(start, n) == r.all_token_ids[start : start + n]


def test_pool_invariants_under_random_operations():
    """Random loads, pins, KV growth and frees: pages are never leaked or shared, pinned adapters are
    never evicted, and the running evictable count equals the brute-force sum."""
    import random

    rng = random.Random(0)
    pool = PagePool(num_pages=64, page_size=4)
    pins: dict[str, int] = {}
    for _ in range(3000):
        op = rng.random()
        name = f"a{rng.randrange(8)}"
        rid = f"r{rng.randrange(10)}"
        if op < 0.25:
            if pool.load_adapter(name, rng.randint(1, 9)) is not None:
                pool.pin(name)
                pins[name] = pins.get(name, 0) + 1
        elif op < 0.45 and pins.get(name):
            pool.unpin(name)
            pins[name] -= 1
        elif op < 0.75:
            pool.grow_kv(rid, rng.randint(1, 40), keep={name})
        elif op < 0.9:
            pool.free_kv(rid)
        elif pool.is_resident(name) and not pins.get(name):
            pool.evict(name)
        pool.check()
        brute = sum(len(pool.adapter(n).pages) for n in pool.resident_adapters() if not pins.get(n))
        assert pool.available() == pool.num_free + brute
        assert all(pool.is_resident(n) for n, c in pins.items() if c)


def _same_batch(llm) -> list[list[int]]:
    """Greedy and unseeded sampled requests, mixed adapters and lengths: the engine's state shows in them
    (page ids do not, random seeds drawn from the runner's seed stream do)."""
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 11] * 3, [12], [13, 14, 15, 16, 17], [18, 19]]
    names = ["demo-r64-all", None, "demo-r8-mlp", None]
    params = [greedy(6), greedy(6), SamplingParams(max_tokens=6, temperature=1.0, ignore_eos=True), greedy(6)]
    return [o.token_ids for o in llm.generate(prompts, params, names)]


def _assert_clean(e) -> None:
    s = e.pool_stats()
    assert not e.requests and not e.detok and not e.has_unfinished() and e.is_idle_clean()
    assert (s.kv, s.adapter, s.free, s.loads, s.evictions, s.hits) == (0, 0, s.total, 0, 0, 0)
    assert e.steps == 0 and e.scheduler.num_preemptions == 0 and e.scheduler.num_prefetches == 0
    assert not any(n.startswith(WARMUP_PREFIX) for n in [*e.adapters, *e.executor.adapters])
    e.pool.check()


def test_warmup_leaves_the_engine_clean_and_outputs_unchanged(demo, llm):
    """warmup="on" on the CPU (auto is CUDA only): the temporary adapter, the prefills and the decode
    batches leave nothing behind, and a following batch gives an engine without warmup's tokens."""
    assert llm.engine.warmup_s is None  # auto: off on the CPU
    warm = LLM(model=str(demo / "model"), device="cpu", dtype="float32", warmup="on")
    e = warm.engine
    assert e.warmup_s is not None and e.warmup_s > 0
    _assert_clean(e)
    cold = LLM(model=str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype="float32", warmup="off")
    for name in DEMO_ADAPTERS:
        warm.add_adapter(name, str(demo / "adapters" / name))
    assert _same_batch(warm) == _same_batch(cold)
    # again on a used engine (adapters cached in the pool): idle again, the next batch unchanged
    before = e.pool_stats()
    e.warmup()
    assert e.is_idle_clean() and not e.requests and not any(n.startswith(WARMUP_PREFIX) for n in e.adapters)
    assert e.pool_stats() == before and e.pool.resident_adapters()
    e.pool.check()
    assert _same_batch(warm) == _same_batch(cold)
    e.add_request([5, 6], greedy(3))
    with pytest.raises(RuntimeError, match="idle"):
        e.warmup()


def test_warmup_runs_every_request_despite_an_slo(demo):
    """Early abort (early_abort_ttft_slo_s) is off while warmup runs: every warm-up request runs to its length, one
    wave per prompt length and one per decode batch size; the SLO is back afterwards."""
    e = LLM(
        model=str(demo / "model"),
        device="cpu",
        dtype="float32",
        scheduler={"early_abort_ttft_slo_s": 1e-6, "max_num_seqs": 8},
    ).engine
    finished, batches, step = [], [], e.step

    def spy():
        batches.append(len(e.scheduler.running))
        outs = step()
        finished.extend((o.request_id, o.finish_reason, len(o.token_ids)) for o in outs if o.finished)
        return outs

    e.step = spy
    e.warmup()
    assert finished and all(
        rid.startswith(WARMUP_PREFIX) and reason == "length" and n == 2 for rid, reason, n in finished
    )
    # 6 prompt lengths x 3 adapter ranks x (adapter, base), then the decode buckets
    assert len(finished) == 2 * len(e.cfg.warmup_prompt_lens) * len(e.cfg.warmup_ranks) + 1 + 2 + 4 + 8
    assert {1, 2, 4, 8} <= set(batches)
    assert e.scheduler.cfg.early_abort_ttft_slo_s == 1e-6 and e.scheduler.num_early_aborts == 0


def test_warmup_with_few_seqs_short_context_and_a_tight_pool(demo, caplog):
    """max_num_seqs=3 (graph buckets 1, 2, 3), prompts capped by max_model_len, the warm-up adapter capped
    by max_lora_rank and a pool that holds it and only a few requests; then a pool too small for the
    adapter: warmup runs the base model only."""
    kw = dict(
        device="cpu",
        dtype="float32",
        scheduler={"max_num_seqs": 3, "max_model_len": 40},
        lora={"max_lora_rank": 8},
        pool={"page_size": 8, "num_pages": 20},
    )
    warm = LLM(model=str(demo / "model"), warmup="on", **kw)
    _assert_clean(warm.engine)
    cold = LLM(model=str(demo / "model"), warmup="off", **kw)
    prompts = [[3 + i, 7 + 2 * i, 11 + i] * (1 + i) for i in range(5)]
    want = [o.token_ids for o in cold.generate(prompts, greedy(5))]
    assert [o.token_ids for o in warm.generate(prompts, greedy(5))] == want
    with caplog.at_level("WARNING", logger="app.engine"):
        tiny = LLM(model=str(demo / "model"), warmup="on", **dict(kw, pool={"page_size": 8, "num_pages": 6}))
    assert "warmup without a rank-8 adapter" in caplog.text
    _assert_clean(tiny.engine)
    assert [o.token_ids for o in tiny.generate(prompts, greedy(5))] == want


def _hf_penalized_greedy(ref, ids: list[int], adapter: str | None, n: int, p: SamplingParams) -> list[int]:
    """transformers + PEFT greedy decoding with the penalties applied outside the engine: HF's own
    RepetitionPenaltyLogitsProcessor over prompt + output, then frequency / presence over the output and
    the logit bias, written out here (no KV cache: short sequences)."""
    import contextlib

    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    seq, out = list(ids), []
    if adapter is not None:
        ref.model.set_adapter(adapter)
    with torch.no_grad(), ref.model.disable_adapter() if adapter is None else contextlib.nullcontext():
        for _ in range(n):
            logits = ref.model(input_ids=torch.tensor([seq])).logits[0, -1].float()
            logits = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(torch.tensor([seq]), logits[None])[0]
            for t in set(out):
                logits[t] -= p.frequency_penalty * out.count(t) + p.presence_penalty
            for t, b in (p.logit_bias or {}).items():
                logits[t] += b
            out.append(int(logits.argmax()))
            seq.append(out[-1])
    return out


def test_penalties_and_logit_bias_equal_hf(demo, llm, monkeypatch):
    """presence / frequency / repetition penalties and logit_bias (greedy, float32) give the tokens of
    transformers + PEFT with the same penalties, in one batch with unpenalized requests (which keep their
    own tokens), and again through a pool so small that requests are preempted and recomputed; at every
    sampling the tokens the penalties see are exactly the request's prompt and output so far."""
    import app.runner
    from tests.models import HFReference

    checked = []

    def checking_sample(logits, params, gens, seen, *rest):
        for p, s in zip(params, seen):
            if p.penalized:
                req = next(r for r in engine.engine.requests.values() if r.params is p)
                assert s == (req.all_token_ids, len(req.prompt_token_ids)), (req.request_id, s)
                checked.append(req.num_preemptions)
        return sample(logits, params, gens, seen, *rest)

    sample = app.runner.sample
    monkeypatch.setattr(app.runner, "sample", checking_sample)

    names = ["demo-r4-attn", None, "demo-r8-mlp"]
    ref = HFReference(demo / "model", {n: demo / "adapters" / n for n in names if n})
    prompts = [[5, 9, 11, 5, 9, 40, 3], [8, 2, 33, 2], [61, 7, 7, 19, 4, 4, 30]]
    cases = [
        dict(repetition_penalty=1.5),
        dict(frequency_penalty=1.2),
        dict(presence_penalty=1.5),
        dict(repetition_penalty=0.7, frequency_penalty=-0.5, presence_penalty=0.3, logit_bias={17: 4.0, 3: -100}),
    ]
    reqs = [(ids, a, greedy(10, **kw)) for kw in cases for ids, a in zip(prompts, names)]
    want = [_hf_penalized_greedy(ref, ids, a, 10, p) for ids, a, p in reqs]
    plain = [o.token_ids for o in llm.generate(prompts, greedy(10), names)]
    assert sum(w != plain[i % 3] for i, w in enumerate(want)) >= 6, "the penalties should change most outputs"
    used = {n: str(demo / "adapters" / n) for n in names if n}
    probe = LLM(model=str(demo / "model"), adapters=used, device="cpu", dtype="float32", pool={"page_size": 4})
    pages = sum(i.num_pages for i in probe.engine.adapters.values()) + 30  # KV room for about 6 of 15 requests
    small = LLM(
        model=str(demo / "model"),
        adapters=used,
        device="cpu",
        dtype="float32",
        pool={"page_size": 4, "num_pages": pages},
        scheduler={"max_num_batched_tokens": 64},
    )
    for engine in (llm, small):
        outs = engine.generate(
            [r[0] for r in reqs] + prompts, [r[2] for r in reqs] + [greedy(10)] * 3, [r[1] for r in reqs] + names
        )
        assert [o.token_ids for o in outs[: len(reqs)]] == want
        assert [o.token_ids for o in outs[len(reqs) :]] == plain
    assert engine.engine.scheduler.num_preemptions > 0, "the small pool was meant to preempt"
    assert any(checked), "no penalized request was sampled after a preemption"
    with pytest.raises(ValueError, match="logit_bias"):
        llm.generate([[1, 2]], greedy(2, logit_bias={10**6: 1.0}))


def test_apply_penalties_matches_hf_processors():
    """The penalty arithmetic on random logits of both signs against transformers' repetition-penalty
    processor (prompt + output) and the OpenAI definition of frequency / presence (output counts)."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from app.sampling import apply_penalties

    gen = torch.Generator().manual_seed(0)
    for rp, fp, pp in ((1.3, 0.0, 0.0), (0.6, 0.0, 0.0), (1.0, 0.7, 0.0), (1.0, 0.0, -1.1), (1.8, -0.4, 0.9)):
        logits = torch.randn(50, generator=gen) * 3
        tokens = torch.randint(0, 50, (30,), generator=gen).tolist()
        p = SamplingParams(
            temperature=0.0,
            repetition_penalty=rp,
            frequency_penalty=fp,
            presence_penalty=pp,
            logit_bias={4: 2.5, 9: -100},
        )
        want = RepetitionPenaltyLogitsProcessor(rp)(torch.tensor([tokens]), logits[None].clone())[0]
        out = tokens[12:]
        for t in set(out):
            want[t] -= fp * out.count(t) + pp
        want[4] += 2.5
        want[9] -= 100
        got = apply_penalties(logits, p, tokens, 12)
        torch.testing.assert_close(got, want)
        assert not torch.equal(got, logits)


def test_logprobs_equal_hf(demo, llm):
    """`logprobs=k`: each output token's log-probability and the k most likely tokens there equal the
    log-softmax of transformers + PEFT's logits at that position (raw model distribution: penalties and
    temperature do not change them), in a batch with requests that ask for none."""
    import contextlib

    import torch

    from tests.models import HFReference

    names = ["demo-r8-mlp", None]
    ref = HFReference(demo / "model", {"demo-r8-mlp": demo / "adapters" / "demo-r8-mlp"})
    prompts = [[5, 9, 11, 40, 3], [8, 2, 33, 2, 7, 7]]
    params = [
        greedy(6, logprobs=3),
        SamplingParams(max_tokens=6, temperature=0.9, seed=5, logprobs=0, ignore_eos=True, frequency_penalty=1.0),
    ]
    outs = llm.generate(prompts + prompts, params + [greedy(6)] * 2, names + names)
    assert outs[2].logprobs is None and outs[3].logprobs is None
    for o, ids, name, p in zip(outs, prompts, names, params):
        assert len(o.logprobs) == len(o.token_ids) == 6
        seq = list(ids)
        if name:
            ref.model.set_adapter(name)
        for tok, lp in zip(o.token_ids, o.logprobs):
            with torch.no_grad(), ref.model.disable_adapter() if name is None else contextlib.nullcontext():
                want = torch.log_softmax(ref.model(input_ids=torch.tensor([seq])).logits[0, -1].float(), -1)
            assert abs(lp.logprob - float(want[tok])) < 1e-4
            top = torch.topk(want, p.logprobs)
            assert [t for t, _ in lp.top] == top.indices.tolist()
            assert all(abs(v - w) < 1e-4 for (_, v), w in zip(lp.top, top.values.tolist()))
            seq.append(tok)
    assert outs[0].logprobs[0].logprob >= outs[0].logprobs[0].top[1][1]  # greedy: the top token


def _hf_prompt_logprobs(ref, ids: list[int], adapter: str | None):
    """log-softmax (float32) of transformers + PEFT's logits at every prompt position but the last."""
    import contextlib

    import torch

    if adapter is not None:
        ref.model.set_adapter(adapter)
    with torch.no_grad(), ref.model.disable_adapter() if adapter is None else contextlib.nullcontext():
        return torch.log_softmax(ref.model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)


def test_prompt_logprobs_equal_hf(demo, llm):
    """`prompt_logprobs=k`: [None] then, for every later prompt token, its log-probability, its rank and
    the k most likely tokens at the position before it equal transformers + PEFT's log-softmax (float32),
    for adapters and the base model, with max_tokens 0 (prefill only, no token) and > 0 (the tokens are
    those of a request without prompt logprobs); the same values when the prompts are prefilled in chunks
    of 16 tokens, and when a request is preempted in the middle of its prompt and recomputed."""
    from tests.models import HFReference

    names = ["demo-r8-mlp", None, "demo-r4-attn"]
    ref = HFReference(demo / "model", {n: demo / "adapters" / n for n in names if n})
    prompts = [[(7 * i + 3 * j) % 400 + 3 for j in range(n)] for i, n in enumerate((5, 23, 40))]
    want = [_hf_prompt_logprobs(ref, ids, a) for ids, a in zip(prompts, names)]

    def check(o, ids, w, k):
        assert o.prompt_logprobs[0] is None and len(o.prompt_logprobs) == len(ids)
        for j, lp in enumerate(o.prompt_logprobs[1:]):
            row = w[j]
            assert abs(lp.logprob - float(row[ids[j + 1]])) < 1e-4
            assert lp.rank == int((row > row[ids[j + 1]]).sum()) + 1
            top = row.topk(k)
            assert [t for t, _ in lp.top] == top.indices.tolist()
            assert all(abs(v - x) < 1e-4 for (_, v), x in zip(lp.top, top.values.tolist()))

    params = [greedy(0, prompt_logprobs=2), greedy(4, prompt_logprobs=0), greedy(6, prompt_logprobs=3)]
    plain = llm.generate(prompts, [greedy(4), greedy(4), greedy(6)], names)
    used = {n: str(demo / "adapters" / n) for n in names if n}
    kw = dict(device="cpu", dtype="float32", scheduler={"max_num_batched_tokens": 16})
    chunked = LLM(model=str(demo / "model"), adapters=used, pool={"page_size": 4}, **kw)
    for engine, copies in ((llm, 1), (chunked, 2)):
        outs = engine.generate(prompts * copies, params * copies, names * copies)
        for o, ids, w, p in zip(outs, prompts * copies, want * copies, params * copies):
            check(o, ids, w, p.prompt_logprobs)
        assert outs[0].token_ids == [] and outs[0].finish_reason == "length" and outs[0].text == ""
        assert [o.token_ids for o in outs[1:3]] == [o.token_ids for o in plain[1:]]
        assert outs[1].prompt_logprobs[1].top == []  # k = 0: the token's own value and rank only
    assert any(lp.rank > 1 for lp in outs[2].prompt_logprobs[1:])  # not all greedy: ranks are checked

    # A long base-model request fills most of the pool; the adapter request behind it is admitted, gets
    # its first prompt chunk's logprobs, is preempted at its second chunk, and is recomputed later.
    a = [(5 * j) % 300 + 3 for j in range(60)]
    one = {"demo-r4-attn": used["demo-r4-attn"]}
    probe = LLM(model=str(demo / "model"), adapters=one, device="cpu", dtype="float32", pool={"page_size": 4})
    pages = probe.engine.adapters["demo-r4-attn"].num_pages + 20  # A: 16 KV pages, B: 12
    small = LLM(model=str(demo / "model"), adapters=one, pool={"page_size": 4, "num_pages": pages}, **kw)
    outs = small.generate([a, prompts[2]], [greedy(4), params[2]], [None, "demo-r4-attn"])
    assert outs[1].metrics["num_preemptions"] > 0, "the adapter request was meant to be preempted"
    check(outs[1], prompts[2], want[2], 3)
    assert outs[1].token_ids == plain[2].token_ids
    assert outs[0].token_ids == llm.generate([a], greedy(4))[0].token_ids
    assert small.engine.is_idle_clean()


def test_min_tokens_masks_eos_and_stop_tokens(llm):
    """min_tokens: EOS and stop_token_ids are not sampled, and stop strings not checked, before the output
    has min_tokens tokens; then they stop it as usual. A bias makes EOS (then a stop token) the greedy
    choice at every step."""
    eos = llm.engine.tokenizer.eos_token_id
    p = SamplingParams(max_tokens=12, temperature=0.0, logit_bias={eos: 100.0})
    assert llm.generate(["Hello"], p)[0].token_ids == [eos]
    for kw in (dict(min_tokens=5), dict(min_tokens=5, temperature=0.8, seed=3)):
        out = llm.generate(
            ["Hello"], SamplingParams(max_tokens=12, logit_bias={eos: 100.0}, **{"temperature": 0.0, **kw})
        )[0]
        assert len(out.token_ids) == 6 and eos not in out.token_ids[:5] and out.token_ids[5] == eos
        assert out.finish_reason == "stop"
    out = llm.generate(
        ["Hello"],
        SamplingParams(max_tokens=12, temperature=0.0, logit_bias={40: 100.0}, stop_token_ids=[40], min_tokens=3),
    )[0]
    assert len(out.token_ids) == 4 and 40 not in out.token_ids[:3] and out.token_ids[3] == 40
    free = llm.generate(["Hello"], greedy(8))[0]
    stop = free.text[:2]  # a stop string the output starts with: only checked from min_tokens on
    out = llm.generate(["Hello"], greedy(8, stop=[stop], min_tokens=8))[0]
    assert out.token_ids == free.token_ids and out.finish_reason == "length"
    assert llm.generate(["Hello"], greedy(8, stop=[stop]))[0].text == ""


def test_seeded_sampling_survives_preemption(demo, llm):
    """A seeded request preempted and recomputed samples the same tokens as without preemption (its
    generator keeps its state; a fresh one would replay the first draws)."""
    p = SamplingParams(max_tokens=40, temperature=1.0, seed=7, ignore_eos=True)
    ref = llm.generate(["Hi"], p)[0].token_ids
    small = LLM(model=str(demo / "model"), device="cpu", dtype="float32", pool={"page_size": 4, "num_pages": 30})
    a = [(5 * j) % 300 + 3 for j in range(80)]  # with its 40 tokens: the whole pool
    outs = small.generate([a, "Hi"], [greedy(40), p])
    assert outs[1].metrics["num_preemptions"] > 0, "the seeded request was meant to be preempted"
    assert outs[1].token_ids == ref
