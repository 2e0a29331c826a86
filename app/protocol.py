"""OpenAI-compatible request/response schemas (pydantic), as vLLM serves them.

In:  JSON bodies of /v1/completions, /v1/chat/completions, /v1/load_lora_adapter, /v1/unload_lora_adapter.
Out: response and streaming-chunk objects, model cards, error objects `{"error": {...}}`.
`to_sampling_params` maps a request onto the engine's `SamplingParams` (one per choice of `n`).
Unknown fields are ignored (as OpenAI clients send extras); supported ones are validated (400 when bad).
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.lora.adapter import MAX_PATH_CHARS, check_adapter_name, check_adapter_path
from app.request import MAX_LOGPROBS, SamplingParams, TokenLogprobs


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
class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = -1
    n: int = Field(1, ge=1, le=64)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

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
        return self

    def to_sampling_params(self, max_tokens: int, index: int = 0) -> SamplingParams:
        """The engine's parameters for choice `index` (seeded choices get distinct seeds)."""
        seed = None if self.seed is None else self.seed + index
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=seed,
            stop=self.stop,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=self.logit_bias,
            logprobs=self.num_logprobs(),
        )

    def num_logprobs(self) -> int | None:
        """Alternatives per token to return with log-probabilities (None: no logprobs)."""
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None

    def num_logprobs(self) -> int | None:
        return self.logprobs

    @model_validator(mode="after")
    def _unsupported(self):
        if self.echo:
            raise ValueError("echo is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: one string, a list of strings, token ids, or a list of token id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list | None = None
    response_format: dict | None = None

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @model_validator(mode="after")
    def _unsupported(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        if self.tools:
            raise ValueError("tools are not supported")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ValueError(
                f"response_format {self.response_format.get('type')!r} is not supported (only 'text': "
                "output is not constrained)"
            )
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def chat(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


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
class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ChatMessageOut(BaseModel):
    role: str = "assistant"
    content: str = ""


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


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None


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


# ---- logprobs in the OpenAI formats ------------------------------------------------------------------
def completion_logprobs(ids: list[int], lps: list[TokenLogprobs], decode, offset: int = 0) -> dict:
    """Legacy completions `logprobs`: tokens, token_logprobs, top_logprobs (token text -> logprob) and
    text_offset (where each token's text starts, from `offset`)."""
    tokens = [decode([t]) for t in ids]
    starts = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset))[: len(tokens)]
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{decode([t]): v for t, v in lp.top} for lp in lps],
        "text_offset": starts,
    }


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
