"""OpenAI schemas (deployments/protocol.py): request validation, mapping to sampling parameters, response shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from deployments.protocol import ChatCompletionRequest, CompletionRequest, error_body


def test_completion_request_maps_to_sampling_params():
    r = CompletionRequest(
        model="m",
        prompt="hi",
        max_tokens=5,
        temperature=0.5,
        top_p=0.9,
        top_k=4,
        seed=3,
        stop="x",
        ignore_eos=True,
        n=2,
        unknown_field=1,
    )
    sp = r.to_sampling_params(5, index=1)
    assert (sp.max_tokens, sp.temperature, sp.top_p, sp.top_k, sp.seed, sp.stop, sp.ignore_eos) == (
        5,
        0.5,
        0.9,
        4,
        4,
        ["x"],
        True,
    )
    assert r.to_sampling_params(5, index=0).seed == 3
    r = CompletionRequest(
        model="m",
        prompt="hi",
        presence_penalty=0.5,
        frequency_penalty=-1,
        repetition_penalty=1.2,
        logit_bias={"7": -100, "12": 3.5},
    )
    sp = r.to_sampling_params(4)
    assert (sp.presence_penalty, sp.frequency_penalty, sp.repetition_penalty, sp.logit_bias) == (
        0.5,
        -1.0,
        1.2,
        {7: -100.0, 12: 3.5},
    )
    assert sp.penalized and not CompletionRequest(model="m", prompt="x").to_sampling_params(4).penalized
    for bad in ({"12x": 1.0}, {"3": 101}, {"-1": 1.0}):  # refused when the engine's parameters are made
        with pytest.raises(ValueError):
            CompletionRequest(model="m", prompt="hi", logit_bias=bad).to_sampling_params(4)
    assert CompletionRequest(model="m", prompt=[1, 2]).prompts() == [[1, 2]]
    assert CompletionRequest(model="m", prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]
    assert CompletionRequest(model="m", prompt=["a", "b"]).prompts() == ["a", "b"]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_tokens": 0},
        {"max_tokens": -1, "echo": True},
        {"temperature": -0.1},
        {"top_p": 0},
        {"n": 0},
        {"logprobs": 21},
        {"prompt_logprobs": 21},
        {"min_tokens": -1},
        {"min_p": 1.5},
        {"use_beam_search": True},
        {"bad_words": "x"},
        {"bad_words": ["w"] * 2049},
        {"allowed_token_ids": [1.5]},
        {"add_special_tokens": False},
        {"spaces_between_special_tokens": False},
        {"prompt": []},
        {"stream_options": {"include_usage": True}},
        {"presence_penalty": 2.5},
        {"frequency_penalty": -3},
        {"repetition_penalty": 0},
    ],
)
def test_completion_request_refuses(bad):
    with pytest.raises(ValidationError):
        CompletionRequest(**({"model": "m", "prompt": "x"} | bad))


def test_echo_prompt_logprobs_min_tokens_and_vllm_fields():
    """echo + logprobs asks for the prompt's logprobs (vLLM: prompt_logprobs = logprobs); max_tokens 0 only
    with echo or prompt_logprobs; min_tokens passes through; vLLM fields at their neutral values pass, others
    are refused naming the field."""
    from deployments.protocol import UnsupportedField

    sp = CompletionRequest(model="m", prompt="x", echo=True, logprobs=1, max_tokens=0).to_sampling_params(0)
    assert (sp.prompt_logprobs, sp.logprobs, sp.max_tokens) == (1, 1, 0)
    assert CompletionRequest(model="m", prompt="x", echo=True).to_sampling_params(3).prompt_logprobs is None
    sp = CompletionRequest(model="m", prompt="x", prompt_logprobs=0, logprobs=2, echo=True).to_sampling_params(3)
    assert sp.prompt_logprobs == 0 and sp.logprobs == 2
    assert CompletionRequest(model="m", prompt="x", min_tokens=3).to_sampling_params(5).min_tokens == 3
    from app.request import TokenLogprobs
    from deployments.protocol import completion_logprobs, token_namer

    assert token_namer(None, True)([17]) == "token_id:17" and token_namer(str, False) is str
    lp = completion_logprobs([5, 9], [TokenLogprobs(-0.5, [(5, -0.5), (2, -1.0)])] * 2, token_namer(None, True))
    assert lp["tokens"] == ["token_id:5", "token_id:9"] and list(lp["top_logprobs"][0]) == ["token_id:5", "token_id:2"]
    sp = CompletionRequest(model="m", prompt="x", allowed_token_ids=[4, 2], bad_words=["no"]).to_sampling_params(5)
    assert (sp.allowed_token_ids, sp.bad_words, sp.penalized) == ([4, 2], ["no"], True)
    for bad in (dict(allowed_token_ids=[]), dict(allowed_token_ids=[-3]), dict(bad_words=[""])):
        with pytest.raises(ValueError) as e:  # a 400 naming the field, when the engine's parameters are made
            CompletionRequest(model="m", prompt="x", **bad).to_sampling_params(5)
        assert e.value.param == next(iter(bad))
    neutral = dict(min_p=0.0, use_beam_search=False, skip_special_tokens=True, length_penalty=1.0, bad_words=[])
    CompletionRequest(model="m", prompt="x", add_special_tokens=True, guided_json=None, **neutral)
    msgs = [{"role": "user", "content": "x"}]
    ChatCompletionRequest(model="m", messages=msgs, add_generation_prompt=True, echo=False, **neutral)
    for req, bad in (
        (CompletionRequest, {"spaces_between_special_tokens": False}),
        (CompletionRequest, {"suffix": "end"}),
        (CompletionRequest, {"best_of": 3}),
        (ChatCompletionRequest, {"continue_final_message": True}),
        (ChatCompletionRequest, {"functions": [{"name": "f"}]}),
        (ChatCompletionRequest, {"prompt_logprobs": 1, "stream": True}),
    ):
        with pytest.raises(ValidationError) as e:
            req(model="m", prompt="x", messages=msgs, **bad)
        (err,) = e.value.errors()
        assert isinstance(err["ctx"]["error"], UnsupportedField) and err["ctx"]["error"].param in bad
        assert err["ctx"]["error"].param in err["msg"]


def test_truncate_prompt_tokens():
    """vLLM's truncate_prompt_tokens: the last k tokens of the prompt, -1 the last max_model_len; 0 is refused."""
    r = CompletionRequest(model="m", prompt="x", truncate_prompt_tokens=3)
    assert r.truncated([1, 2, 3, 4, 5], 100) == [3, 4, 5]
    assert r.truncated([1, 2], 100) == [1, 2]
    assert CompletionRequest(model="m", prompt="x", truncate_prompt_tokens=-1).truncated([1, 2, 3, 4], 2) == [3, 4]
    assert CompletionRequest(model="m", prompt="x").truncated([1, 2, 3, 4], 2) == [1, 2, 3, 4]
    for bad in (0, -2):
        with pytest.raises(ValidationError):
            CompletionRequest(model="m", prompt="x", truncate_prompt_tokens=bad)


def test_skip_special_tokens_reaches_the_engine():
    assert CompletionRequest(model="m", prompt="x").to_sampling_params(3).skip_special_tokens is True
    msgs = [{"role": "user", "content": "x"}]
    r = ChatCompletionRequest(model="m", messages=msgs, skip_special_tokens=False)
    assert r.to_sampling_params(3).skip_special_tokens is False


def test_chat_request():
    r = ChatCompletionRequest(
        model="m",
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        max_completion_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert r.chat() == [{"role": "user", "content": "ab"}]
    assert r.max_tokens == 7 and r.include_usage
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[])
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[{"role": "wizard", "content": "x"}])
    msgs = [{"role": "user", "content": "x"}]
    assert ChatCompletionRequest(model="m", messages=msgs, response_format={"type": "text"}).chat() == msgs
    assert ChatCompletionRequest(model="m", messages=msgs, response_format={"type": "text"}).structured() is None
    # logprobs: chat's bool + top_logprobs and completions' int both become SamplingParams.logprobs
    assert ChatCompletionRequest(model="m", messages=msgs).to_sampling_params(3).logprobs is None
    assert ChatCompletionRequest(model="m", messages=msgs, logprobs=True).to_sampling_params(3).logprobs == 0
    assert (
        ChatCompletionRequest(model="m", messages=msgs, logprobs=True, top_logprobs=4).to_sampling_params(3).logprobs
        == 4
    )
    assert CompletionRequest(model="m", prompt="x", logprobs=2).to_sampling_params(3).logprobs == 2
    for bad in ({"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}):
        with pytest.raises(ValidationError):
            ChatCompletionRequest(model="m", messages=msgs, **bad)


def test_structured_output_fields():
    """response_format (chat and completions), vLLM's structured_outputs and guided_* all map onto one
    StructuredOutputs; two at once, unknown kinds and unimplemented options are 400s naming the field."""
    from app.structured import StructuredOutputs
    from deployments.protocol import UnsupportedField

    msgs = [{"role": "user", "content": "x"}]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}

    def so(**kw):
        return ChatCompletionRequest(model="m", messages=msgs, **kw).to_sampling_params(8).structured

    assert so(response_format={"type": "json_object"}) == StructuredOutputs(json_object=True)
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert so(response_format=rf) == StructuredOutputs(json=json.dumps(schema))
    assert so(guided_json=schema) == so(guided_json=json.dumps(schema)) == StructuredOutputs(json=json.dumps(schema))
    assert so(guided_regex="a+") == StructuredOutputs(regex="a+")
    assert so(guided_choice=["a", "b"]) == StructuredOutputs(choice=("a", "b"))
    assert so(guided_grammar='root ::= "a"', guided_decoding_backend="xgrammar") == StructuredOutputs(
        grammar='root ::= "a"'
    )
    assert so(structured_outputs={"regex": "b+", "disable_any_whitespace": True}) == StructuredOutputs(regex="b+")
    assert so(structured_outputs={"json_object": True}) == StructuredOutputs(json_object=True)
    assert so() is None and so(response_format={"type": "text"}, guided_regex="c") == StructuredOutputs(regex="c")
    c = CompletionRequest(model="m", prompt="x", response_format=rf).to_sampling_params(4)
    assert c.structured == StructuredOutputs(json=json.dumps(schema))
    for bad, field in (
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
        ({"response_format": {"type": "structural_tag"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        ({"structured_outputs": {"whitespace_pattern": " *", "regex": "a"}}, "whitespace_pattern"),
        ({"structured_outputs": {}}, "structured_outputs"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
    ):
        with pytest.raises(ValidationError) as e:
            ChatCompletionRequest(model="m", messages=msgs, **bad)
        assert e.value.errors()[0]["ctx"]["error"].param == field and isinstance(
            e.value.errors()[0]["ctx"]["error"], UnsupportedField
        )


def test_logprobs_formats():
    from app.request import TokenLogprobs
    from deployments.protocol import chat_logprobs, completion_logprobs, vllm_prompt_logprobs

    words = {1: "a", 2: "bc", 3: "é"}
    decode = lambda ids: "".join(words[i] for i in ids)  # noqa: E731
    lps = [TokenLogprobs(-0.5, [(1, -0.5), (3, -1.5)]), TokenLogprobs(-0.25, [(2, -0.25), (1, -2.0)])]
    assert completion_logprobs([1, 2], lps, decode, offset=4) == {
        "tokens": ["a", "bc"],
        "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"a": -0.5, "é": -1.5}, {"bc": -0.25, "a": -2.0}],
        "text_offset": [4, 5],
    }
    # echo: the prompt's entries first (None for its first token; its top_logprobs hold the token itself)
    plps = [None, TokenLogprobs(-3.0, [(1, -0.5)], rank=3)]
    assert completion_logprobs([3, 2, 1], plps + lps[:1], decode, prompt_len=2) == {
        "tokens": ["é", "bc", "a"],
        "token_logprobs": [None, -3.0, -0.5],
        "top_logprobs": [None, {"a": -0.5, "bc": -3.0}, {"a": -0.5, "é": -1.5}],
        "text_offset": [0, 1, 3],
    }
    assert vllm_prompt_logprobs(
        [3, 2], [None, TokenLogprobs(float("-inf"), [(1, -0.5), (2, -9.0)], rank=2)], decode
    ) == [
        None,
        {
            "2": {"logprob": -9999.0, "rank": 2, "decoded_token": "bc"},
            "1": {"logprob": -0.5, "rank": 1, "decoded_token": "a"},
        },
    ]
    c = chat_logprobs([3], [TokenLogprobs(-0.1, [(3, -0.1)])], decode)["content"]
    assert c == [
        {
            "token": "é",
            "logprob": -0.1,
            "bytes": [195, 169],
            "top_logprobs": [{"token": "é", "logprob": -0.1, "bytes": [195, 169]}],
        }
    ]


def test_error_body_shape():
    assert error_body(429, "slow down") == {
        "error": {"message": "slow down", "type": "RateLimitError", "param": None, "code": 429}
    }


def test_tokenize_request_shapes():
    from pydantic import TypeAdapter, ValidationError

    from deployments.protocol import DetokenizeRequest, TokenizeChatRequest, TokenizeCompletionRequest, UnsupportedField

    body = TypeAdapter(TokenizeCompletionRequest | TokenizeChatRequest)
    r = body.validate_python({"model": "m", "prompt": "hi"})
    assert isinstance(r, TokenizeCompletionRequest) and r.add_special_tokens and not r.return_token_strs
    r = body.validate_python({"messages": [{"role": "user", "content": "hi"}], "tools": None})
    assert isinstance(r, TokenizeChatRequest) and r.add_generation_prompt and not r.add_special_tokens
    assert r.model is None and r.chat() == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValidationError):
        body.validate_python({"model": "m"})
    with pytest.raises(ValidationError) as e:
        TokenizeChatRequest(messages=[{"role": "user", "content": "hi"}], continue_final_message=True)
    assert isinstance(e.value.errors()[0]["ctx"]["error"], UnsupportedField)
    assert DetokenizeRequest(tokens=[1, 2]).tokens == [1, 2]
    with pytest.raises(ValidationError):
        DetokenizeRequest(tokens=["a"])


def test_build_args_service_defaults():
    from deployments.builder import BuildArgs

    a = BuildArgs()
    assert a.group.stream_interval_s == 0.05  # as Ray Serve LLM's stream_batching_interval_ms
    assert a.ingress.access_log_exclude == ["/health", "/metrics"]
    assert a.ingress.request_start_header == "X-Request-Start"
    assert BuildArgs(access_log_exclude="").ingress.access_log_exclude is None
    assert BuildArgs(access_log_exclude="/health").ingress.access_log_exclude == ["/health"]
    assert BuildArgs(request_start_header="none").ingress.request_start_header is None


def test_generation_config_defaults_fill_only_unset_fields(tmp_path):
    """vLLM's --generation-config auto: the model's generation_config.json gives the sampling fields a request
    leaves unset; what the request sets (its own value, even the API's default) wins; other keys are not read."""
    from deployments.protocol import generation_defaults

    assert generation_defaults(str(tmp_path)) == {}  # no file: the API's defaults
    (tmp_path / "generation_config.json").write_text(
        json.dumps(
            {
                "do_sample": True,
                "temperature": 0.6,
                "top_p": 0.95,
                "top_k": 20,
                "repetition_penalty": 1.05,
                "eos_token_id": [1, 2],
                "max_new_tokens": 99,
                "min_p": False,
            }
        )  # fmt: skip
    )
    d = generation_defaults(str(tmp_path))
    assert d == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.05}
    sp = CompletionRequest(model="m", prompt="x").to_sampling_params(4, defaults=d)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.repetition_penalty, sp.min_p) == (0.6, 0.95, 20, 1.05, 0.0)
    sp = CompletionRequest(model="m", prompt="x", temperature=1.0, top_k=-1).to_sampling_params(4, defaults=d)
    assert (sp.temperature, sp.top_p, sp.top_k) == (1.0, 0.95, -1)
    msgs = [{"role": "user", "content": "x"}]
    sp = ChatCompletionRequest(model="m", messages=msgs, temperature=0).to_sampling_params(4, defaults=d)
    assert sp.temperature == 0 and sp.top_k == 20
    assert CompletionRequest(model="m", prompt="x").to_sampling_params(4).temperature == 1.0  # generation_config vllm


@pytest.mark.parametrize("part", [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                                  {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}])  # fmt: skip
def test_chat_content_parts_other_than_text_are_named_in_the_error(part):
    """An image or audio part gets one error that names its type and the field (a 400 with param "messages"),
    not the str-or-list union's two errors; text parts beside it do not change that."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": "look"}, part]}]
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest(model="m", messages=msgs)
    (err,) = e.value.errors()
    assert err["loc"] == ("messages", 0, "content") and err["ctx"]["error"].param == "messages"
    assert f"content part of type {part['type']!r} are not supported (text only)" in err["msg"]


def test_building_the_app_imports_neither_torch_nor_the_engine():
    """`serve run` builds the application in a fresh process that imports deployments.builder (and app.config):
    that imports no torch and no engine module (2.3 s instead of 4.9 s on a 2-core CPU machine; the groups load
    the engine in their own processes). `from app import LLM` still works (app/__init__.py loads it lazily)."""
    code = (
        "import sys, deployments.builder\n"
        "heavy = [m for m in ('torch', 'app.engine', 'app.runner', 'app.lora.adapter', 'triton') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import app\n"
        "from app import LLM, SamplingParams\n"
        "assert 'torch' in sys.modules and LLM.__module__ == 'app.llm' and SamplingParams.__module__ == 'app.request'\n"
        "assert app.EngineConfig.__module__ == 'app.config' and not hasattr(app, 'Nothing')\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_reasoning_effort_becomes_template_variables(demo):
    """vLLM's `reasoning_effort` (and the Responses API's `reasoning.effort`): the chat template gets it as the
    variable `reasoning_effort` and, unless chat_template_kwargs sets it, `enable_thinking` = effort != "none";
    the top-level field wins over a `reasoning_effort` in chat_template_kwargs (vLLM's merge); other values are a
    400 (a validation error naming the field). Rendered: the demo's Qwen3-style template closes the thinking
    block for "none" and renders any other effort as without; a template that reads the effort shows it."""
    from app.tokenizer import Tokenizer
    from deployments.responses import ResponseShell, ResponsesRequest, chat_body

    msgs = [{"role": "user", "content": "x"}]

    def kwargs(**kw):
        return ChatCompletionRequest(model="m", messages=msgs, **kw).template_kwargs()

    assert kwargs() is None and kwargs(chat_template_kwargs={"a": 1}) == {"a": 1}
    assert kwargs(reasoning_effort="low") == {"reasoning_effort": "low", "enable_thinking": True}
    assert kwargs(reasoning_effort="none") == {"reasoning_effort": "none", "enable_thinking": False}
    assert kwargs(reasoning_effort="none", chat_template_kwargs={"enable_thinking": True}) == {
        "reasoning_effort": "none",
        "enable_thinking": True,
    }
    assert kwargs(reasoning_effort="max", chat_template_kwargs={"reasoning_effort": "low"})["reasoning_effort"] == "max"
    for bad in ("huge", "", 1):
        with pytest.raises(ValidationError, match="reasoning_effort"):
            ChatCompletionRequest(model="m", messages=msgs, reasoning_effort=bad)
    # the Responses API: reasoning.effort -> the chat's reasoning_effort, echoed in the Response object
    req = ResponsesRequest(model="m", input="x", reasoning={"effort": "minimal", "summary": "auto"})
    body = chat_body(req)
    assert body["reasoning_effort"] == "minimal" and ChatCompletionRequest(**body).template_kwargs() == {
        "reasoning_effort": "minimal",
        "enable_thinking": True,
    }
    assert ResponseShell(req).fields["reasoning"] == {"effort": "minimal", "summary": None}
    assert "reasoning_effort" not in chat_body(ResponsesRequest(model="m", input="x", reasoning={"summary": "auto"}))
    with pytest.raises(ValidationError, match="effort"):
        ResponsesRequest(model="m", input="x", reasoning={"effort": "huge"})
    # rendered by the tokenizer's template
    tok = Tokenizer(str(demo / "model"))
    closed = tok.apply_chat_template(msgs, template_kwargs={"enable_thinking": False})
    assert tok.apply_chat_template(msgs, template_kwargs=kwargs(reasoning_effort="none")) == closed
    assert tok.apply_chat_template(msgs, template_kwargs=kwargs(reasoning_effort="high")) == tok.apply_chat_template(
        msgs
    )
    assert closed != tok.apply_chat_template(msgs)
    tok.hf.chat_template = (
        "{{ messages[0]['content'] }}{% if reasoning_effort is defined %}|{{ reasoning_effort }}{% endif %}"
    )
    assert tok.decode(tok.apply_chat_template(msgs, template_kwargs=kwargs(reasoning_effort="xhigh"))) == "x|xhigh"
    assert tok.decode(tok.apply_chat_template(msgs, template_kwargs=kwargs())) == "x"


def test_cache_salt_maps_and_unimplemented_vllm_fields_are_refused():
    """cache_salt reaches SamplingParams (an empty one is a 400 naming it); vLLM fields that would change the
    answer and are not implemented (thinking_token_budget, return_token_ids) are refused at other than their
    neutral values, rather than ignored."""
    from app.request import ParamError

    msgs = [{"role": "user", "content": "x"}]
    assert CompletionRequest(model="m", prompt="x", cache_salt="t1").to_sampling_params(3).cache_salt == "t1"
    assert ChatCompletionRequest(model="m", messages=msgs).to_sampling_params(3).cache_salt is None
    from deployments.responses import ResponsesRequest, chat_body

    assert chat_body(ResponsesRequest(model="m", input="x", cache_salt="t2"))["cache_salt"] == "t2"
    with pytest.raises(ParamError) as e:
        CompletionRequest(model="m", prompt="x", cache_salt="").to_sampling_params(3)
    assert e.value.param == "cache_salt"
    for bad in ({"thinking_token_budget": 10}, {"return_token_ids": True}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            ChatCompletionRequest(model="m", messages=msgs, **bad)
    for neutral in ({"thinking_token_budget": None}, {"return_token_ids": False}):
        ChatCompletionRequest(model="m", messages=msgs, **neutral)
    with pytest.raises(ValidationError, match="thinking_token_budget"):
        CompletionRequest(model="m", prompt="x", thinking_token_budget=5)
