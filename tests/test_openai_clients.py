"""What users of vLLM reach for first, with the clients they use, against the Ray Serve app of the demo
(real Ray on the CPU, one group, served on 127.0.0.1:8432): echo and prompt logprobs with the openai
client, lm-evaluation-harness's `local-completions` on a loglikelihood and a multiple-choice task, and
the 400s for vLLM fields this server does not implement. Values are compared with the offline engine
(`app.LLM`), itself checked against transformers + PEFT in tests/test_engine.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from app import LLM, SamplingParams
from app.demo import build_demo

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray  # every test here runs on a Ray session (tests/conftest.py)
serve = pytest.importorskip("ray.serve")

PORT = 8432
BASE = f"http://127.0.0.1:{PORT}"
MODEL = "sloray-demo"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    return build_demo()


@pytest.fixture(scope="module")
def service(demo, tmp_path_factory):
    """The demo at / and, at /llama3, the demo's base model under the name "model-llama3" with a chat
    template that asks for Llama-3 JSON tool calls, scheduled by priority (vLLM's scheduling policy)."""
    from ray.serve.api import RunTarget

    from deployments.builder import build_app
    from tests.test_tools import LLAMA3_TEMPLATE

    llama3 = tmp_path_factory.mktemp("llama3") / "model-llama3"
    shutil.copytree(demo / "model", llama3)
    cfg = json.loads((llama3 / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (llama3 / "tokenizer_config.json").write_text(json.dumps(cfg))
    (llama3 / "chat_template.jinja").write_text(LLAMA3_TEMPLATE)
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    args = {"num_groups": 1, "group_num_cpus": 0.5, "device": "cpu", "dtype": "float32"}
    serve.run_many(
        [
            RunTarget(build_app(args), name="clients", route_prefix="/"),
            RunTarget(
                build_app(args | {"model": str(llama3), "group_num_cpus": 0.25, "queue_order": "priority"}),
                name="llama3",
                route_prefix="/llama3",
            ),
        ]
    )
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def llm(demo):
    return LLM(str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def llama3_client(service):
    return openai.OpenAI(base_url=f"{BASE}/llama3/v1", api_key="none", max_retries=0, timeout=120)


def offline(llm, prompt, adapter, **kw):
    return llm.generate([prompt], SamplingParams(temperature=0.0, **kw), adapters=[adapter])[0]


# ---- echo and prompt logprobs ---------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ["demo-r4-attn", None])
def test_echo_logprobs_equal_offline(client, llm, adapter):
    """echo + logprobs: text = prompt + completion; logprobs cover the prompt's tokens (the first None,
    the others the offline engine's prompt logprobs, their top_logprobs holding the token itself) then the
    completion's; max_tokens 0 gives the prompt alone (lm-eval's loglikelihood), streamed the same."""
    prompt = "The quick brown fox jumps"
    tok = llm.engine.tokenizer
    ids = tok.encode(prompt)
    for max_tokens in (0, 3):
        ref = offline(llm, prompt, adapter, max_tokens=max_tokens, logprobs=2, prompt_logprobs=2, ignore_eos=True)
        r = client.completions.create(
            model=adapter or MODEL,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            echo=True,
            logprobs=2,
            extra_body={"ignore_eos": True},
        )
        c = r.choices[0]
        assert c.text == prompt + ref.text and c.finish_reason == "length"
        lp = c.logprobs
        assert lp.tokens == [tok.decode([t]) for t in ids + ref.token_ids]
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        want = [x.logprob for x in ref.prompt_logprobs[1:] + ref.logprobs]
        assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
        for j, (top, x) in enumerate(zip(lp.top_logprobs[1:], ref.prompt_logprobs[1:])):
            assert top[lp.tokens[j + 1]] == pytest.approx(x.logprob, abs=1e-4)  # the prompt token itself
            assert {tok.decode([t]) for t, _ in x.top} <= set(top)
        assert lp.text_offset[0] == 0 and r.usage.completion_tokens == max_tokens
    streamed = list(
        client.completions.create(
            model=adapter or MODEL, prompt=prompt, max_tokens=0, temperature=0, echo=True, logprobs=1, stream=True
        )
    )
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == prompt
    got = [v for ch in streamed if ch.choices and ch.choices[0].logprobs for v in ch.choices[0].logprobs.token_logprobs]
    assert got[0] is None and got[1:] == pytest.approx([x.logprob for x in ref.prompt_logprobs[1:]], abs=1e-4)


def test_prompt_logprobs_field_and_min_tokens(client, llm):
    """vLLM's prompt_logprobs (completions and chat: {token id: {logprob, rank, decoded_token}}), min_tokens
    (a bias makes EOS the greedy choice: min_tokens holds it off), allowed_token_ids, bad_words and
    return_tokens_as_token_ids."""
    ref = offline(llm, "Hello, world!", "demo-r8-mlp", max_tokens=2, prompt_logprobs=3)
    r = client.completions.create(
        model="demo-r8-mlp", prompt="Hello, world!", max_tokens=2, temperature=0, extra_body={"prompt_logprobs": 3}
    )
    plp = r.choices[0].model_extra["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ref.prompt_token_ids)
    for d, t, x in zip(plp[1:], ref.prompt_token_ids[1:], ref.prompt_logprobs[1:]):
        assert d[str(t)]["logprob"] == pytest.approx(x.logprob, abs=1e-4) and d[str(t)]["rank"] == x.rank
        for rank, (a, v) in enumerate(x.top, 1):
            assert d[str(a)]["logprob"] == pytest.approx(v, abs=1e-4) and d[str(a)]["rank"] == rank
    assert r.choices[0].text == ref.text and r.choices[0].logprobs is None
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1, extra_body={"prompt_logprobs": 0}
    )
    plp = chat.model_extra["prompt_logprobs"]
    assert plp[0] is None and len(plp) == chat.usage.prompt_tokens and all(len(d) == 1 for d in plp[1:])

    eos = llm.engine.tokenizer.eos_token_id
    kw = dict(model=MODEL, prompt="Hello", max_tokens=10, temperature=0, logit_bias={str(eos): 100})
    assert client.completions.create(**kw).usage.completion_tokens == 1
    r = client.completions.create(**kw, extra_body={"min_tokens": 4})
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "stop"
    # vLLM's allowed_token_ids: EOS alone allowed ends the output at once; an id outside the vocabulary is a 400
    kw = dict(model=MODEL, prompt="Hello", max_tokens=10, temperature=0)
    r = client.completions.create(**kw, extra_body={"allowed_token_ids": [eos]})
    assert r.usage.completion_tokens == 1 and r.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.completions.create(**kw, extra_body={"allowed_token_ids": [10**7]})
    # vLLM's return_tokens_as_token_ids: logprobs name each token "token_id:N" (completions and chat)
    ref = offline(llm, "Hello, world!", "demo-r8-mlp", max_tokens=3)
    r = client.completions.create(
        model="demo-r8-mlp", prompt="Hello, world!", max_tokens=3, temperature=0, logprobs=2,
        extra_body={"return_tokens_as_token_ids": True},
    )  # fmt: skip
    lp = r.choices[0].logprobs
    assert lp.tokens == [f"token_id:{t}" for t in ref.token_ids] and r.choices[0].text == ref.text
    assert all(len(d) >= 2 and all(k.startswith("token_id:") for k in d) for d in lp.top_logprobs)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, logprobs=True, top_logprobs=1,
        extra_body={"return_tokens_as_token_ids": True},
    )  # fmt: skip
    # vLLM's bad_words (tokenized by the ingress): a word the greedy output holds is not generated
    tok, prompt = llm.engine.tokenizer, "Hello, world!"
    plain = offline(llm, prompt, "demo-r8-mlp", max_tokens=8).token_ids

    def holds(ids, seq):
        return any(ids[i : i + len(seq)] == seq for i in range(len(ids) - len(seq) + 1))

    spans = (tok.decode(plain[i : i + k]).strip() for k in (2, 1) for i in range(len(plain) - k + 1))
    word = next(w for w in spans if w and any(holds(plain, q) for q in tok.word_token_ids([w])))
    r = client.completions.create(
        model="demo-r8-mlp", prompt=prompt, max_tokens=8, temperature=0, logprobs=0,
        extra_body={"bad_words": [word], "return_tokens_as_token_ids": True},
    )  # fmt: skip
    ids = [int(t.removeprefix("token_id:")) for t in r.choices[0].logprobs.tokens]
    assert ids and ids != plain[: len(ids)] and not any(holds(ids, q) for q in tok.word_token_ids([word]))
    for words in ([" ".join("abcdefghij" * 20)], ["w"] * 2049):  # a word of > 64 tokens; too many words
        with pytest.raises(openai.BadRequestError, match="bad_words") as e:
            client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, extra_body={"bad_words": words})
        assert e.value.param == "bad_words"
    content = chat.choices[0].logprobs.content
    assert content and all(e.token.startswith("token_id:") and e.top_logprobs[0].token.startswith("token_id:")
                           for e in content)  # fmt: skip


def test_unimplemented_vllm_fields_are_refused(service):
    for route, body, field in (
        ("/v1/completions", {"prompt": "x", "priority": 1}, "priority"),
        ("/v1/completions", {"prompt": "x", "use_beam_search": True}, "use_beam_search"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "chat_template": "{{x}}"},
            "chat_template",
        ),
    ):
        r = httpx.post(BASE + route, json={"model": MODEL, **body}, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == field and field in err["message"] and err["code"] == 400
    ok = {"model": MODEL, "prompt": "x", "max_tokens": 1, "min_p": 0.0, "skip_special_tokens": True}
    assert httpx.post(BASE + "/v1/completions", json=ok, timeout=60).status_code == 200


def test_chat_continue_final_message(client, llm):
    """vLLM's add_generation_prompt / continue_final_message on chat and /tokenize: the final (assistant)
    message left open, as transformers renders it, and the model continues it (greedy text equal to the
    offline engine on those tokens); the closed final message without a generation prompt; echo; both flags ->
    400."""
    msgs = [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon a time"}]
    tok = llm.engine.tokenizer
    open_end = {"add_generation_prompt": False, "continue_final_message": True}
    assert tok.hf.apply_chat_template(msgs, tokenize=False, **open_end).endswith("Once upon a time")
    for flags in (open_end, {"add_generation_prompt": False}):
        ids = tok.apply_chat_template(msgs, **flags)
        assert tok.decode(ids, skip_special_tokens=False).endswith(
            "Once upon a time" if flags.get("continue_final_message") else "Once upon a time\n"
        )
        ref = offline(llm, ids, "demo-r4-attn", max_tokens=6, ignore_eos=True)
        r = client.chat.completions.create(
            model="demo-r4-attn", messages=msgs, max_tokens=6, temperature=0, extra_body={"ignore_eos": True, **flags}
        )
        assert r.choices[0].message.content == ref.text and r.usage.prompt_tokens == len(ids)
        t = httpx.post(BASE + "/tokenize", json={"model": MODEL, "messages": msgs, **flags}, timeout=60)
        assert t.status_code == 200 and t.json()["tokens"] == ids
        # echo (vLLM's): the reply starts with the final assistant message, streamed or not; a final user
        # message is not echoed
        kw = dict(model="demo-r4-attn", max_tokens=6, temperature=0)
        extra = {"ignore_eos": True, "echo": True, **flags}
        r = client.chat.completions.create(messages=msgs, extra_body=extra, **kw)
        whole = "Once upon a time" + ref.text
        assert r.choices[0].message.content == whole
        chunks = list(client.chat.completions.create(messages=msgs, extra_body=extra, stream=True, **kw))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole
    r = client.chat.completions.create(messages=msgs[:1], extra_body={"echo": True, "ignore_eos": True}, **kw)
    ref = offline(llm, tok.apply_chat_template(msgs[:1]), "demo-r4-attn", max_tokens=6, ignore_eos=True)
    assert r.choices[0].message.content == ref.text
    both = {"model": MODEL, "messages": msgs, "continue_final_message": True}  # add_generation_prompt defaults true
    for route in ("/v1/chat/completions", "/tokenize"):
        r = httpx.post(BASE + route, json=both, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message", r.text


# ---- lm-evaluation-harness ----------------------------------------------------------------------
LL_DOCS = [
    {"context": "The quick brown", "continuation": " fox jumps"},
    {"context": "Hello, world!", "continuation": " How are you today?"},
    {"context": "Serving thousands of", "continuation": " concurrent LoRA adapters"},
    {"context": "def main():", "continuation": "\n    print('hello')"},
]
MC_DOCS = [
    {"question": "The quick brown fox jumps over the", "choices": [" lazy dog.", " red car.", " moon"], "answer": 0},
    {"question": "Hello, world! How are", "choices": [" you today?", " trees", " 42"], "answer": 0},
    {"question": "Ray Serve deploys the", "choices": [" ingress", " banana", " tensor"], "answer": 2},
]
TASKS = """
task: sloray_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/ll.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
---
task: sloray_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _write_tasks(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "ll.jsonl").write_text("".join(json.dumps(x) + "\n" for x in LL_DOCS))
    (d / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in MC_DOCS))
    ll, mc = TASKS.format(dir=d).split("---\n")
    (d / "sloray_ll.yaml").write_text(ll)
    (d / "sloray_mc.yaml").write_text(mc)


def _loglikelihood(llm, adapter: str | None, context: str, continuation: str) -> float:
    """lm-eval's encoding of a pair (whole string encoded, context split off; no special tokens), scored by
    the offline engine's prompt logprobs of the continuation's tokens."""
    hf = llm.engine.tokenizer.hf
    whole = hf.encode(context + continuation, add_special_tokens=False)
    ctx = hf.encode(context, add_special_tokens=False)
    out = offline(llm, whole, adapter, max_tokens=0, prompt_logprobs=0)
    return sum(lp.logprob for lp in out.prompt_logprobs[len(ctx) :])


def test_lm_eval_local_completions(service, demo, llm, tmp_path):
    """`lm_eval --model local-completions` (echo + logprobs, token-id prompts, max_tokens 1) on a local
    loglikelihood task and a multiple-choice task, through an adapter: every loglikelihood it records equals
    the offline engine's with that adapter, and differs from the base model's (so the adapter was applied;
    the base model's echo logprobs over HTTP are test_echo_logprobs_equal_offline's)."""
    adapter = "demo-r16-all"
    pytest.importorskip("lm_eval")
    tasks, out = tmp_path / "tasks", tmp_path / "out"
    _write_tasks(tasks)
    args = ",".join(
        [
            f"model={adapter}",
            f"base_url={BASE}/v1/completions",
            "tokenizer_backend=huggingface",
            f"tokenizer={demo / 'model'}",
            "num_concurrent=1",
            "max_retries=1",
        ]
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args]
    cmd += ["--tasks", "sloray_ll,sloray_mc", "--include_path", str(tasks), "--output_path", str(out)]
    proc = subprocess.run(cmd + ["--log_samples"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (results,) = out.rglob("results_*.json")
    res = json.loads(results.read_text())["results"]
    assert 0 <= res["sloray_mc"]["acc,none"] <= 1 and res["sloray_ll"]["perplexity,none"] > 1
    for task in ("sloray_ll", "sloray_mc"):
        (samples,) = out.rglob(f"samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in samples.read_text().splitlines()]
        args = [
            a for r in rows for a in (r["arguments"].values() if isinstance(r["arguments"], dict) else r["arguments"])
        ]
        pairs = [(a["arg_0"], a["arg_1"]) if isinstance(a, dict) else tuple(a) for a in args]
        got = [float(resp[0][0]) for r in rows for resp in r["resps"]]
        assert len(got) == len(pairs) == (len(LL_DOCS) if task == "sloray_ll" else 9)
        want = [_loglikelihood(llm, adapter, c, x) for c, x in pairs]
        assert got == pytest.approx(want, abs=1e-3), task
        assert all(abs(w - v) > 1e-3 for w, v in zip(want, [_loglikelihood(llm, None, c, x) for c, x in pairs]))


# ---- structured output --------------------------------------------------------------------------
def test_openai_parse_with_a_pydantic_schema(client, llm):
    """The openai SDK's `chat.completions.parse()` with a pydantic model (response_format json_schema, strict):
    the random demo model's output is valid against the schema and parses, greedy and sampled, streamed
    chat too; json_object gives a JSON object."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Pet(BaseModel):
        name: str = Field(max_length=8)
        kind: Literal["cat", "dog", "fish"]
        age: int = Field(ge=0, le=30)

    class Person(BaseModel):
        name: str = Field(max_length=12)
        adult: bool
        pets: list[Pet] = Field(max_length=2)

    msgs = [{"role": "user", "content": "Describe a person as JSON."}]
    for model, kw in ((MODEL, dict(temperature=0)), ("demo-r16-all", dict(temperature=1.0, seed=3))):
        r = client.chat.completions.parse(model=model, messages=msgs, response_format=Person, max_tokens=300, **kw)
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "stop", msg.content
        assert isinstance(msg.parsed, Person) and Person.model_validate_json(msg.content) == msg.parsed
    strict = Person.model_json_schema()  # no other properties (else the random model could add them forever)
    for obj in (strict, *strict["$defs"].values()):
        obj["additionalProperties"] = False
    schema = {"type": "json_schema", "json_schema": {"name": "Person", "schema": strict}}
    chunks = client.chat.completions.create(
        model=MODEL, messages=msgs, response_format=schema, max_tokens=300, temperature=0, stream=True
    )
    Person.model_validate_json("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    eos_free = client.chat.completions.create(
        model=MODEL,
        messages=msgs,
        response_format={"type": "json_object"},
        logit_bias={str(llm.engine.tokenizer.hf.convert_tokens_to_ids("}")): 100},
        max_tokens=50,
        temperature=0,
    )
    assert json.loads(eos_free.choices[0].message.content) == {} and eos_free.choices[0].finish_reason == "stop"


def test_guided_regex_choice_grammar_and_completions(client):
    """vLLM's guided_regex / guided_choice / guided_grammar and structured_outputs, on chat and completions;
    a bad regex is a 400 and the next requests are served."""
    msgs = [{"role": "user", "content": "Give me a code."}]
    r = client.chat.completions.create(
        model="demo-r8-mlp",
        messages=msgs,
        max_tokens=20,
        temperature=1.0,
        seed=1,
        extra_body={"guided_regex": r"[A-Z]{3}-\d{4}"},
    )
    assert re.fullmatch(r"[A-Z]{3}-\d{4}", r.choices[0].message.content) and r.choices[0].finish_reason == "stop"
    r = client.completions.create(
        model=MODEL,
        prompt="Is it?",
        max_tokens=10,
        temperature=0,
        n=3,
        extra_body={"guided_choice": ["yes", "no way"], "seed": 2},
    )
    assert all(c.text in ("yes", "no way") for c in r.choices)
    r = client.completions.create(
        model="demo-r1-qv",
        prompt="Sum:",
        max_tokens=20,
        temperature=0.8,
        seed=4,
        extra_body={"guided_grammar": 'root ::= num " + " num\nnum ::= [1-9] [0-9]?'},
    )
    assert re.fullmatch(r"[1-9][0-9]? \+ [1-9][0-9]?", r.choices[0].text), r.choices[0].text
    r = client.completions.create(
        model=MODEL, prompt="x", max_tokens=10, temperature=0, extra_body={"structured_outputs": {"choice": ["A", "B"]}}
    )
    assert r.choices[0].text in ("A", "B")
    bad = httpx.post(
        f"{BASE}/v1/completions",
        json={"model": MODEL, "prompt": "x", "guided_regex": "(ab", "max_tokens": 4},
        timeout=60,
    )
    assert bad.status_code == 400 and "regex" in bad.json()["error"]["message"], bad.text
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=2).usage.completion_tokens == 2


# ---- tools --------------------------------------------------------------------------------------
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _args(call) -> dict:
    import jsonschema

    args = json.loads(call.function.arguments)
    jsonschema.validate(args, {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"])
    return args


def test_forced_tool_calls_named_and_required(client):
    """tool_choice a function / "required": the random model's output is forced to valid calls, streamed or
    not; tool_choice "none" leaves the output as text."""
    named = {"type": "function", "function": {"name": "get_weather"}}
    for model, kw in ((MODEL, dict(temperature=0)), ("demo-r4-attn", dict(temperature=1.0, seed=5))):
        r = client.chat.completions.create(
            model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice=named, max_tokens=150, **kw
        )
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and r.choices[0].finish_reason == "stop"
        assert set(_args(call)) == {"city", "unit"} and r.choices[0].message.content is None
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,  # one call at most: the random model would add calls up to max_tokens
        max_tokens=200,
        temperature=0.7,
        seed=1,
    )
    calls = r.choices[0].message.tool_calls
    assert calls and r.choices[0].finish_reason == "tool_calls" and all(_args(c) is not None for c in calls)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=named, max_tokens=150, temperature=0, stream=True
        )
    )
    deltas = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "get_weather"
    assert set(_args(deltas[0])) == {"city", "unit"}
    assert not any(ch.choices[0].delta.content for ch in chunks if ch.choices)
    plain = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0
    )
    same = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0)
    assert (
        plain.choices[0].message.content == same.choices[0].message.content and not plain.choices[0].message.tool_calls
    )


HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'


def test_auto_tool_calls_parsed_from_the_template_format(client):
    """tool_choice "auto": the output is parsed in the chat template's format (the demo: Hermes). The random
    model would not call a tool by itself, so a guided_choice makes it write a call, or text."""
    for text, stream in ((HERMES_CALL, False), ("Sure. " + HERMES_CALL, True), ("No tools needed.", True)):
        kw = dict(model=MODEL, messages=ASK, tools=[WEATHER, TIME], max_tokens=200, temperature=0)
        kw["extra_body"] = {"guided_choice": [text]}
        if not stream:
            msg = client.chat.completions.create(**kw).choices[0]
            content, calls, reason = msg.message.content, msg.message.tool_calls or [], msg.finish_reason
        else:
            chunks = [ch for ch in client.chat.completions.create(**kw, stream=True) if ch.choices]
            content = "".join(ch.choices[0].delta.content or "" for ch in chunks)
            calls = [tc for ch in chunks for tc in ch.choices[0].delta.tool_calls or []]
            reason = chunks[-1].choices[0].finish_reason
        if "<tool_call>" in text:
            assert [(c.function.name, _args(c)) for c in calls] == [("get_weather", {"city": "Paris", "unit": "C"})]
            assert (content or "").strip() == text[: text.index("<tool_call>")].strip() and reason == "tool_calls"
        else:
            assert content == text and not calls and reason == "stop"


def test_llama3_json_tool_calls(llama3_client):
    """A model whose chat template asks for Llama-3 JSON calls: its output is parsed in that format."""
    call = '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "F"}}'
    kw = dict(model="model-llama3", messages=ASK, tools=[WEATHER], max_tokens=200, temperature=0)
    r = llama3_client.chat.completions.create(**kw, extra_body={"guided_choice": [call]})
    (c,) = r.choices[0].message.tool_calls
    assert _args(c) == {"city": "Oslo", "unit": "F"} and r.choices[0].finish_reason == "tool_calls"
    chunks = [
        ch
        for ch in llama3_client.chat.completions.create(**kw, stream=True, extra_body={"guided_choice": [call]})
        if ch.choices
    ]
    (c,) = [tc for ch in chunks for tc in ch.choices[0].delta.tool_calls or []]
    assert _args(c) == {"city": "Oslo", "unit": "F"} and not any(ch.choices[0].delta.content for ch in chunks)


def test_langchain_bind_tools_and_structured_output(service):
    """LangChain's ChatOpenAI against the demo: bind_tools with tool_choice forcing a tool returns a call whose
    args validate; with_structured_output(pydantic model) returns the model. strict=True: the schemas allow
    no other properties (without it the random model could add properties until max_tokens)."""
    pytest.importorskip("langchain_openai")
    from typing import Literal

    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class GetWeather(BaseModel):
        """The weather in a city."""

        city: str = Field(max_length=10)
        unit: Literal["C", "F"]

    class Answer(BaseModel):
        verdict: Literal["yes", "no"]
        confidence: int = Field(ge=0, le=100)

    llm = ChatOpenAI(model=MODEL, base_url=f"{BASE}/v1", api_key="none", temperature=0, max_tokens=100, max_retries=0)
    msg = llm.bind_tools([GetWeather], tool_choice="GetWeather", strict=True).invoke("Weather in Paris?")
    (call,) = msg.tool_calls
    assert call["name"] == "GetWeather" and GetWeather.model_validate(call["args"])
    msg = llm.bind_tools([GetWeather], tool_choice="any", strict=True, parallel_tool_calls=False).invoke("Weather?")
    assert msg.tool_calls and all(GetWeather.model_validate(c["args"]) for c in msg.tool_calls)
    out = llm.with_structured_output(Answer, strict=True).invoke("Is the sky blue?")
    assert isinstance(out, Answer)
    out = llm.with_structured_output(Answer, method="function_calling", strict=True).invoke("Is the sky blue?")
    assert isinstance(out, Answer)


# ---- the Responses API ------------------------------------------------------------------------------
def _events(client, **kw) -> list:
    return list(client.responses.create(stream=True, **kw))


def test_responses_text_equals_chat_streamed_or_not(client):
    """`client.responses.create` answers what the chat route answers for the same messages (instructions as
    the system message; a list input with an earlier turn's call and its output as the chat's assistant and
    tool messages): the same text and token counts; streamed, the deltas add up to it, the events are in
    the documented order with increasing sequence numbers, and the last one carries the whole Response."""
    inputs = [
        ("Hello there", None, [{"role": "user", "content": "Hello there"}]),
        (
            [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C, clear"},
                {"type": "reasoning", "id": "rs_1", "summary": []},  # dropped: templates show no earlier reasoning
            ],
            "You are terse.",
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C, clear"},
            ],
        ),
    ]  # fmt: skip
    for inp, instructions, messages in inputs:
        kw = dict(model="demo-r4-attn", input=inp, max_output_tokens=12, temperature=0)
        if instructions:
            kw["instructions"] = instructions
        chat = client.chat.completions.create(model="demo-r4-attn", messages=messages, max_tokens=12, temperature=0)
        r = client.responses.create(**kw)
        assert r.object == "response" and r.id.startswith("resp_") and r.model == "demo-r4-attn"
        assert r.output_text == chat.choices[0].message.content
        assert r.usage.input_tokens == chat.usage.prompt_tokens and r.usage.output_tokens == 12
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
        (msg,) = r.output
        assert msg.type == "message" and msg.role == "assistant" and msg.content[0].type == "output_text"
        events = _events(client, **kw)
        types = [e.type for e in events]
        assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added"]  # fmt: skip
        assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                              "response.incomplete"]  # fmt: skip
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
        last = events[-1].response
        assert last.output_text == r.output_text and last.usage.output_tokens == 12 and last.status == "incomplete"


def test_responses_tools_and_json_schema(client):
    """Function tools (tool_choice required: the random model is forced to a call) come back as
    function_call items, streamed or not; text.format json_schema constrains the output text."""
    tool = {
        "type": "function",
        "name": "get_weather",
        **{k: WEATHER["function"][k] for k in ("description", "parameters")},
    }
    kw = dict(model=MODEL, input=ASK, tools=[tool], tool_choice={"type": "function", "name": "get_weather"},
              max_output_tokens=150, temperature=0)  # fmt: skip
    r = client.responses.create(**kw)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.call_id and set(json.loads(call.arguments)) == {"city", "unit"}
    assert r.status == "completed" and r.tools[0].name == "get_weather"
    events = _events(client, **kw)
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == json.loads(call.arguments)
    assert events[-1].type == "response.completed" and events[-1].response.output[-1].type == "function_call"
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}  # fmt: skip
    fmt = {"type": "json_schema", "name": "v", "schema": schema, "strict": True}
    r = client.responses.create(
        model="demo-r4-attn", input="Is it ok?", max_output_tokens=40, temperature=0, text={"format": fmt}
    )
    assert isinstance(json.loads(r.output_text)["ok"], bool) and r.status == "completed"


def test_responses_refusals(client):
    """What is not implemented is a 400 naming the field; an unknown model a 404, as on the chat route."""
    base = dict(model=MODEL, input="x", max_output_tokens=2)
    for extra, param in (
        (dict(previous_response_id="resp_1"), "previous_response_id"),
        (dict(background=True), "background"),
        (dict(tools=[{"type": "web_search"}]), "tools"),
        (dict(input=[{"type": "image_generation_call", "id": "x"}]), "input"),
        (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]), "input"),
        (dict(text={"format": {"type": "grammar"}}), "text"),
    ):
        r = httpx.post(BASE + "/v1/responses", json=base | extra, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param, r.text
    r = httpx.post(BASE + "/v1/responses", json=base | {"model": "nope"}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_usage_reports_prompt_tokens_from_the_prefix_cache(client):
    """A prompt sent again finds its full KV pages in the prefix cache (on by default): OpenAI's
    usage.prompt_tokens_details.cached_tokens says how many of its tokens, as the Responses API's
    input_tokens_details.cached_tokens; the text is the same."""
    prompt = "Prefix caching keeps the pages of a prompt it has seen, " * 6
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < again.usage.prompt_tokens and again.choices[0].text == first.choices[0].text
    # vLLM's POST /reset_prefix_cache (an admin route): the next request computes its whole prompt again
    assert httpx.post(f"{BASE}/reset_prefix_cache", timeout=60).status_code == 200
    fresh = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0 and fresh.choices[0].text == first.choices[0].text
    words = "Tell me about the pages of the pool, " * 6
    one = client.responses.create(model=MODEL, input=words, max_output_tokens=3, temperature=0)
    two = client.responses.create(model=MODEL, input=words, max_output_tokens=3, temperature=0)
    assert one.usage.input_tokens_details.cached_tokens == 0
    assert 0 < two.usage.input_tokens_details.cached_tokens < two.usage.input_tokens


def test_priority_with_and_without_priority_scheduling(service, client, llm):
    """vLLM's `priority`: served where the engine schedules by priority (the /llama3 app), with the tokens it
    gives without one; a 400 naming the field where it does not (the demo at /), as vLLM answers."""
    prio = openai.OpenAI(base_url=f"{BASE}/llama3/v1", api_key="none", max_retries=0, timeout=120)
    prompt = "Priority scheduling admits"
    plain = prio.completions.create(model="model-llama3", prompt=prompt, max_tokens=5, temperature=0)
    for p in (-3, 7):
        r = prio.completions.create(model="model-llama3", prompt=prompt, max_tokens=5, temperature=0,
                                    extra_body={"priority": p})  # fmt: skip
        assert r.choices[0].text == plain.choices[0].text
    chat = prio.responses.create(model="model-llama3", input="Hi", max_output_tokens=2, extra_body={"priority": 2})
    assert chat.usage.output_tokens >= 1  # accepted and run (its status: incomplete at max_output_tokens)
    with pytest.raises(openai.BadRequestError, match="priority scheduling is not enabled") as e:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, extra_body={"priority": 1})
    assert e.value.param == "priority"
    with pytest.raises(openai.BadRequestError) as e:
        prio.completions.create(model="model-llama3", prompt=prompt, max_tokens=2, extra_body={"priority": 2**63})
    assert e.value.status_code == 400


def test_litellm_openai_and_hosted_vllm_providers(service, llm, monkeypatch):
    """LiteLLM (a proxy / SDK many users put in front of vLLM) through its `openai/` and `hosted_vllm/`
    providers: chat (the offline engine's greedy tokens), streamed chat, text completion, and a 404 mapped to
    its NotFoundError."""
    litellm = pytest.importorskip("litellm")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price list (no internet here)
    prompt = "The quick brown fox"
    (want,) = llm.generate([prompt], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True), ["demo-r16-all"])
    for provider in ("openai", "hosted_vllm"):
        kw = {"api_base": f"{BASE}/v1", "api_key": "none", "temperature": 0, "max_tokens": 6}
        t = litellm.text_completion(model=f"{provider}/demo-r16-all", prompt=prompt, ignore_eos=True, **kw)
        assert t.choices[0].text == want.text and t.usage.completion_tokens == 6
        msgs = [{"role": "user", "content": "Hello"}]
        chat = litellm.completion(model=f"{provider}/demo-r4-attn", messages=msgs, **kw)
        chunks = litellm.completion(model=f"{provider}/demo-r4-attn", messages=msgs, stream=True, **kw)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == (chat.choices[0].message.content or "")
        with pytest.raises(litellm.NotFoundError, match="does not exist"):
            litellm.completion(model=f"{provider}/no-such-adapter", messages=msgs, **kw)
