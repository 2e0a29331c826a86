"""Tool calling on chat completions: which format a chat template asks the model to call tools in, the
grammar that forces a call, and parsing model output into OpenAI `tool_calls`.

Formats (chosen from the chat template's text, `tool_format`):
  "hermes":      <tool_call>{"name": ..., "arguments": {...}}</tool_call>, any number, text around them
                 (Hermes, Qwen 2 / 2.5 / 3 templates)
  "llama3_json": the whole output is {"name": ..., "parameters": {...}} (several separated by ";"),
                 optionally after <|python_tag|> (Llama 3.1 / 3.2 / 3.3 templates)
  "mistral":     the whole output is [TOOL_CALLS] then a JSON array of {"name": ..., "arguments": {...}}
                 (Mistral v0.3 templates) or name[ARGS]{...} per call (newer Mistral tokenizers); the
                 [TOOL_CALLS] control token is dropped by detokenizing, so an output that is such an array
                 (or name[ARGS]{...}) by itself is one too

tool_choice (OpenAI): "none" (tools are not shown to the model), "auto" (the output is parsed: tool calls if
it holds any, else content), "required" (the output is forced, by grammar, to a JSON array of
{"name", "parameters"} calls of the given tools), a named function (the output is forced to that function's
arguments object). Forced outputs do not depend on the template's format, as in vLLM.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from app.structured import StructuredOutputs

HERMES_START, HERMES_END = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object
    id: str = ""

    def __post_init__(self):
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"

    def openai(self, index: int | None = None) -> dict:
        d = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return d if index is None else {"index": index, **d}


def tool_format(chat_template: str | None) -> str | None:
    """The tool-call format a chat template asks for, from its text (None: the template shows no tools)."""
    if not chat_template or "tools" not in chat_template:
        return None
    if HERMES_START in chat_template:
        return "hermes"
    if MISTRAL_CALLS in chat_template or "[AVAILABLE_TOOLS]" in chat_template:
        return "mistral"
    if '"parameters"' in chat_template or "python_tag" in chat_template:
        return "llama3_json"
    return None


def function_names(tools: list[dict]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def forced_constraint(tools: list[dict], tool_choice: str | dict, parallel: bool = True) -> StructuredOutputs | None:
    """The grammar of a forced tool call: a named function's arguments object, or for "required" an array
    of {"name", "parameters"} calls (one at most when parallel tool calls are off); None otherwise."""
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        (tool,) = [t for t in tools if t["function"]["name"] == name]
        return StructuredOutputs(json=json.dumps(_parameters(tool)))
    if tool_choice != "required":
        return None
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t["function"]["name"]}, "parameters": _parameters(t)},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return StructuredOutputs(json=json.dumps(schema))


def _parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def forced_calls(text: str, tool_choice: str | dict) -> list[ToolCall]:
    """The tool calls of a forced output (see forced_constraint); [] when it is not complete JSON (cut by
    max_tokens)."""
    try:
        value = json.loads(text)
    except ValueError:
        return []
    if isinstance(tool_choice, dict):
        return [ToolCall(tool_choice["function"]["name"], json.dumps(value))]
    return [ToolCall(c["name"], json.dumps(c["parameters"])) for c in value]


def parse_tool_calls(text: str, fmt: str | None, names: list[str]) -> tuple[str | None, list[ToolCall]]:
    """(content, tool calls) of a model output in format `fmt`; calls of unknown functions or with
    arguments that are not a JSON object are left in the content, as is everything when none parse."""
    if fmt == "hermes" and HERMES_START in text:
        calls, spans = [], []
        for m in _HERMES_CALL.finditer(text):
            call = _call(m.group(1), "arguments", names)
            if call is not None:
                calls.append(call)
                spans.append(m.span())
        if calls:
            content, last = "", 0
            for a, b in spans:
                content, last = content + text[last:a], b
            content = (content + text[last:]).strip()
            return content or None, calls
    elif fmt == "mistral":
        calls = _mistral_calls(text, names)
        if calls:
            return None, calls
    elif fmt == "llama3_json":
        body = text.strip().removeprefix(PYTHON_TAG).strip()
        if body.startswith("{"):
            parsed = [_call(part, "parameters", names) for part in _split_json_objects(body)]
            json_calls = [c for c in parsed if c is not None]
            if json_calls and len(json_calls) == len(parsed):
                return None, json_calls
    return text, []


def _mistral_calls(text: str, names: list[str]) -> list[ToolCall]:
    """The calls of a whole Mistral tool-call output, or [] (then it is content)."""
    body = text.strip().removeprefix(MISTRAL_CALLS).strip()
    if body.startswith("["):
        try:
            items = json.loads(body)
        except ValueError:
            return []
        parsed = [_call_obj(x, "arguments", names) for x in items] if isinstance(items, list) else []
        calls = [c for c in parsed if c is not None]
        return calls if calls and len(calls) == len(parsed) else []
    out = []
    for part in body.split(MISTRAL_CALLS):  # name[ARGS]{...}, once per call
        name, sep, args = part.strip().partition(MISTRAL_ARGS)
        call = _call_obj({"name": name.strip(), "arguments": json_or(args, None)}, "arguments", names)
        if not sep or call is None:
            return []
        out.append(call)
    return out


def json_or(s: str, default):
    """The JSON value of `s`, or `default` when `s` is not JSON."""
    try:
        return json.loads(s)
    except ValueError:
        return default


def _call(s: str, key: str, names: list[str]) -> ToolCall | None:
    return _call_obj(json_or(s, None), key, names)


def _call_obj(obj, key: str, names: list[str]) -> ToolCall | None:
    """A parsed {"name": ..., key: {...}} of a tool in `names` as a ToolCall, else None."""
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get(key, obj.get("arguments" if key == "parameters" else "parameters", {}))
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _split_json_objects(s: str) -> list[str]:
    """'{...}; {...}' -> the objects' texts ('' parts dropped); a part that is not one object stays whole."""
    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(s):
        try:
            _, end = dec.raw_decode(s, i)
        except ValueError:
            return [s[i:]]
        out.append(s[i:end])
        i = end
        while i < len(s) and s[i] in " \n\t;":
            i += 1
    return out


class StreamingToolParser:
    """Splits a streamed output into content to send now and a tool-call part to hold until the end:
    "hermes" sends text up to a (possible start of a) <tool_call> and holds the rest; "llama3_json" holds
    an output that starts with { or <|python_tag|>, "mistral" one that starts with [ or [TOOL_CALLS] or is
    a name followed by [ARGS], else sends it as content; forced outputs hold it all."""

    def __init__(self, fmt: str | None, forced: bool):
        self.fmt, self.forced = fmt, forced
        self.text = ""
        self.sent = 0  # characters of text sent as content
        self.holding = forced  # from `sent` on, the text may be a tool call: nothing more is sent

    def feed(self, delta: str) -> str:
        """The content to send for this delta."""
        self.text += delta
        if self.holding or self.fmt is None:
            return "" if self.holding else self._send(len(self.text))
        if self.fmt in ("llama3_json", "mistral"):
            head = self.text.lstrip()
            tag, opens = (PYTHON_TAG, ("{", PYTHON_TAG)) if self.fmt == "llama3_json" else (MISTRAL_CALLS, ("[",))
            if self.sent == 0:
                if tag.startswith(head):  # nothing yet, or maybe the start of the format's tag
                    return ""
                if head.startswith((*opens, tag)) or (self.fmt == "mistral" and MISTRAL_ARGS in head):
                    self.holding = True
                    return ""
                name, bracket, rest = head.partition("[")
                if (
                    self.fmt == "mistral"
                    and re.fullmatch(r"[A-Za-z_][\w.-]*", name)
                    and MISTRAL_ARGS.startswith(bracket + rest)
                ):
                    return ""  # maybe a function name before [ARGS]: wait for the next characters
            return self._send(len(self.text))
        i = self.text.find(HERMES_START, self.sent)
        if i >= 0:
            self.holding = True
            return self._send(i)
        # hold back a suffix that could be the start of <tool_call>
        keep = next((k for k in range(len(HERMES_START) - 1, 0, -1) if self.text.endswith(HERMES_START[:k])), 0)
        return self._send(len(self.text) - keep)

    def _send(self, end: int) -> str:
        out = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return out

    def rest(self) -> str:
        """What was held back (at the end of the stream: parse it, or send it as content)."""
        return self.text[self.sent :]
