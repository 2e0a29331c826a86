"""The Ray Serve application with real Ray on the CPU, over HTTP (the official `openai` client and httpx).

Two applications are started once for the module (in parallel, `serve.run_many`) on the embedded demo:
  * "main" at /: two TP groups (TP=1) behind two ingress replicas (Serve's proxy balances between them, as
    a load balancer would), inference, admin and metrics keys required, run-time adapter loads confined to a
    temp root, small
    request limits (1 MiB bodies, 16 sequences and 8192 tokens per request);
  * "strict" at /strict: one group with an impossible TTFT SLO (every request is refused with 429, after
    tokenizing), up to 1024 prompts per request;
  * "tp2" at /tp2: one group of tensor_parallel_size=2 (deployments/tp.py: two rank actors over gloo);
  * "every-step" at /every-step: one group that streams one item per engine step (stream_interval_s=0;
    the others coalesce a stream's tokens, the default 0.05 s);
  * "fuzz" at /fuzz: one group with keys and a 64-token context (so that any generated request is cheap),
    the target of schemathesis.
Greedy results are compared with the offline `app.LLM` on the same model and adapters.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import hypothesis
import openai
import pytest

from app import LLM, SamplingParams
from app.demo import build_demo, write_peft_adapter
from app.tokenizer import Tokenizer
from deployments.routing import rendezvous_order

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

PORT = 8431
BASE = f"http://127.0.0.1:{PORT}"
KEY = "sk-sloray-test"
ADMIN_KEY = "sk-sloray-admin"
METRICS_KEY = "sk-sloray-metrics"
BODY_LIMIT = 1 << 20
MODEL = "sloray-demo"
GROUPS = ["SLoRAGroup-0", "SLoRAGroup-1"]
PROMPTS = [
    ("Hello, world!", "demo-r4-attn"),
    ("The quick brown fox", "demo-r16-all"),
    ("Serving thousands of", None),
    ("def main():", "demo-r32-rslora"),
]


@pytest.fixture(scope="module")
def demo():
    return build_demo()


@pytest.fixture(scope="module")
def roots(tmp_path_factory, demo):
    """An allowed root with a copy of a demo adapter, a pickle-only adapter, a rank-128 adapter, a
    symlink to a directory outside the root and a directory whose weights file links outside the root."""
    root = tmp_path_factory.mktemp("adapters")
    shutil.copytree(demo / "adapters" / "demo-r8-mlp", root / "copy-r8")
    shutil.copytree(demo / "adapters" / "demo-r1-qv", root / "routed")
    pickled = root / "pickled"
    shutil.copytree(demo / "adapters" / "demo-r4-attn", pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    write_peft_adapter(root / "rank128", demo / "model", 128, 128.0, ["q_proj", "v_proj"])
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(demo / "adapters" / "demo-r4-attn", outside / "a")
    os.symlink(outside / "a", root / "link-out")
    (root / "file-link").mkdir()
    shutil.copy(outside / "a" / "adapter_config.json", root / "file-link")
    os.symlink(outside / "a" / "adapter_model.safetensors", root / "file-link" / "adapter_model.safetensors")
    return root


@pytest.fixture(scope="module")
def service(demo, roots):
    from ray.serve.api import RunTarget

    from deployments.builder import build_app

    repo = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = repo + os.pathsep + os.environ.get("PYTHONPATH", "")
    ray.init(num_cpus=4, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    main = build_app(
        {
            "num_groups": 2,
            "num_ingress_replicas": 2,
            "api_keys": KEY,
            "admin_api_keys": ADMIN_KEY,
            "metrics_api_keys": METRICS_KEY,
            "allowed_adapter_roots": str(roots),
            "group_num_cpus": 0.5,
            "device": "cpu",
            "dtype": "float32",
            "stats_poll_interval_s": 0.1,
            "max_body_bytes": BODY_LIMIT,
            "max_choices_per_request": 16,
            "max_request_tokens": 8192,
        }
    )
    strict = build_app(
        {"num_groups": 1, "admission_ttft_slo_s": "1e-6", "group_num_cpus": 0.25, "max_choices_per_request": "1024"}
    )
    tp2 = build_app(
        {
            "model": str(demo / "model"),
            "adapter_dir": str(demo / "adapters"),
            "device": "cpu",
            "dtype": "float32",
            "tensor_parallel_size": "2",
        }
    )  # ranks: 1 CPU each
    every_step = build_app(
        {"num_groups": 1, "group_num_cpus": 0.25, "device": "cpu", "dtype": "float32", "stream_interval_s": "0"}
    )
    fuzz = build_app(
        {
            "group_num_cpus": 0.25,
            "device": "cpu",
            "dtype": "float32",
            "max_model_len": 64,
            "api_keys": KEY,
            "admin_api_keys": ADMIN_KEY,
            "max_choices_per_request": 8,
            "max_request_tokens": 1024,
        }
    )
    serve.run_many(
        [
            RunTarget(main, name="main", route_prefix="/"),
            RunTarget(strict, name="strict", route_prefix="/strict"),
            RunTarget(tp2, name="tp2", route_prefix="/tp2"),
            RunTarget(every_step, name="every-step", route_prefix="/every-step"),
            RunTarget(fuzz, name="fuzz", route_prefix="/fuzz"),
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
    return openai.OpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=BASE, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


@pytest.fixture(scope="module")
def admin(service):
    with httpx.Client(base_url=BASE, timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


def group_stats(name: str, app: str = "main") -> dict:
    return serve.get_deployment_handle(name, app_name=app).stats.remote().result()


def greedy(llm, prompt, adapter, max_tokens=12, **kw):
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)
    return llm.generate([prompt], sp, adapters=[adapter])[0]


# ---- generation equals the offline engine -------------------------------------------------------
def test_completions_equal_offline(client, llm):
    for prompt, adapter in PROMPTS:
        r = client.completions.create(model=adapter or MODEL, prompt=prompt, max_tokens=12, temperature=0)
        ref = greedy(llm, prompt, adapter)
        assert r.choices[0].text == ref.text, (prompt, adapter)
        assert r.choices[0].finish_reason == ref.finish_reason
        assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
        assert r.usage.completion_tokens == len(ref.token_ids)
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert r.model == (adapter or MODEL)
    # The adapters change the output (so the comparison above is not vacuous).
    texts = {greedy(llm, "Hello, world!", a).text for a in (None, "demo-r4-attn", "demo-r16-all")}
    assert len(texts) == 3


def test_token_id_prompts_and_batches(client, llm):
    tok = Tokenizer(llm.engine.cfg.model)
    ids = tok.encode("The quick brown fox")
    r = client.completions.create(
        model="demo-r8-mlp", prompt=[ids, tok.encode("Hello, world!")], max_tokens=6, temperature=0
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == greedy(llm, ids, "demo-r8-mlp", 6).text
    assert r.choices[1].text == greedy(llm, "Hello, world!", "demo-r8-mlp", 6).text
    r = client.completions.create(model=MODEL, prompt=["Hello, world!", "def main():"], max_tokens=5, temperature=0)
    assert [c.text for c in r.choices] == [greedy(llm, p, None, 5).text for p in ("Hello, world!", "def main():")]


def test_streaming_completion_equals_offline(client, llm, http):
    ref = greedy(llm, "The quick brown fox", "demo-r64-all", 16, ignore_eos=True)
    chunks = list(
        client.completions.create(
            model="demo-r64-all",
            prompt="The quick brown fox",
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.text
    # really streamed: the first tokens go out at once, the end separately (the rest is coalesced)
    assert len([c for c in chunks if c.choices]) >= 2
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    # Raw SSE: data lines in OpenAI's format, ending with [DONE].
    with http.stream(
        "POST", "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": True}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_chat_equals_offline_plain_and_streaming(client, llm):
    tok = Tokenizer(llm.engine.cfg.model)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, world!"}]
    ref = greedy(llm, tok.apply_chat_template(messages), "demo-r16-all", 10)
    r = client.chat.completions.create(model="demo-r16-all", messages=messages, max_tokens=10, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
    stream = client.chat.completions.create(
        model="demo-r16-all",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_logprobs_completion_and_streamed_chat(client, llm):
    """logprobs over HTTP (openai client) carry the offline engine's values: completions' logprobs=k
    (tokens, token_logprobs, top_logprobs, text_offset) and chat's logprobs + top_logprobs, streamed and
    not (the streamed chunks' entries, joined, are the non-streamed list)."""
    want = greedy(llm, "Hello", "demo-r4-attn", 6, ignore_eos=True, logprobs=2)
    r = client.completions.create(
        model="demo-r4-attn", prompt="Hello", max_tokens=6, temperature=0, logprobs=2, extra_body={"ignore_eos": True}
    )
    lp = r.choices[0].logprobs
    assert lp.token_logprobs == pytest.approx([x.logprob for x in want.logprobs], abs=1e-4)
    assert [list(d.values()) for d in lp.top_logprobs] == [
        pytest.approx([v for _, v in x.top], abs=1e-4) for x in want.logprobs
    ]
    assert lp.tokens == [llm.engine.tokenizer.decode([t]) for t in want.token_ids]
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert client.completions.create(model="demo-r4-attn", prompt="Hello", max_tokens=2).choices[0].logprobs is None

    tok = Tokenizer(llm.engine.cfg.model)
    messages = [{"role": "user", "content": "Hello, world!"}]
    ref = greedy(llm, tok.apply_chat_template(messages), "demo-r8-mlp", 8, ignore_eos=True, logprobs=3)
    kw = dict(
        model="demo-r8-mlp",
        messages=messages,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = client.chat.completions.create(**kw).choices[0].logprobs.content
    assert [e.logprob for e in content] == pytest.approx([x.logprob for x in ref.logprobs], abs=1e-4)
    assert [[a.token for a in e.top_logprobs] for e in content] == [
        [llm.engine.tokenizer.decode([t]) for t, _ in x.top] for x in ref.logprobs
    ]
    assert all(e.bytes == list(e.token.encode()) for e in content)
    streamed = [
        e
        for ch in client.chat.completions.create(**kw, stream=True)
        for c in ch.choices
        if c.logprobs
        for e in c.logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]


def test_n_seed_stop_top_k(client, llm):
    r = client.completions.create(
        model="demo-r4-attn", prompt="Hello", max_tokens=8, temperature=1.0, seed=7, n=3, extra_body={"top_k": 20}
    )
    again = client.completions.create(
        model="demo-r4-attn", prompt="Hello", max_tokens=8, temperature=1.0, seed=7, n=3, extra_body={"top_k": 20}
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == [c.text for c in again.choices]  # seeded: reproducible
    assert len({c.text for c in r.choices}) > 1  # n independent samples
    assert 3 <= r.usage.completion_tokens <= 24 and r.usage.prompt_tokens == len(llm.engine.tokenizer.encode("Hello"))
    # stop: cut at the first occurrence of a string that the greedy output contains
    ref = greedy(llm, "The quick brown fox", "demo-r8-mlp", 16, ignore_eos=True).text
    stop = ref[5:8]
    r = client.completions.create(
        model="demo-r8-mlp",
        prompt="The quick brown fox",
        max_tokens=16,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].text == ref[: ref.find(stop)]
    assert r.choices[0].finish_reason == "stop"
    # penalties and logit_bias, as the openai client sends them, give the offline engine's tokens
    kw = dict(presence_penalty=1.5, frequency_penalty=0.8, logit_bias={"17": 3.0})
    r = client.completions.create(
        model="demo-r8-mlp",
        prompt="The quick brown fox",
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True, "repetition_penalty": 1.3},
        **kw,
    )
    want = greedy(
        llm,
        "The quick brown fox",
        "demo-r8-mlp",
        12,
        ignore_eos=True,
        repetition_penalty=1.3,
        presence_penalty=1.5,
        frequency_penalty=0.8,
        logit_bias={17: 3.0},
    ).text
    assert r.choices[0].text == want != ref[: len(want)]


def test_group_stream_coalesces_tokens_without_changing_them(service, llm):
    """Through Serve's streaming handle: a group with the default stream_interval_s (0.05 s) sends fewer
    items than tokens, an every-step group (0) about one per token; the deltas add up to the same tokens
    and text, the finish reason is the same, and the offline engine agrees."""
    from app.request import RequestOutput

    tok = Tokenizer(llm.engine.cfg.model)
    ids = tok.encode("The quick brown fox")
    params = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    runs = {}
    for app_name, rid in (("main", "coalesce-0"), ("every-step", "coalesce-1")):
        h = serve.get_deployment_handle("SLoRAGroup-0", app_name=app_name).options(stream=True)
        items = list(h.generate.remote(rid, ids, params, "demo-r16-all"))
        assert items[0] == {"accepted": True} and all(isinstance(o, RequestOutput) for o in items[1:])
        outs = items[1:]
        assert outs[-1].finished and not any(o.finished for o in outs[:-1])
        assert all(o.delta_token_ids for o in outs)
        runs[app_name] = outs
    ref = greedy(llm, ids, "demo-r16-all", 48, ignore_eos=True)
    for outs in runs.values():
        assert sum((o.delta_token_ids for o in outs), []) == outs[-1].token_ids == ref.token_ids
        assert "".join(o.delta_text for o in outs) == outs[-1].text == ref.text
        assert outs[-1].finish_reason == ref.finish_reason == "length"
    coalesced, every = len(runs["main"]), len(runs["every-step"])
    assert 2 <= coalesced < 48 and coalesced < every, (coalesced, every)
    assert len(runs["main"][0].delta_token_ids) <= 2  # the first token went out at once


def test_tensor_parallel_group_equals_offline(llm, demo):
    c = openai.OpenAI(base_url=f"{BASE}/tp2/v1", api_key="none", max_retries=0, timeout=60)
    for prompt, adapter in PROMPTS:
        r = c.completions.create(model=adapter or "model", prompt=prompt, max_tokens=12, temperature=0)
        assert r.choices[0].text == greedy(llm, prompt, adapter).text, (prompt, adapter)
    assert group_stats("SLoRAGroup-0", app="tp2")["tensor_parallel_size"] == 2


# ---- errors ------------------------------------------------------------------------------------
def _err(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"} and body["error"]["code"] == status
    return body["error"]


def test_errors(http, client):
    e = _err(http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert e["param"] is None and e["message"].startswith("the body is not valid JSON")
    e = _err(
        http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "x", "content": "hi"}]}), 400
    )
    assert e["param"] == "messages" and "messages.0.role" in e["message"]
    _err(http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 0}), 400)
    _err(http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "temperature": -1}), 400)
    _err(http.post("/v1/completions", json={"model": MODEL}), 400)
    e = _err(http.post("/v1/completions", json={"model": MODEL, "prompt": "hello " * 600, "max_tokens": 8}), 400)
    assert "context length" in e["message"]
    _err(http.post("/v1/completions", json={"model": MODEL, "prompt": [10**6], "max_tokens": 2}), 400)
    for bad in (
        {"logit_bias": {"1000000": 1}},
        {"logit_bias": {"x": 1}},
        {"presence_penalty": 3},
        {"repetition_penalty": 0},
        {"logprobs": 21},
        {"min_p": 0.5},
    ):
        _err(http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2, **bad}), 400)
    e = _err(
        http.post(
            "/v1/chat/completions", json={"model": "no-such-adapter", "messages": [{"role": "user", "content": "hi"}]}
        ),
        404,
    )
    assert "no-such-adapter" in e["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    # 401 without / with a wrong key, on every /v1 route
    _err(httpx.post(f"{BASE}/v1/completions", json={"model": MODEL, "prompt": "x"}), 401)
    _err(httpx.get(f"{BASE}/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{BASE}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{BASE}/health").status_code == 200
    # a wrong method: 405 as an error object, with Allow
    r = http.get("/v1/completions")
    assert _err(r, 405) and r.headers["allow"] == "POST"
    # the schema documents what the service answers: 400 (never 422) and error objects
    schema = httpx.get(f"{BASE}/openapi.json").json()
    for path, ops in schema["paths"].items():
        for op in ops.values():
            assert "422" not in op["responses"] and "400" in op["responses"], (path, op["responses"])
            ref = op["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse")


def test_request_limits(http):
    """Bodies over max_body_bytes get 413 (announced by Content-Length or sent chunked); prompts x n and
    the request's total tokens over their limits get 400; prompts too long for the context get 400 with the
    prompt's length in the message (chat too)."""
    e = _err(http.post("/v1/completions", json={"model": MODEL, "prompt": "x" * BODY_LIMIT}), 413)
    assert "max_body_bytes" in e["message"]

    def chunked():  # no Content-Length: the limit holds while the body streams in
        yield b'{"model": "' + MODEL.encode() + b'", "prompt": "'
        for _ in range(40):
            yield b"y" * (64 << 10)
        yield b'"}'

    _err(http.post("/v1/completions", content=chunked(), headers={"content-type": "application/json"}), 413)
    e = _err(http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "n": 17, "max_tokens": 1}), 400)
    assert e["param"] == "n" and "17 sequences" in e["message"]
    e = _err(http.post("/v1/completions", json={"model": MODEL, "prompt": ["hi"] * 6, "n": 3, "max_tokens": 1}), 400)
    assert e["param"] == "prompt" and "18 sequences" in e["message"]
    e = _err(http.post("/v1/completions", json={"model": MODEL, "prompt": ["hi"] * 10, "max_tokens": 1000}), 400)
    assert "max_request_tokens" in e["message"]
    e = _err(http.post("/v1/completions", json={"model": MODEL, "prompt": "hello " * 100_000}), 400)
    assert "600000 characters" in e["message"] and "context length" in e["message"]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 600}]}
    e = _err(http.post("/v1/chat/completions", json=chat), 400)
    assert e["message"].startswith("the prompt has") and "maximum context length is 1024" in e["message"], e
    assert http.post("/v1/completions", json={"model": MODEL, "prompt": ["hi"] * 4, "n": 4, "max_tokens": 1}).is_success


def test_key_checked_before_the_body_is_read():
    """A wrong key gets 401 at once, before a huge (and invalid) body is read, parsed or size-checked."""
    body = b"{not json" + b"x" * (30 << 20)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        t0 = time.monotonic()
        r = httpx.post(f"{BASE}/v1/completions", content=body, headers=headers | {"content-type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
        assert time.monotonic() - t0 < 3.0


def test_health_answers_while_prompts_are_tokenized():
    """Tokenizing is off the event loop: /health answers at once while a request of 1000 long prompts is
    being tokenized (seconds), after which the SLO app refuses it (429)."""
    import concurrent.futures

    prompts = ["hello world, this is a test. " * 60] * 1000  # ~900 tokens each
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        big = pool.submit(
            httpx.post, f"{BASE}/strict/v1/completions", json={"model": MODEL, "prompt": prompts}, timeout=120
        )
        waits = []
        while not big.done():
            t = time.monotonic()
            assert httpx.get(f"{BASE}/strict/health", timeout=60).status_code == 200
            waits.append(time.monotonic() - t)
            time.sleep(0.05)
        took = time.monotonic() - t0
    assert big.result().status_code == 429, big.result().text
    # before tokenizing moved off the loop, the one /health call waited for the whole tokenization
    assert len(waits) >= 3 and max(waits) < min(0.5, took / 3), (took, waits)


def test_sampling_values_that_killed_a_group_get_400_and_the_group_serves_on(http, client, llm):
    """Issue 11 finding 1: each of these passed validation and then ended the group's step loop (500s for
    ~40 s). Now the out-of-range ones are refused with 400 and the tiny ones are served; the groups answer
    every request after them as before."""
    for bad in (
        {"seed": 18446744073709551616},
        {"seed": -9223372036854775809},
        {"repetition_penalty": 1e-300, "temperature": 1},
    ):
        e = _err(http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2, **bad}), 400)
        assert next(iter(bad)) in e["message"]
    for tiny in ({"temperature": 5e-324}, {"temperature": 1e-46}, {"top_p": 1e-300}):
        for _ in range(len(GROUPS)):  # both groups
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3, **tiny})
            assert r.status_code == 200, r.text
    prompt, adapter = PROMPTS[0]
    ref = greedy(llm, prompt, adapter)
    got = client.completions.create(model=adapter, prompt=prompt, max_tokens=12, temperature=0)
    assert got.choices[0].text == ref.text
    assert all(group_stats(g)["healthy"] for g in GROUPS)


def test_429_when_slo_cannot_be_met(service):
    r = httpx.post(f"{BASE}/strict/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 4})
    e = _err(r, 429)
    assert "time to first token" in e["message"]
    assert int(r.headers["Retry-After"]) >= 1
    c = openai.OpenAI(base_url=f"{BASE}/strict/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    s = group_stats("SLoRAGroup-0", app="strict")
    assert s["metrics"]["counters"]["requests_rejected"] >= 2
    assert s["metrics"]["counters"]["prompt_tokens"] == 0  # nothing was queued
    m = httpx.get(f"{BASE}/strict/metrics").text
    assert 'sloray_requests_rejected_total{group="SLoRAGroup-0",model_name="sloray-demo"}' in m


# ---- adapters ----------------------------------------------------------------------------------
def _adapters_everywhere() -> list[set[str]]:
    return [set(group_stats(g)["adapters"]) for g in GROUPS]


def test_models_list(client, demo):
    models = {m.id: m for m in client.models.list().data}
    assert models[MODEL].parent is None and models[MODEL].root == str(demo / "model")
    a = models["demo-r4-attn"]
    assert a.parent == MODEL and a.root == str(demo / "adapters" / "demo-r4-attn")
    assert {"demo-r1-qv", "demo-r64-all"} <= set(models)


def test_load_use_unload(admin, http, client, llm, roots):
    r = admin.post("/v1/load_lora_adapter", json={"lora_name": "loaded-r8", "lora_path": str(roots / "copy-r8")})
    assert r.status_code == 200, r.text
    assert all("loaded-r8" in s for s in _adapters_everywhere())
    models = {m.id: m for m in client.models.list().data}
    assert models["loaded-r8"].parent == MODEL and models["loaded-r8"].root == str((roots / "copy-r8").resolve())
    out = client.completions.create(model="loaded-r8", prompt="Hello, world!", max_tokens=10, temperature=0)
    assert out.choices[0].text == greedy(llm, "Hello, world!", "demo-r8-mlp", 10).text  # same weights
    _err(
        admin.post("/v1/load_lora_adapter", json={"lora_name": "loaded-r8", "lora_path": str(roots / "copy-r8")}), 400
    )  # already loaded
    r = admin.post("/v1/unload_lora_adapter", json={"lora_name": "loaded-r8"})
    assert r.status_code == 200, r.text
    assert not any("loaded-r8" in s for s in _adapters_everywhere())
    _err(http.post("/v1/completions", json={"model": "loaded-r8", "prompt": "x", "max_tokens": 2}), 404)
    _err(admin.post("/v1/unload_lora_adapter", json={"lora_name": "loaded-r8"}), 404)


def test_keys_by_role(roots):
    """Load / unload need an admin key (an inference key gets 403, none 401) and change nothing when refused;
    /metrics needs a metrics or admin key; the admin key also serves inference; /health stays open. An app
    without keys (strict) is open, as the local demo."""
    load = {"lora_name": "role-x", "lora_path": str(roots / "copy-r8")}
    for key, status, metrics in ((KEY, 403, 403), (METRICS_KEY, 403, 200), ("wrong", 401, 401), (None, 401, 401)):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        e = _err(httpx.post(f"{BASE}/v1/load_lora_adapter", json=load, headers=headers), status)
        assert e["type"] == ("PermissionDeniedError" if status == 403 else "AuthenticationError")
        _err(httpx.post(f"{BASE}/v1/unload_lora_adapter", json={"lora_name": "demo-r1-qv"}, headers=headers), status)
        assert httpx.get(f"{BASE}/metrics", headers=headers).status_code == metrics
    assert all("role-x" not in s and "demo-r1-qv" in s for s in _adapters_everywhere())
    assert httpx.get(f"{BASE}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    admin_client = openai.OpenAI(base_url=f"{BASE}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=60)
    assert admin_client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices[0].text is not None
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{BASE}/v1", api_key=METRICS_KEY, max_retries=0).models.list()
    assert httpx.get(f"{BASE}/health").status_code == 200
    assert httpx.get(f"{BASE}/strict/metrics").status_code == 200
    assert httpx.get(f"{BASE}/strict/v1/models").status_code == 200


@pytest.mark.parametrize(
    "name,why",
    [
        ("pickled", "pickle"),
        ("rank128", "max_lora_rank"),
        ("link-out", "outside"),
        ("../outside", "outside"),
        ("file-link", "outside"),
        ("copy-r8\x00", "control characters"),
    ],
)
def test_refused_adapters_leave_nothing(admin, http, roots, demo, name, why):
    path, lora_name = str(roots / name), f"bad-{len(name)}"
    e = _err(admin.post("/v1/load_lora_adapter", json={"lora_name": lora_name, "lora_path": path}), 400)
    assert why in e["message"]
    assert not any(lora_name in s for s in _adapters_everywhere())
    # a demo adapter path is outside the configured roots too
    _err(
        admin.post(
            "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(demo / "adapters" / "demo-r1-qv")}
        ),
        400,
    )


def test_adapter_names_are_checked(admin, roots):
    """Names outside the safe pattern (.., NUL, RTL, slashes, 100 KB) get 400 before anything is read."""
    for bad in ("..", "a\x00b", "a\u202eb", "a/b", "x" * 100_000):
        r = admin.post("/v1/load_lora_adapter", json={"lora_name": bad, "lora_path": str(roots / "copy-r8")})
        e = _err(r, 400)
        assert "invalid adapter name" in e["message"] and e["param"] == "lora_name" and len(r.content) < 1000
    e = _err(admin.post("/v1/unload_lora_adapter", json={"lora_name": "a\x00b"}), 400)
    assert "invalid adapter name" in e["message"]


def test_adapter_clustered_on_its_affine_group(admin, http, client, roots):
    """While load is low, every request of one adapter goes to the group it hashes to."""
    assert (
        admin.post(
            "/v1/load_lora_adapter", json={"lora_name": "routed-x", "lora_path": str(roots / "routed")}
        ).status_code
        == 200
    )
    want = rendezvous_order("routed-x", GROUPS)[0]
    other = next(g for g in GROUPS if g != want)
    before = {g: group_stats(g)["pool"]["loads"] + group_stats(g)["pool"]["hits"] for g in GROUPS}
    for i in range(4):
        client.completions.create(model="routed-x", prompt=f"request {i}", max_tokens=3, temperature=0)
    stats = {g: group_stats(g) for g in GROUPS}
    assert "routed-x" in stats[want]["resident_adapters"]
    assert "routed-x" not in stats[other]["resident_adapters"]
    assert stats[want]["pool"]["loads"] + stats[want]["pool"]["hits"] - before[want] == 4
    assert stats[other]["pool"]["loads"] + stats[other]["pool"]["hits"] == before[other]


def test_unload_of_an_adapter_in_use_changes_nothing(admin, http, roots):
    """The group serving a request refuses the unload (400); the other group, which had dropped the
    adapter already, gets it back: the unload is all or nothing."""
    assert (
        admin.post(
            "/v1/load_lora_adapter", json={"lora_name": "busy-x", "lora_path": str(roots / "copy-r8")}
        ).status_code
        == 200
    )
    body = {"model": "busy-x", "prompt": "Hello", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept referenced: a dropped iterator closes the stream (a disconnect)
        next(ln for ln in lines if ln.startswith("data: "))  # running on its group now
        u = admin.post("/v1/unload_lora_adapter", json={"lora_name": "busy-x"})
        assert u.status_code == 400 and "in use" in u.json()["error"]["message"]
        assert all("busy-x" in group_stats(g)["adapters"] for g in GROUPS)
    deadline = time.time() + 20  # the closed stream aborts the request; then the unload goes through
    while time.time() < deadline:
        u = admin.post("/v1/unload_lora_adapter", json={"lora_name": "busy-x"})
        if u.status_code == 200:
            break
        time.sleep(0.2)
    assert u.status_code == 200
    assert not any("busy-x" in group_stats(g)["adapters"] for g in GROUPS)


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_aborts_and_frees_pages(http, stream):
    before = {g: group_stats(g)["metrics"]["counters"]["requests_aborted"] for g in GROUPS}
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 1000, "ignore_eos": True, "stream": stream}
    if stream:
        with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            next(ln for ln in r.iter_lines() if ln.startswith("data: "))
    else:  # the client gives up before the 1000 tokens are done and closes the connection
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/completions", json=body, timeout=0.5)
    deadline = time.time() + 20
    while time.time() < deadline:
        stats = [group_stats(g) for g in GROUPS]
        aborted = sum(s["metrics"]["counters"]["requests_aborted"] - before[s["name"]] for s in stats)
        idle = all(s["queue"]["running"] == 0 and s["queue"]["waiting"] == 0 and s["pool"]["kv"] == 0 for s in stats)
        if aborted >= 1 and idle:
            break
        time.sleep(0.2)
    assert aborted >= 1 and idle, stats


METRICS = {"Authorization": f"Bearer {METRICS_KEY}"}


def test_metrics_after_traffic(http):
    text = httpx.get(f"{BASE}/metrics", headers=METRICS).text
    for name in (
        "sloray_time_to_first_token_seconds_count",
        "sloray_inter_token_latency_seconds_bucket",
        "sloray_e2e_request_latency_seconds_sum",
        "sloray_request_queue_time_seconds_count",
        "sloray_num_requests_running",
        "sloray_num_requests_waiting",
        "sloray_requests_aborted_total",
        "sloray_adapter_loads_total",
        "sloray_adapter_hits_total",
        "sloray_adapter_evictions_total",
        "sloray_adapter_prefetches_total",
        "sloray_preemptions_total",
        "sloray_distinct_adapters_per_batch_bucket",
        "sloray_generation_tokens_total",
    ):
        assert name in text, name
    for kind in ("kv", "adapter", "free"):
        assert f'kind="{kind}"' in text
    ttft = sum(
        float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("sloray_time_to_first_token_seconds_count")
    )
    assert ttft >= 10
    # both groups served traffic and report it
    for g in GROUPS:
        assert f'sloray_group_up{{group="{g}",model_name="sloray-demo"}} 1.0' in text
    # whichever ingress replica answers, the scrape shows the whole service (the same totals)
    time.sleep(0.5)  # every replica has polled the groups since the last request

    def success_total():
        text = httpx.get(f"{BASE}/metrics", headers=METRICS).text
        return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("sloray_request_success_total"))

    totals = {success_total() for _ in range(8)}
    assert len(totals) == 1 and totals.pop() >= 10, totals


# ---- schemathesis: generated requests from the app's own OpenAPI schema ---------------------------
FUZZ_EXAMPLES = int(os.environ.get("SLORAY_FUZZ_EXAMPLES", "60"))  # per API operation and phase


@pytest.fixture(scope="module")
def fuzz_schema(service):
    import schemathesis

    import tests.schemathesis_hooks  # noqa: F401 - registers the hooks (known model names)

    return schemathesis.openapi.from_url(f"{BASE}/fuzz/openapi.json")


def _fuzz_parametrize():
    import schemathesis

    return schemathesis.pytest.from_fixture("fuzz_schema").parametrize()


@_fuzz_parametrize()
@hypothesis.settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
    database=None,
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: a failing call may hang
)
def test_schemathesis_no_server_errors(case):
    """Every API operation, with bodies generated from the schema (valid, invalid, edge values, with the
    admin key, which every route accepts): no answer is a 5xx, and every error is an OpenAI error object."""
    r = case.call(base_url=f"{BASE}/fuzz", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert r.status_code < 500, (case.method, case.path, case.body, r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert set(r.json()["error"]) >= {"message", "type", "param", "code"}, r.text[:500]
