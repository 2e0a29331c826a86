"""The sampler against extreme values (issue 11, finding 1): every SamplingParams that validation accepts
samples a valid token from the real sampler; what it refuses raises ValueError at construction (a 400 over
HTTP); a request whose sampling still fails (non-finite logits) fails alone."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.request import SEED_MAX, SEED_MIN, SamplingParams
from app.sampling import FAILED, sample

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
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
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
