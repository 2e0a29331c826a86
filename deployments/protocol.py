"""OpenAI-compatible request/response schemas (pydantic), as vLLM serves them.

In:  JSON bodies of /v1/completions, /v1/chat/completions (with tools: app/tools.py), /v1/load_lora_adapter,
     /v1/unload_lora_adapter, and vLLM's /tokenize and /detokenize.
Out: response and streaming-chunk objects, model cards, token lists, error objects `{"error": {...}}`.
`to_sampling_params` maps a request onto the engine's `SamplingParams` (one per choice of `n`).
Unknown fields are ignored (as OpenAI clients send extras); supported ones are validated (400 when bad);
fields that vLLM knows and this server does not implement (`VLLM_UNSUPPORTED`) are refused with a 400
naming the field when set to anything but their neutral value, so that a request never silently gets
an output other than the one it asked for.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.lora.adapter import MAX_PATH_CHARS, check_adapter_name, check_adapter_path
from app.request import MAX_BAD_WORDS, MAX_LOGPROBS, SamplingParams, TokenLogprobs, truncated_prompt
from app.structured import StructuredOutputs
from app.tools import forced_constraint, json_or


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# ---- errors -----------------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return ErrorResponse(
        error=ErrorInfo(message=message, type=ERROR_TYPES.get(status, "APIError"), param=param, code=status)
    ).model_dump()


# ---- requests ---------------------------------------------------------------------------------------
class UnsupportedField(ValueError):
    """A request field this server knows but does not implement (a 400 whose `param` is the field)."""

    def __init__(self, param: str, why: str = "is not supported by this server"):
        super().__init__(f"{param} {why}")
        self.param = param


# name -> the values that mean "off" (accepted: the output is what the request asks for)
VLLM_UNSUPPORTED: dict[str, tuple] = {
    "use_beam_search": (False,),
    "length_penalty": (1, 1.0),
    "spaces_between_special_tokens": (True,),
    "logits_processors": (None,),
    "prompt_embeds": (None,),
    "kv_transfer_params": (None,),
    "vllm_xargs": (None,),
    "guided_whitespace_pattern": (None,),
    "thinking_token_budget": (None,),
    "return_token_ids": (None, False),
}
# vLLM's structured_outputs keys that are not implemented (-> 400 unless neutral); json / regex / choice /
# grammar / json_object are, and disable_any_whitespace is accepted (JSON is always compact here)
STRUCTURED_UNSUPPORTED: dict[str, tuple] = {
    "whitespace_pattern": (None,),
    "structural_tag": (None,),
    "disable_fallback": (None, False),
    "disable_additional_properties": (None, False),
}
COMPLETION_UNSUPPORTED: dict[str, tuple] = {"add_special_tokens": (None, True)}
CHAT_UNSUPPORTED: dict[str, tuple] = {
    "add_special_tokens": (None, False),
    "documents": (None,),
    "chat_template": (None,),
    "mm_processor_kwargs": (None,),
    "functions": (None,),
    "function_call": (None,),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
}


def refuse_unsupported(data: Any, table: dict[str, tuple]) -> None:
    if isinstance(data, dict):
        for name, neutral in table.items():
            if name in data and not any(data[name] == v and type(data[name]) is type(v) for v in neutral):
                raise UnsupportedField(name)


GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}


def structured_outputs(field: str, json_object: bool = False, **spec) -> StructuredOutputs:
    """StructuredOutputs from a request field's value (a JSON schema may be given as an object or text)."""
    if isinstance(spec.get("json"), dict):
        spec["json"] = json.dumps(spec["json"])
    if isinstance(spec.get("choice"), list):
        spec["choice"] = tuple(spec["choice"])
    try:
        return StructuredOutputs(json_object=json_object, **spec)
    except (TypeError, ValueError) as e:
        raise UnsupportedField(field, f"is invalid: {e}") from None


def response_format_constraint(rf: dict) -> StructuredOutputs | None:
    """OpenAI's response_format: text (none), json_object, json_schema ({"json_schema": {"name", "schema",
    "strict"}})."""
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputs(json_object=True)
    if kind == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema", js.get("json_schema")) if isinstance(js, dict) else None
        if not isinstance(schema, dict):
            raise UnsupportedField(
                "response_format", "json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}"
            )
        return StructuredOutputs(json=json.dumps(schema))
    raise UnsupportedField("response_format", f"type {kind!r} is not supported (text, json_object, json_schema)")


# sampling fields a model's generation_config.json may give defaults for (vLLM's --generation-config auto)
SAMPLING_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def generation_defaults(model_dir: str) -> dict[str, float | int]:
    """The SAMPLING_DEFAULTS values of the model's generation_config.json (none without the file), as vLLM
    reads them (do_sample is not read there either)."""
    f = Path(model_dir) / "generation_config.json"
    if not f.is_file():
        return {}
    g = json.loads(f.read_text())
    return {k: g[k] for k in SAMPLING_DEFAULTS if isinstance(g.get(k), (int, float)) and not isinstance(g[k], bool)}


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: every chunk carries the usage so far


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = -1
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=64)
    seed: int | None = None
    stop: str | list[str] | None = None
    include_stop_str_in_output: bool = False
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    logit_bias: dict[str, float] | None = None
    min_tokens: int = Field(0, ge=0)
    allowed_token_ids: list[int] | None = None  # vLLM's: only these tokens are sampled
    return_tokens_as_token_ids: bool = False  # vLLM's: logprobs name tokens "token_id:N", not by their text
    bad_words: list[str] | None = Field(None, max_length=MAX_BAD_WORDS)  # vLLM's: words never generated
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    # vLLM's: keep the prompt's last k tokens (-1: the model's maximum context length), after tokenizing
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    skip_special_tokens: bool = True  # vLLM's: False keeps special tokens' text in the output
    # vLLM's: lower first, when the engine's queue_order is "priority" (otherwise only 0 is accepted)
    priority: int = Field(0, ge=-(2**63), lt=2**63)
    cache_salt: str | None = None  # vLLM's: prefix-cache pages are shared only among requests of one salt
    # structured output: OpenAI's response_format, vLLM's structured_outputs and its older guided_* fields
    response_format: dict | None = None
    structured_outputs: dict | None = None
    guided_json: str | dict | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None  # accepted and ignored: one backend (llguidance) here
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _vllm_unsupported(cls, data):
        refuse_unsupported(data, VLLM_UNSUPPORTED)
        return data

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _truncate_not_zero(cls, v):
        if v == 0:
            raise ValueError("truncate_prompt_tokens must be -1 (the maximum context length) or at least 1")
        return v

    def truncated(self, ids: list[int], max_model_len: int) -> list[int]:
        """The prompt's token ids as the model sees them: the last `truncate_prompt_tokens` of them (-1: the
        last max_model_len), or all when unset."""
        return truncated_prompt(ids, self.truncate_prompt_tokens, max_model_len)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop strings")
        return v

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if self.max_tokens == 0 and self.num_prompt_logprobs() is None and not self.echoes_prompt():
            raise UnsupportedField("max_tokens", "must be at least 1 (0 only with echo or prompt_logprobs)")
        self.structured()  # a bad or conflicting constraint is a 400 naming its field
        return self

    def echoes_prompt(self) -> bool:
        """Whether the answer repeats the prompt (completions' echo), so that max_tokens 0 still asks for
        something."""
        return False

    def to_sampling_params(self, max_tokens: int, index: int = 0, defaults: dict | None = None) -> SamplingParams:
        """The engine's parameters for choice `index` (seeded choices get distinct seeds). `defaults`: values
        for the SAMPLING_DEFAULTS fields the request did not set (the model's generation config)."""
        seed = None if self.seed is None else self.seed + index
        given = {k: getattr(self, k) for k in SAMPLING_DEFAULTS}
        given.update({k: v for k, v in (defaults or {}).items() if k in given and k not in self.model_fields_set})
        return SamplingParams(
            max_tokens=max_tokens,
            **given,
            seed=seed,
            stop=self.stop,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=self.logit_bias,  # type: ignore[arg-type]  # SamplingParams makes the JSON keys ints
            logprobs=self.num_logprobs(),
            prompt_logprobs=self.num_prompt_logprobs(),
            min_tokens=self.min_tokens,
            allowed_token_ids=self.allowed_token_ids,
            bad_words=self.bad_words,
            structured=self.structured(),
            priority=self.priority,
            cache_salt=self.cache_salt,
        )

    def structured(self) -> StructuredOutputs | None:
        """The output constraint asked for, by whichever of the fields (at most one of them)."""
        rf, so = self.response_format, self.structured_outputs
        given = [
            k
            for k in ("response_format", "structured_outputs", *GUIDED)
            if getattr(self, k) is not None and (k != "response_format" or (rf or {}).get("type") != "text")
        ]
        if len(given) > 1:
            raise UnsupportedField(given[1], f"cannot be combined with {given[0]}: give one output constraint")
        if not given:
            return None
        name = given[0]
        if name == "response_format" and rf is not None:
            return response_format_constraint(rf)
        if name == "structured_outputs" and so is not None:
            refuse_unsupported(so, STRUCTURED_UNSUPPORTED)
            spec = {k: so.get(k) for k in ("json", "regex", "choice", "grammar") if so.get(k) is not None}
            return structured_outputs(name, **spec, json_object=bool(so.get("json_object")))
        return structured_outputs(name, **{GUIDED[name]: getattr(self, name)})

    def num_logprobs(self) -> int | None:
        """Alternatives per token to return with log-probabilities (None: no logprobs)."""
        return None

    def num_prompt_logprobs(self) -> int | None:
        """Alternatives per prompt token to compute log-probabilities for (None: none)."""
        return self.prompt_logprobs

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.continuous_usage_stats)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None

    def num_logprobs(self) -> int | None:
        return self.logprobs

    def echoes_prompt(self) -> bool:
        return self.echo

    @model_validator(mode="before")
    @classmethod
    def _completion_unsupported(cls, data):
        refuse_unsupported(data, COMPLETION_UNSUPPORTED)
        return data

    def num_prompt_logprobs(self) -> int | None:
        """vLLM: `prompt_logprobs` if given, else `logprobs` with echo (the echoed prompt's logprobs)."""
        if self.prompt_logprobs is not None:
            return self.prompt_logprobs
        return self.logprobs if self.echo else None

    @model_validator(mode="after")
    def _unsupported(self):
        if self.suffix:
            raise UnsupportedField("suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise UnsupportedField("best_of", "other than n is not supported by this server")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: one string, a list of strings, token ids, or a list of token id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(cast("list[int]", p))]
        return list(cast("list[str] | list[list[int]]", p))


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class FunctionCallIn(BaseModel):
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI sends it


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message's call
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, v: Any) -> Any:
        """A part other than text (image_url, input_audio, file) is refused by name, not by the union's errors."""
        for part in v if isinstance(v, list) else ():
            if isinstance(part, dict) and part.get("type") != "text":
                why = f"with a content part of type {part.get('type')!r} are not supported (text only)"
                raise UnsupportedField("messages", why)
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def template_dict(self) -> dict:
        """The message as chat templates read it (a call's arguments as an object, as HF templates expect)."""
        d: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c.id,
                    "type": c.type,
                    "function": {
                        "name": c.function.name,
                        "arguments": json_or(c.function.arguments, c.function.arguments),
                    },
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            d["name"] = self.name
        return d


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionName


# names a chat template's extra variables may not take: the arguments of transformers' apply_chat_template
# and what the template gets from the request itself (app/tokenizer.py refuses them too)
RESERVED_TEMPLATE_KWARGS = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict",
    "return_assistant_tokens_mask", "tokenizer_kwargs", "sanitize_control_tokens",
})  # fmt: skip
MAX_TEMPLATE_KWARGS = 64
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_template_kwargs(kw: dict[str, Any] | None) -> dict[str, Any] | None:
    """vLLM's `chat_template_kwargs`: extra variables of the chat template (Qwen3's `enable_thinking`,
    Llama 3.1's `date_string`, ...). Names are identifiers, at most MAX_TEMPLATE_KWARGS of them, none of
    RESERVED_TEMPLATE_KWARGS (a 400 naming the field)."""
    if not kw:
        return None
    if len(kw) > MAX_TEMPLATE_KWARGS:
        raise UnsupportedField("chat_template_kwargs", f"has {len(kw)} entries, more than {MAX_TEMPLATE_KWARGS}")
    for name in kw:
        if not _IDENTIFIER.fullmatch(name):
            raise UnsupportedField("chat_template_kwargs", f"has {name[:80]!r}, not a template variable name")
        if name in RESERVED_TEMPLATE_KWARGS:
            raise UnsupportedField(
                "chat_template_kwargs", f"cannot set {name!r}: it is set by the request or the server"
            )
    return kw


# vLLM's `reasoning_effort` values (OpenAI's, and DeepSeek's "max")
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


def check_continue_final_message(add_generation_prompt: bool, continue_final_message: bool) -> None:
    """vLLM's rule: the chat ends either with the template's prompt for a new assistant message, or open, in
    its final message (which the model continues), not both."""
    if add_generation_prompt and continue_final_message:
        raise UnsupportedField(
            "continue_final_message", "cannot be combined with add_generation_prompt=true (set it to false)"
        )


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's: the template's prompt for the assistant's reply at the end, or (continue_final_message) the final
    # message left open so that the model continues it (a "prefill" of the reply)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo: bool = False  # vLLM's: the reply starts with the final message's content when that is the assistant's
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: ReasoningEffort | None = None
    # vLLM's: false leaves the reasoning the ingress's reasoning parser splits off out of the answer (the
    # content stays the part after it); no effect without a parser
    include_reasoning: bool = True

    _template_kwargs = field_validator("chat_template_kwargs")(check_template_kwargs)

    def template_kwargs(self) -> dict[str, Any] | None:
        """The chat template's extra variables: chat_template_kwargs with vLLM's `reasoning_effort` folded in,
        as the variable `reasoning_effort` (templates that grade reasoning read it) and, unless
        chat_template_kwargs sets it, `enable_thinking` = effort != "none" (templates that switch thinking on
        or off, Qwen3's). A template that reads neither renders as without."""
        kw, effort = self.chat_template_kwargs or {}, self.reasoning_effort
        if effort is None:
            return self.chat_template_kwargs
        return {**kw, "reasoning_effort": effort, "enable_thinking": kw.get("enable_thinking", effort != "none")}

    @model_validator(mode="before")
    @classmethod
    def _chat_unsupported(cls, data):
        refuse_unsupported(data, CHAT_UNSUPPORTED)
        return data

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _unsupported(self):
        check_continue_final_message(self.add_generation_prompt, self.continue_final_message)
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        if self.stream and self.prompt_logprobs is not None:
            raise UnsupportedField("prompt_logprobs", "is not available with stream=true (as in vLLM)")
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def tool_mode(self) -> str | dict:
        """ "none" | "auto" | "required" | a named function's choice as a dict (app/tools.py)."""
        choice = self.tool_choice
        if not self.tools:
            if choice not in (None, "none"):
                raise UnsupportedField("tool_choice", "needs tools")
            return "none"
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in [t.function.name for t in self.tools]:
                raise UnsupportedField("tool_choice", f"names {choice.function.name!r}, which is not one of the tools")
            return choice.model_dump()
        return choice or "auto"

    def tool_dicts(self) -> list[dict] | None:
        """The tools shown to the model (none with tool_choice "none")."""
        if self.tool_mode() == "none":
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools or []]

    def structured(self) -> StructuredOutputs | None:
        """A forced tool call's grammar (tool_choice "required" or a function), or the request's own."""
        own = super().structured()
        tools = self.tool_dicts()
        forced = tools and forced_constraint(tools, self.tool_mode(), self.parallel_tool_calls is not False)
        if forced and own:
            raise UnsupportedField(
                "tool_choice", "forces a tool call: it cannot be combined with another output constraint"
            )
        return forced or own

    def chat(self) -> list[dict]:
        return [m.template_dict() for m in self.messages]

    def echoed(self) -> str:
        """What the reply starts with under `echo` (vLLM's): the final message's text when it is the
        assistant's (as with continue_final_message), else nothing."""
        last = self.messages[-1]
        return (last.text() or "") if self.echo and last.role == "assistant" else ""


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str = Field(..., min_length=1, description="ASCII letters, digits and . _ : - (at most 128)")
    lora_path: str = Field(..., min_length=1, max_length=MAX_PATH_CHARS)

    @field_validator("lora_name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_adapter_name(v)

    @field_validator("lora_path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_adapter_path(v)


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str = Field(..., min_length=1)
    lora_int_id: int | None = None

    @field_validator("lora_name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_adapter_name(v)


# ---- responses --------------------------------------------------------------------------------------
class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict | None = None
    finish_reason: str | None = None
    prompt_logprobs: list[dict | None] | None = None  # vLLM's, when requested


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


def _absent_if_none(v: Any) -> bool:
    return v is None


# an answer's reasoning (app/reasoning.py; only with the ingress's reasoning_parser): vLLM's `reasoning` and
# its older name `reasoning_content` (SGLang's, LiteLLM's), each left out of the JSON when there is none
_REASONING = Field(None, exclude_if=_absent_if_none)


class ChatMessageOut(BaseModel):
    role: str = "assistant"
    content: str | None = ""
    tool_calls: list[dict] | None = None
    reasoning: str | None = _REASONING
    reasoning_content: str | None = _REASONING


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    prompt_logprobs: list[dict | None] | None = None  # vLLM's, when requested


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict] | None = None
    reasoning: str | None = _REASONING
    reasoning_content: str | None = _REASONING


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: dict | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "sloray"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- vLLM's /tokenize and /detokenize -------------------------------------------------------------------
class TokenizeCompletionRequest(BaseModel):
    """A prompt's tokens as /v1/completions would send them to the model."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(BaseModel):
    """A chat's tokens as /v1/chat/completions would send them to the model (with the defaults)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    tools: list[ToolDef] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    _template_kwargs = field_validator("chat_template_kwargs")(check_template_kwargs)

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data):
        refuse_unsupported(data, {"chat_template": (None,)})
        return data

    @model_validator(mode="after")
    def _open_end(self):
        check_continue_final_message(self.add_generation_prompt, self.continue_final_message)
        return self

    def chat(self) -> list[dict]:
        return [m.template_dict() for m in self.messages]

    def tool_dicts(self) -> list[dict] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int] = Field(..., max_length=1 << 20)


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str


# ---- logprobs in the OpenAI formats ------------------------------------------------------------------
MIN_LOGPROB = -9999.0  # -inf is not JSON: vLLM and OpenAI send this instead


def token_namer(decode, as_ids: bool):
    """How logprobs name tokens: `decode` (their text), or vLLM's "token_id:N" with return_tokens_as_token_ids
    (a token whose text alone is not valid UTF-8, such as one byte of a character, is then still told apart)."""
    return (lambda ids: "".join(f"token_id:{t}" for t in ids)) if as_ids else decode


def completion_logprobs(
    ids: list[int], lps: list[TokenLogprobs | None], decode, offset: int = 0, prompt_len: int = 0
) -> dict:
    """Legacy completions `logprobs`: tokens, token_logprobs, top_logprobs (token text -> logprob) and
    text_offset (where each token's text starts, from `offset`). With echo the first `prompt_len` entries
    are the prompt's (the first one None, as vLLM); a prompt token's top_logprobs also hold the token itself."""
    tokens = [decode([t]) for t in ids]
    starts = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset))[: len(tokens)]

    def top(i: int, t: int, lp: TokenLogprobs) -> dict[str, float]:
        d = {decode([a]): max(v, MIN_LOGPROB) for a, v in lp.top}
        if i < prompt_len:
            d.setdefault(tokens[i], max(lp.logprob, MIN_LOGPROB))
        return d

    return {
        "tokens": tokens,
        "token_logprobs": [None if lp is None else max(lp.logprob, MIN_LOGPROB) for lp in lps],
        "top_logprobs": [None if lp is None else top(i, t, lp) for i, (t, lp) in enumerate(zip(ids, lps))],
        "text_offset": starts,
    }


def vllm_prompt_logprobs(ids: list[int], lps: list[TokenLogprobs | None], decode) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: per prompt token None (the first) or {token id: {logprob, rank,
    decoded_token}} for the token itself and the most likely tokens at its position."""
    out: list[dict | None] = []
    for t, lp in zip(ids, lps):
        if lp is None:
            out.append(None)
            continue
        d = {str(t): {"logprob": max(lp.logprob, MIN_LOGPROB), "rank": lp.rank, "decoded_token": decode([t])}}
        for r, (a, v) in enumerate(lp.top, 1):
            d.setdefault(str(a), {"logprob": max(v, MIN_LOGPROB), "rank": r, "decoded_token": decode([a])})
        out.append(d)
    return out


def chat_logprobs(ids: list[int], lps: list[TokenLogprobs], decode) -> dict:
    """Chat `logprobs`: content = one entry per token, with its UTF-8 bytes and its top_logprobs."""

    def entry(t: int, v: float) -> dict:
        text = decode([t])
        return {"token": text, "logprob": v, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            entry(t, lp.logprob) | {"top_logprobs": [entry(a, v) for a, v in lp.top]} for t, lp in zip(ids, lps)
        ]
    }
