"""Tool calling pieces (app/tools.py) without a server: the template's format, parsing Hermes / Qwen and
Llama-3 JSON outputs (whole and streamed), the grammar of forced calls, and the demo template with tools."""

from __future__ import annotations

import json

import jsonschema
import pytest

from app.demo import CHAT_TEMPLATE
from app.tools import StreamingToolParser, forced_calls, forced_constraint, parse_tool_calls, tool_format
from deployments.protocol import ChatCompletionRequest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
NAMES = ["get_weather", "get_time"]
LLAMA3_TEMPLATE = (
    "{% if tools %}<|system|>Environment: ipython\nTo call a function, respond with JSON of the form "
    '{"name": function name, "parameters": dictionary of argument name and its value}.'
    "{% for t in tools %}{{ t | tojson }}{% endfor %}\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
)


def test_tool_format_from_the_template():
    assert tool_format(CHAT_TEMPLATE) == "hermes"
    assert tool_format(LLAMA3_TEMPLATE) == "llama3_json"
    assert tool_format("{% for m in messages %}{{ m['content'] }}{% endfor %}") is None
    assert tool_format(None) is None


def test_parse_hermes():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = parse_tool_calls(text, "hermes", NAMES)
    assert content == "Let me check." and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    two = (
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}'
    )
    content, calls = parse_tool_calls(two, "hermes", NAMES)  # the last one unclosed (stopped by EOS)
    assert content is None and [c.name for c in calls] == ["get_time", "get_weather"]
    assert calls[0].id != calls[1].id and calls[0].id.startswith("call_")
    for bad in ("no call here", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', "<tool_call>{not json"):
        assert parse_tool_calls(bad, "hermes", NAMES) == (bad, [])


def test_parse_llama3_json():
    content, calls = parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Oslo"}}', "llama3_json", NAMES)
    assert content is None and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Oslo"}
    text = (
        '<|python_tag|>{"name": "get_time", "parameters": {}}; {"name": "get_weather", "arguments": {"city": "Lima"}}'
    )
    assert [c.name for c in parse_tool_calls(text, "llama3_json", NAMES)[1]] == ["get_time", "get_weather"]
    for bad in ("Hello there", '{"name": "nope", "parameters": {}}', '{"name": "get_time", "parameters": {}} and'):
        assert parse_tool_calls(bad, "llama3_json", NAMES) == (bad, [])


MISTRAL_TEMPLATE = (  # the tool part of Mistral v0.3's template
    "{%- if tools %}[AVAILABLE_TOOLS] {{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif %}"
    "{%- for m in messages %}[INST] {{ m['content'] }}[/INST]{%- endfor %}"
)


def test_parse_mistral():
    """[TOOL_CALLS] [...] (v0.3), name[ARGS]{...} (newer tokenizers), and both without the control token,
    which detokenizing drops; anything else is content."""
    assert tool_format(MISTRAL_TEMPLATE) == "mistral"
    arr = '[{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_time", "arguments": {}}]'
    for text in ("[TOOL_CALLS] " + arr, arr, " " + arr):
        content, calls = parse_tool_calls(text, "mistral", NAMES)
        assert content is None and [c.name for c in calls] == ["get_weather", "get_time"]
        assert json.loads(calls[0].arguments) == {"city": "Oslo"}
    for text in ('[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}[TOOL_CALLS]get_time[ARGS]{}',
                 'get_weather[ARGS]{"city": "Rome"}'):  # fmt: skip
        content, calls = parse_tool_calls(text, "mistral", NAMES)
        assert content is None and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Rome"}
    for bad in ("Hello there", '[{"name": "rm_rf", "arguments": {}}]', "[1, 2]", "nope[ARGS]{}", "[TOOL_CALLS] [{"):
        assert parse_tool_calls(bad, "mistral", NAMES) == (bad, [])


CALL = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'


@pytest.mark.parametrize(
    "fmt,text,sent",
    [
        ("hermes", "Sure. " + CALL, "Sure. "),
        ("hermes", "Just text, no <tool_ call at all <tool", "Just text, no <tool_ call at all "),
        ("llama3_json", ' {"name": "get_time", "parameters": {}}', ""),
        ("llama3_json", "<|python_tag|>{}", ""),
        ("llama3_json", "  plain words", "  plain words"),
        ("mistral", ' [{"name": "get_time", "arguments": {}}]', ""),
        ("mistral", 'get_time[ARGS]{"x": 1}', ""),
        ("mistral", "[TOOL_CALLS] [", ""),
        ("mistral", "Plain words [1]", "Plain words [1]"),
    ],
)
def test_streaming_parser_holds_only_tool_calls(fmt, text, sent):
    """Fed a few characters at a time, the parser sends the text before a tool call at once and holds the
    call (and a suffix that could begin one) back; `rest` is what it held. A forced output is all held."""
    p = StreamingToolParser(fmt, forced=False)
    assert "".join(p.feed(text[i : i + 3]) for i in range(0, len(text), 3)) == sent
    assert p.rest() == text[len(sent) :]
    forced = StreamingToolParser(fmt, forced=True)
    assert forced.feed(text) == "" and forced.rest() == text


def test_forced_constraints_validate_calls():
    """A named function forces its arguments object; "required" forces an array of {name, parameters}
    calls of the given tools (one at most without parallel calls); their outputs become tool calls."""
    named = forced_constraint([WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}})
    assert json.loads(named.json) == WEATHER["function"]["parameters"]
    assert [
        (c.name, c.arguments) for c in forced_calls('{"city": "Paris"}', {"function": {"name": "get_weather"}})
    ] == [("get_weather", '{"city": "Paris"}')]
    req = json.loads(forced_constraint([WEATHER, TIME], "required").json)
    good = [{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "X"}}]
    jsonschema.validate(good, req)
    for bad in ([], [{"name": "get_weather", "parameters": {}}], [{"name": "other", "parameters": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, req)
    assert json.loads(forced_constraint([WEATHER], "required", parallel=False).json)["maxItems"] == 1
    assert [c.name for c in forced_calls(json.dumps(good), "required")] == ["get_time", "get_weather"]
    assert forced_calls('[{"name": "get_time", "parame', "required") == []  # cut by max_tokens
    assert forced_constraint([WEATHER], "auto") is None


def test_chat_request_tools():
    msgs = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    r = ChatCompletionRequest(model="m", messages=msgs, tools=[WEATHER, TIME])
    assert (
        r.tool_mode() == "auto" and r.structured() is None and [t["function"]["name"] for t in r.tool_dicts()] == NAMES
    )
    chat = r.chat()
    assert chat[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}  # an object for the template
    assert chat[2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    assert ChatCompletionRequest(model="m", messages=msgs, tools=[WEATHER], tool_choice="none").tool_dicts() is None
    named = {"type": "function", "function": {"name": "get_time"}}
    so = ChatCompletionRequest(model="m", messages=msgs, tools=[WEATHER, TIME], tool_choice=named).structured()
    assert json.loads(so.json) == TIME["function"]["parameters"]
    for bad in (
        dict(tool_choice="required"),  # no tools
        dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_time"}}),
        dict(tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}),
        dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]),
    ):
        with pytest.raises(ValueError):
            ChatCompletionRequest(model="m", messages=msgs, **bad)


def test_demo_template_shows_tools_and_calls(tmp_path):
    """The demo's template without tools is the plain one; with tools it lists them and renders earlier
    calls and tool results in the Hermes format that the parser reads."""
    from app.demo import write_tokenizer
    from app.tokenizer import Tokenizer

    write_tokenizer(tmp_path)
    tok = Tokenizer(tmp_path)
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.hf.decode(tok.apply_chat_template(msgs)) == "<|user|>Hi\n<|assistant|>"
    r = ChatCompletionRequest(
        model="m",
        messages=msgs
        + [
            {
                "role": "assistant",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
                ],
            },
            {"role": "tool", "content": "sunny"},
        ],
        tools=[WEATHER],
    )
    text = tok.hf.decode(tok.apply_chat_template(r.chat(), tools=r.tool_dicts()))
    assert json.dumps(WEATHER["function"]["parameters"]) in text and "<tool_call>" in text
    call = text[text.index("<|assistant|><tool_call>") + len("<|assistant|>") :].split("<|tool|>")[0]
    assert parse_tool_calls(call, "hermes", ["get_weather"])[1][0].arguments == '{"city": "Oslo"}'
    assert "<tool_response>\nsunny\n</tool_response>" in text and text.endswith("<|assistant|>")
