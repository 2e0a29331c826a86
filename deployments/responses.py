"""OpenAI's Responses API (`POST /v1/responses`, as vLLM serves it) over the chat route: a request becomes
a chat request (`chat_body`), its answer a Response object (`response_object`) and its chat stream the
Responses stream's events (`ResponseEvents`).

What is taken: `input` (a string, or items: messages with text content, `function_call` and
`function_call_output` items of earlier turns; `reasoning` items are dropped, as a chat template shows no
earlier reasoning), `instructions` (a system message first), `max_output_tokens`, `temperature`, `top_p`,
`tools` (function tools), `tool_choice`, `parallel_tool_calls`, `text.format` (text, json_object,
json_schema), `stream`, and the vLLM sampling extras the chat route takes (`top_k`, `seed`, `stop`, ...).
Nothing is stored: `store` is accepted and the Response says `store: false`; `previous_response_id`,
`conversation`, `background`, `prompt` and non-function tools are refused with a 400 naming the field.

Output items: a `reasoning` item when the ingress has a reasoning parser and the answer reasoned, a `message`
with one `output_text` part, and a `function_call` item per tool call. A Response cut by max_output_tokens
is `incomplete` (reason `max_output_tokens`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.protocol import ReasoningEffort, UnsupportedField, refuse_unsupported

# fields of the Responses API this server does not implement (-> 400 unless at their neutral value)
RESPONSES_UNSUPPORTED: dict[str, tuple] = {
    "previous_response_id": (None,),
    "conversation": (None,),
    "background": (None, False),
    "prompt": (None,),
    "max_tool_calls": (None,),
    "top_logprobs": (None, 0),
}
# the chat route's vLLM extras passed through as they are
CHAT_EXTRAS = ("top_k", "min_p", "seed", "stop", "include_stop_str_in_output", "stop_token_ids", "ignore_eos",
               "min_tokens", "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias",
               "allowed_token_ids", "bad_words", "chat_template_kwargs", "priority", "cache_salt")  # fmt: skip


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ReasoningOptions(BaseModel):
    """The Responses API's `reasoning`: its effort becomes the chat's vLLM `reasoning_effort` (the chat
    template's variables, deployments/protocol.py `ChatCompletionRequest.template_kwargs`); no summaries are made, so
    `summary` is accepted and has no effect."""

    model_config = ConfigDict(extra="ignore")
    effort: ReasoningEffort | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    user: str | None = None
    reasoning: ReasoningOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data):
        refuse_unsupported(data, RESPONSES_UNSUPPORTED)
        return data


def _text_of(content: Any, where: str) -> str:
    """A message's content as text: a string, or text parts (input_text / output_text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise UnsupportedField("input", f"{where}: content must be a string or a list of text parts")
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise UnsupportedField("input", f"{where}: content part {kind!r} is not supported (text only)")
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def _messages(req: ResponsesRequest) -> list[dict]:
    msgs: list[dict] = [{"role": "system", "content": req.instructions}] if req.instructions else []
    if isinstance(req.input, str):
        return [*msgs, {"role": "user", "content": req.input}]
    for i, item in enumerate(req.input):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise UnsupportedField("input", f"{where}: role {item.get('role')!r} is not user, assistant, system "
                                                "or developer")  # fmt: skip
            msgs.append({"role": item["role"], "content": _text_of(item.get("content", ""), where)})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}  # fmt: skip
            last = msgs[-1] if msgs else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last["content"]:
                last["tool_calls"].append(call)  # parallel calls of one turn: one assistant message
            else:
                msgs.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            out = item.get("output", "")
            msgs.append({"role": "tool", "tool_call_id": item.get("call_id"),
                         "content": out if isinstance(out, str) else _text_of(out, where)})  # fmt: skip
        elif kind != "reasoning":
            raise UnsupportedField("input", f"{where}: item type {kind!r} is not supported")
    if not msgs:
        raise UnsupportedField("input", "has no message")
    return msgs


def _tools(req: ResponsesRequest) -> tuple[list[dict] | None, Any]:
    """(chat tools, chat tool_choice) of the request's function tools."""
    tools = None
    if req.tools:
        tools = []
        for t in req.tools:
            if t.get("type") != "function":
                raise UnsupportedField("tools", f"tool type {t.get('type')!r} is not supported (function only)")
            fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
            tools.append({"type": "function", "function": fn})
    choice = req.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not choice.get("name"):
            raise UnsupportedField("tool_choice", "must be none, auto, required or {type: function, name}")
        choice = {"type": "function", "function": {"name": choice["name"]}}
    return tools, choice


def _response_format(req: ResponsesRequest) -> dict | None:
    fmt = (req.text or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise UnsupportedField("text", "format must be an object")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    raise UnsupportedField("text", f"format type {fmt.get('type')!r} is not text, json_object or json_schema")


def chat_body(req: ResponsesRequest) -> dict:
    """The chat request (deployments/protocol.py ChatCompletionRequest's fields) that answers `req`."""
    tools, choice = _tools(req)
    body: dict[str, Any] = {"model": req.model, "messages": _messages(req), "stream": req.stream}
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    for k, v in (("max_tokens", req.max_output_tokens), ("temperature", req.temperature), ("top_p", req.top_p),
                 ("tools", tools), ("tool_choice", choice), ("parallel_tool_calls", req.parallel_tool_calls),
                 ("response_format", _response_format(req)), ("user", req.user),
                 ("reasoning_effort", req.reasoning.effort if req.reasoning else None)):  # fmt: skip
        if v is not None:
            body[k] = v
    extra = req.model_extra or {}
    body.update({k: extra[k] for k in CHAT_EXTRAS if k in extra})
    return body


def _usage(u: dict | None) -> dict | None:
    if u is None:
        return None
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"input_tokens": u["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": u["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u["total_tokens"]}  # fmt: skip


def _message_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}  # fmt: skip


def _reasoning_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "reasoning", "id": item_id, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}]}  # fmt: skip


def _call_item(call: dict, status: str) -> dict:
    fn = call["function"]
    return {"type": "function_call", "id": _id("fc"), "call_id": call["id"], "name": fn["name"],
            "arguments": fn["arguments"], "status": status}  # fmt: skip


class ResponseShell:
    """The Response object's fields that come from the request (and its id and creation time)."""

    def __init__(self, req: ResponsesRequest):
        self.id, self.created = _id("resp"), int(time.time())
        fmt = (req.text or {}).get("format")
        self.fields = {
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "metadata": req.metadata or {},
            "model": req.model,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {"effort": req.reasoning.effort, "summary": None} if req.reasoning else None,
            "store": False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": fmt if isinstance(fmt, dict) else {"type": "text"}},
            "tool_choice": req.tool_choice or "auto",
            "tools": req.tools or [],
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": "disabled",
            "user": req.user,
        }

    def object(self, status: str, output: list[dict], usage: dict | None = None, error: dict | None = None) -> dict:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "error": error, "incomplete_details": incomplete, "output": output, "usage": usage,
                **self.fields}  # fmt: skip


def response_object(shell: ResponseShell, chat: dict) -> dict:
    """The Response of a (non-streamed) chat answer, as a dict."""
    choice = chat["choices"][0]
    msg, status = choice["message"], "incomplete" if choice["finish_reason"] == "length" else "completed"
    output = []
    if msg.get("reasoning"):
        output.append(_reasoning_item(_id("rs"), msg["reasoning"], "completed"))
    if msg.get("content") is not None or not msg.get("tool_calls"):
        output.append(_message_item(_id("msg"), msg.get("content") or "", status))
    output += [_call_item(c, "completed") for c in msg.get("tool_calls") or []]
    return shell.object(status, output, _usage(chat.get("usage")))


class ResponseEvents:
    """The Responses stream of a chat stream: `feed(chat_chunk)` and `end()` return SSE text of the events
    (`event: TYPE` and `data: JSON` with a `sequence_number`), from `response.created` to
    `response.completed` (or `response.incomplete`, or an `error` event and `response.failed`)."""

    def __init__(self, shell: ResponseShell):
        self.shell = shell
        self.seq = 0
        self.output: list[dict] = []
        self.open: dict | None = None  # the item receiving deltas: {"kind", "id", "index", "text"}
        self.status = "completed"
        self.usage: dict | None = None

    def _event(self, kind: str, **fields) -> str:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    def start(self) -> str:
        r = self.shell.object("in_progress", [])
        return self._event("response.created", response=r) + self._event("response.in_progress", response=r)

    def _open(self, kind: str) -> str:
        out = self._close() if self.open is not None and self.open["kind"] != kind else ""
        if self.open is not None:
            return out
        item_id, index = _id("rs" if kind == "reasoning" else "msg"), len(self.output)
        self.open = {"kind": kind, "id": item_id, "index": index, "text": ""}
        item = (
            _reasoning_item(item_id, "", "in_progress")
            if kind == "reasoning"
            else _message_item(item_id, "", "in_progress")
        )
        item["content"] = []
        part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" else {
            "type": "output_text", "text": "", "annotations": [], "logprobs": []}  # fmt: skip
        self.output.append(item)
        return (out + self._event("response.output_item.added", output_index=index, item=item)
                + self._event("response.content_part.added", item_id=item_id, output_index=index, content_index=0,
                              part=part))  # fmt: skip

    def _close(self) -> str:
        o, self.open = self.open, None
        if o is None:
            return ""
        ids = {"item_id": o["id"], "output_index": o["index"], "content_index": 0}
        if o["kind"] == "reasoning":
            item = _reasoning_item(o["id"], o["text"], "completed")
            done = self._event("response.reasoning_text.done", text=o["text"], **ids)
            part = item["content"][0]
        else:
            item = _message_item(o["id"], o["text"], self.status)
            done = self._event("response.output_text.done", text=o["text"], logprobs=[], **ids)
            part = item["content"][0]
        self.output[o["index"]] = item
        return (done + self._event("response.content_part.done", part=part, **ids)
                + self._event("response.output_item.done", output_index=o["index"], item=item))  # fmt: skip

    def _delta(self, kind: str, text: str) -> str:
        out = self._open(kind)
        assert self.open is not None
        self.open["text"] += text
        ids = {"item_id": self.open["id"], "output_index": self.open["index"], "content_index": 0}
        if kind == "reasoning":
            return out + self._event("response.reasoning_text.delta", delta=text, **ids)
        return out + self._event("response.output_text.delta", delta=text, logprobs=[], **ids)

    def feed(self, chunk: dict) -> str:
        """Events of one chat chunk (a choice's delta, the usage chunk, or an error body)."""
        if "error" in chunk:
            err = chunk["error"]
            out = self._event("error", code=str(err.get("code")), message=err.get("message", ""),
                              param=err.get("param"))  # fmt: skip
            failed = self.shell.object("failed", self.output, error={"code": "server_error",
                                                                     "message": err.get("message", "")})  # fmt: skip
            return out + self._event("response.failed", response=failed)
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        out = ""
        for choice in chunk.get("choices") or []:
            d = choice.get("delta") or {}
            if choice.get("finish_reason") == "length":
                self.status = "incomplete"
            if d.get("reasoning"):
                out += self._delta("reasoning", d["reasoning"])
            if d.get("content"):
                out += self._delta("message", d["content"])
            for call in d.get("tool_calls") or []:
                out += self._close()
                item, index = _call_item(call, "in_progress"), len(self.output)
                self.output.append(item)
                args = item["arguments"]
                item = {**item, "arguments": ""}
                out += self._event("response.output_item.added", output_index=index, item=item)
                ids = {"item_id": item["id"], "output_index": index}
                out += self._event("response.function_call_arguments.delta", delta=args, **ids)
                out += self._event("response.function_call_arguments.done", arguments=args, **ids)
                self.output[index] = item = {**item, "arguments": args, "status": "completed"}
                out += self._event("response.output_item.done", output_index=index, item=item)
        return out

    def end(self) -> str:
        """The closing events, once the chat stream has ended without an error."""
        out = self._open("message") if not self.output and self.open is None else ""  # an empty answer: an empty
        out += self._close()  # message, as the non-streamed one
        kind = "response.incomplete" if self.status == "incomplete" else "response.completed"
        return out + self._event(kind, response=self.shell.object(self.status, self.output, self.usage))
