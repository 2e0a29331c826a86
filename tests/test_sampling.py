"""Sampling (app/sampling.py). The sampler against extreme values (issue 11, finding 1): every SamplingParams
that validation accepts samples a valid token from the real sampler; what it refuses raises ValueError at
construction (a 400 over HTTP); a request whose sampling still fails (non-finite logits) fails alone. In the
engine: seeded sampling independent of the batch and of preemption, top-k / top-p, penalties, logit bias,
logprobs and prompt logprobs against transformers + PEFT, min_tokens."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import LLM
from app.request import SEED_MAX, SEED_MIN, SamplingParams
from app.sampling import FAILED, sample
from tests.models import greedy, llm_with_kv_room

VOCAB = 64

extreme_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 5e-324, 1e-300, 1e-46, 1e-8, 1e-2, 0.5, 1.0, 2.0, 100.0, 1e300, -1e-300, -0.0]),
)
extreme_ints = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30]),
)


@st.composite
def params_kwargs(draw) -> dict:
    kw = {}
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        if draw(st.booleans()):
            kw[name] = draw(extreme_floats)
    if draw(st.booleans()):
        kw["seed"] = draw(st.one_of(st.none(), extreme_ints))
    if draw(st.booleans()):
        kw["top_k"] = draw(extreme_ints)
    if draw(st.booleans()):
        kw["logit_bias"] = draw(st.dictionaries(st.integers(0, VOCAB - 1), extreme_floats, max_size=3))
    return kw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=params_kwargs(), scale=st.sampled_from([1.0, 1e4, 1e30]), data=st.data())
def test_accepted_params_always_sample_a_valid_token(kw, scale, data):
    try:
        p = SamplingParams(max_tokens=4, **kw)
    except (ValueError, TypeError):
        return  # refused at the door: a 400 over HTTP, never reaches the engine
    assert math.isfinite(p.temperature) and (p.seed is None or SEED_MIN <= p.seed <= SEED_MAX)
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))) * scale
    gen = torch.Generator()
    if p.seed is not None:
        gen.manual_seed(p.seed)  # what app/runner.py does with the request's seed
    seen = [([1, 2, 2, 5], 2)] * 3 if p.penalized else None
    tokens, _ = sample(logits, [p] * 3, [gen] * 3, seen)
    assert all(0 <= t < VOCAB for t in tokens)


@pytest.mark.parametrize(
    "kw",
    [
        {"seed": 2**64},  # the finding's values: each ended the group's step loop
        {"seed": -(2**63) - 1},
        {"repetition_penalty": 1e-300, "temperature": 1.0},
        {"temperature": float("nan")},
        {"temperature": float("inf")},
    ],
)
def test_finding_values_are_refused_at_the_door(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


@pytest.mark.parametrize("kw", [{"temperature": 5e-324}, {"temperature": 1e-46}, {"top_p": 1e-300}])
def test_finding_values_that_are_accepted_sample(kw):
    """Tiny temperatures are raised to MIN_TEMPERATURE (as vLLM does); a tiny top_p keeps the top token."""
    p = SamplingParams(**kw)
    logits = torch.randn(4, VOCAB) * 30
    tokens, _ = sample(logits, [p] * 4, [torch.Generator() for _ in range(4)])
    if "top_p" in kw:
        assert tokens == logits.argmax(-1).tolist()
    assert all(0 <= t < VOCAB for t in tokens)


def test_min_p_keeps_the_tokens_at_least_min_p_of_the_most_likely():
    """vLLM's min_p after temperature: a token stays when its probability (at that temperature) is at least
    min_p times the most likely one's; top-k and top-p then act on what stays."""
    from app.sampling import _probs

    logits = torch.log(torch.tensor([0.40, 0.25, 0.19, 0.10, 0.06]))
    for min_p, temp, keep in ((0.5, 1.0, [0, 1]), (0.45, 1.0, [0, 1, 2]), (0.5, 2.0, [0, 1, 2, 3]),
                              (1.0, 1.0, [0]), (0.0, 1.0, [0, 1, 2, 3, 4])):  # fmt: skip
        probs = _probs(logits, SamplingParams(temperature=temp, min_p=min_p))
        assert torch.nonzero(probs).flatten().tolist() == keep, (min_p, temp, probs)
        torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    probs = _probs(logits, SamplingParams(min_p=0.2, top_k=2))
    assert torch.nonzero(probs).flatten().tolist() == [0, 1]
    with pytest.raises(ValueError, match="min_p"):
        SamplingParams(min_p=1.5)


def test_a_row_that_cannot_be_sampled_fails_alone():
    logits = torch.randn(3, VOCAB)
    logits[1, 5] = float("nan")
    params = [SamplingParams(seed=1, logprobs=2), SamplingParams(seed=2, logprobs=2), SamplingParams(temperature=0)]
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2), None]
    tokens, lps = sample(logits, params, gens)
    assert tokens[1] == FAILED and lps[1] is None
    clean = logits.clone()
    clean[1] = 0
    ref, _ = sample(clean, params, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2), None])
    assert tokens[0] == ref[0] and tokens[2] == ref[2] and lps[0] is not None
    # restrictions that leave no token (allowed_token_ids all banned by min_tokens): that request fails, greedy
    # or not; the other one is sampled
    for temperature in (0.0, 1.0):
        masked = [SamplingParams(temperature=temperature, allowed_token_ids=[3]), SamplingParams(temperature=0)]
        tokens, _ = sample(
            logits[[0, 2]], masked, [torch.Generator().manual_seed(0), None], [([1], 1), None], [[3], []]
        )
        assert tokens == [FAILED, ref[2]]


# ---- in the engine (the demo model; fixtures in conftest.py) ----------------------------------------


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


def _hf_penalized_greedy(ref, ids: list[int], adapter: str | None, n: int, p: SamplingParams) -> list[int]:
    """transformers + PEFT greedy decoding with the penalties applied outside the engine: HF's own
    RepetitionPenaltyLogitsProcessor over prompt + output, then frequency / presence over the output, the
    logit bias, bad words and allowed tokens, written out here (no KV cache: short sequences)."""
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
            for w in p.bad_words_ids or []:  # a word's last token, after the rest of it ends the output
                if len(w) == 1 or out[-(len(w) - 1) :] == w[:-1]:
                    logits[w[-1]] = float("-inf")
            if p.allowed_token_ids is not None:
                logits[[t for t in range(logits.shape[-1]) if t not in p.allowed_token_ids]] = float("-inf")
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
    # KV room for about 6 of 15 requests
    small = llm_with_kv_room(demo, used, 30, scheduler={"max_num_batched_tokens": 64})
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


def test_allowed_tokens_and_bad_words_equal_hf(demo, llm):
    """vLLM's allowed_token_ids and bad_words (greedy, float32) give transformers + PEFT's tokens with the same
    restrictions written out: only allowed tokens; a bad word's last token never right after the rest of it
    (two-token words taken from the unrestricted outputs, so that they matter), a one-token word never; beside
    unrestricted requests in one batch, which keep their tokens. bad_words given as text reach the sampler as
    the word's tokens, alone and after a space; token ids outside the vocabulary are refused."""
    from tests.models import HFReference

    names = ["demo-r4-attn", None, "demo-r8-mlp"]
    ref = HFReference(demo / "model", {n: demo / "adapters" / n for n in names if n})
    prompts = [[5, 9, 11, 5, 9, 40, 3], [8, 2, 33, 2], [61, 7, 7, 19, 4, 4, 30]]
    plain = [o.token_ids for o in llm.generate(prompts, greedy(10), names)]
    allowed = [t for t in range(64) if t not in {out[0] for out in plain}]  # no unrestricted output's first token
    reqs = []
    for ids, a, out in zip(prompts, names, plain):
        reqs.append((ids, a, greedy(10, allowed_token_ids=allowed)))
        reqs.append((ids, a, greedy(10, bad_words_ids=[out[2:4], [out[6]]])))
    want = [_hf_penalized_greedy(ref, ids, a, 10, p) for ids, a, p in reqs]
    assert all(w != plain[i // 2] for i, w in enumerate(want)), "every restriction should change its output"
    outs = llm.generate(
        [r[0] for r in reqs] + prompts, [r[2] for r in reqs] + [greedy(10)] * 3, [r[1] for r in reqs] + names
    )
    assert [o.token_ids for o in outs[: len(reqs)]] == want
    assert [o.token_ids for o in outs[len(reqs) :]] == plain
    for o in outs[0 : len(reqs) : 2]:
        assert set(o.token_ids) <= set(allowed)

    tok = llm.engine.tokenizer
    word = tok.decode(plain[1][2:4]).strip() or "hello"
    p = greedy(10, bad_words=[word])
    rid = llm.engine.add_request(prompts[1], p)
    seqs = llm.engine.requests[rid].params.bad_words_ids
    llm.engine.abort(rid)
    alone, spaced = tok.encode(word, add_special_tokens=False), tok.encode(" " + word, add_special_tokens=False)
    assert seqs[0] == alone and (seqs[1:] == [spaced]) == (len(spaced) == len(alone) and spaced[0] != alone[0])
    assert p.bad_words_ids is None, "the caller's params are left as they are"
    for kw in (dict(allowed_token_ids=[10**6]), dict(bad_words_ids=[[1, 10**6]])):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            llm.generate([[1, 2]], greedy(2, **kw))
    for kw in (
        dict(allowed_token_ids=[]),
        dict(allowed_token_ids=[-1]),
        dict(bad_words=[" "]),
        dict(bad_words_ids=[[]]),
    ):
        with pytest.raises(ValueError):
            greedy(2, **kw)


def test_bad_words_index_equals_the_rule():
    """The sampler's bad-word lookup (the output's last tokens against an index built once per request) bans
    exactly the last tokens of the words whose rest ends the output (one-token words always), on random words and
    outputs over a small vocabulary, where words overlap and share prefixes; too many words or too long ones are
    refused."""
    import random

    from app.request import MAX_BAD_WORD_TOKENS, MAX_BAD_WORDS
    from app.sampling import apply_penalties

    rng = random.Random(0)
    for _ in range(300):
        words = [[rng.randrange(6) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 6))]
        prompt, out = [rng.randrange(6) for _ in range(3)], [rng.randrange(6) for _ in range(rng.randint(0, 8))]
        row = apply_penalties(torch.zeros(6), SamplingParams(bad_words_ids=words), prompt + out, len(prompt))
        want = {w[-1] for w in words if len(w) - 1 <= len(out) and out[len(out) - len(w) + 1 :] == w[:-1]}
        assert {t for t in range(6) if row[t] == float("-inf")} == want, (words, out)
    for bad in (
        dict(bad_words=["w"] * (MAX_BAD_WORDS + 1)),
        dict(bad_words_ids=[[1]] * (2 * MAX_BAD_WORDS + 1)),
        dict(bad_words_ids=[[1] * (MAX_BAD_WORD_TOKENS + 1)]),
    ):
        with pytest.raises(ValueError, match="bad_words"):
            SamplingParams(**bad)


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
    small = llm_with_kv_room(demo, one, 20, scheduler=kw["scheduler"])  # A: 16 KV pages, B: 12
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
