"""Structured output in the engine (offline, CPU): JSON schema, JSON object, regex, choice and grammar
constraints (app/structured.py, llguidance) applied as a token bitmask in the batched sampler, on the random
demo model, so that whatever the model prefers the output is valid; free requests in the same batch keep
their own tokens; a constrained request preempted and recomputed still gives valid (and the same) output."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from app import SamplingParams
from app.structured import StructuredOutputs, apply_token_bitmask
from tests.models import llm_with_kv_room

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "tags", "ok"],
    "additionalProperties": False,
}
REGEX = r"(\d{3})-([a-z]{2,5})"
CHOICES = ("yes", "no", "maybe so")
GRAMMAR = 'root ::= "(" expr ")"\nexpr ::= num | num op num\nop ::= "+" | "-"\nnum ::= [1-9] [0-9]?'  # GBNF
LARK = 'start: "(" expr ")"\nexpr: NUM | NUM OP NUM\nOP: "+" | "-"\nNUM: /[1-9][0-9]?/'


def params(so: StructuredOutputs | None = None, n: int = 200, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, **{"temperature": 0.0, **kw}, structured=so)


def check_valid(so: StructuredOutputs, text: str) -> None:
    if so.json is not None:
        jsonschema.validate(json.loads(text), json.loads(so.json))
    elif so.json_object:
        assert isinstance(json.loads(text), dict)
    elif so.regex is not None:
        assert re.fullmatch(so.regex, text), text
    elif so.choice is not None:
        assert text in so.choice
    else:
        assert re.fullmatch(r"\([1-9][0-9]?([+-][1-9][0-9]?)?\)", text), text


CASES = [
    StructuredOutputs(json=json.dumps(SCHEMA)),
    StructuredOutputs(regex=REGEX),
    StructuredOutputs(choice=CHOICES),
    StructuredOutputs(grammar=GRAMMAR),
    StructuredOutputs(grammar=LARK),
]


@pytest.mark.parametrize("adapter", ["demo-r4-attn", "demo-r64-all", None])
def test_constrained_outputs_are_valid(llm, adapter):
    """Greedy and seeded sampling (temperature 1: the random model's own preferences are far from any of
    these formats) give valid outputs that end with EOS ("stop"), even with ignore_eos."""
    ps = [params(so) for so in CASES]
    ps += [params(so, temperature=1.0, seed=i) for i, so in enumerate(CASES)]
    ps += [params(CASES[1], ignore_eos=True)]
    outs = llm.generate(["Hello, world!"] * len(ps), ps, adapter)
    eos = llm.engine.tokenizer.eos_token_id
    for o, p in zip(outs, ps):
        check_valid(p.structured, o.text)
        assert o.finish_reason == "stop" and o.token_ids[-1] == eos, (o.text, o.finish_reason)
    free = llm.generate(["Hello, world!"], params(), adapter)[0].text
    assert not any(re.fullmatch(REGEX, t) for t in (free, free.strip()))  # the model alone would not


def test_free_requests_keep_their_tokens_in_a_constrained_batch(llm):
    """Constrained and free requests share steps; the free ones (greedy and seeded) get exactly the tokens
    they get alone, the constrained ones too."""
    prompts = ["The quick brown fox", "Hello", "Serving thousands of", "def main():"]
    adapters = ["demo-r8-mlp", None, "demo-r4-attn", None]
    free = [params(n=24, ignore_eos=True), params(n=24, temperature=0.9, seed=7, ignore_eos=True, top_p=0.9)]
    alone = [llm.generate([p], sp, a)[0].token_ids for p, sp, a in zip(prompts[:2], free, adapters[:2])]
    con = [params(CASES[0]), params(CASES[3], temperature=1.0, seed=5)]
    con_alone = [llm.generate([p], sp, a)[0].token_ids for p, sp, a in zip(prompts[2:], con, adapters[2:])]
    mixed = llm.generate(prompts, free + con, adapters)
    assert [o.token_ids for o in mixed[:2]] == alone
    assert [o.token_ids for o in mixed[2:]] == con_alone
    for o, sp in zip(mixed[2:], con):
        check_valid(sp.structured, o.text)


def test_preempted_constrained_request_stays_valid(demo, llm):
    """A long base-model request and a JSON-constrained adapter request share a pool too small for both:
    the constrained one is preempted after some of its tokens, recomputed, and its grammar matcher is rebuilt
    from its output tokens; its output is valid and the same as without preemption."""
    so = CASES[0]
    ref = llm.generate(["Hi"], params(so, n=100), "demo-r4-attn")[0]
    assert ref.finish_reason == "stop" and len(ref.token_ids) > 30
    a = [(5 * j) % 300 + 3 for j in range(80)]  # with its 40 tokens: 30 pages of 4, the whole KV room
    one = {"demo-r4-attn": str(demo / "adapters" / "demo-r4-attn")}
    small = llm_with_kv_room(demo, one, 30)
    outs = small.generate([a, "Hi"], [params(n=40, ignore_eos=True), params(so, n=100)], [None, "demo-r4-attn"])
    assert outs[1].metrics["num_preemptions"] > 0, "the constrained request was meant to be preempted"
    assert small.engine.executor.constraints.rebuilds > 0
    assert outs[1].token_ids == ref.token_ids and outs[1].finish_reason == "stop"
    check_valid(so, outs[1].text)
    assert small.engine.is_idle_clean()
    small.generate(["x"], params(n=1))  # the next step's finished ids drop the runner's matcher
    assert not small.engine.executor.constraints.state


def test_bad_grammars_are_refused_and_harm_nothing(llm):
    for so, what in (
        (StructuredOutputs(json='{"type": "objec"}'), "json"),
        (StructuredOutputs(json="{not json"), "json"),
        (StructuredOutputs(regex="(ab"), "regex"),
        (StructuredOutputs(grammar='root ::= "a" ('), "grammar"),
        (StructuredOutputs(grammar='root ::= "a" b'), "grammar"),
        (StructuredOutputs(grammar="start: /(a/"), "grammar"),
    ):
        with pytest.raises(ValueError, match=f"invalid {what}"):
            llm.engine.add_request("Hello", params(so))
    assert not llm.engine.has_unfinished()
    for bad in (dict(), dict(regex="a", choice=("a",)), dict(choice=())):
        with pytest.raises(ValueError):
            StructuredOutputs(**bad)
    assert llm.generate(["Hello"], params(CASES[2]))[0].text in CHOICES


def test_grammar_compiled_once_per_spec_and_cut_by_max_tokens(llm):
    """The engine validates (compiles) a spec once and the runner compiles it once, however many requests
    use it; a constrained output cut by max_tokens ends with "length"; a grammar that allows only EOS wins
    over min_tokens (else nothing could be sampled)."""
    so = StructuredOutputs(regex=r"[a-z]{2}-\d{2}")
    llm.generate(["a", "b", "c"], [params(so)] * 3)
    llm.generate(["d"], params(so, temperature=1.0, seed=3))
    assert llm.engine.grammars().cache and llm.engine.executor.constraints.grammars.cache
    seen = {g.compiles for g in (llm.engine.grammars(), llm.engine.executor.constraints.grammars)}
    llm.generate(["e", "f"], [params(so)] * 2)
    assert {g.compiles for g in (llm.engine.grammars(), llm.engine.executor.constraints.grammars)} == seen
    out = llm.generate(["x"], params(StructuredOutputs(json=json.dumps(SCHEMA)), n=5))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5 and out.text.startswith('{"name')
    out = llm.generate(["x"], params(StructuredOutputs(choice=("ok",)), min_tokens=8))[0]
    assert out.text == "ok" and out.finish_reason == "stop"


def test_apply_token_bitmask():
    """Bit t of a row allows token t; other rows are untouched."""
    g = torch.Generator().manual_seed(0)
    vocab, rows = 100, [0, 2, 5]
    logits = torch.randn(6, vocab, generator=g)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, (vocab + 31) // 32), generator=g, dtype=torch.int64).int()
    want = logits.clone()
    for i, r in enumerate(rows):
        for t in range(vocab):
            if not (int(bitmask[i, t // 32]) >> (t % 32)) & 1:
                want[r, t] = float("-inf")
    got = logits.clone()
    apply_token_bitmask(got, bitmask, rows)
    assert torch.equal(got, want)
    assert torch.isinf(got[rows]).any() and torch.equal(got[[1, 3, 4]], logits[[1, 3, 4]])
