"""Requests, sampling parameters and outputs: what flows into the engine and back out of it."""

from __future__ import annotations

import enum
import functools
import math
import time
from dataclasses import dataclass, field

from app.structured import StructuredOutputs

MAX_LOGPROBS = 20  # most likely alternatives per token that a request may ask for (OpenAI's limit)
MAX_CACHE_SALT = 1024  # characters of a cache_salt
# Bounds of the sampling values (SamplingParams.validate): seeds are what torch.Generator takes (64 bits);
# a positive temperature below MIN_TEMPERATURE is raised to it (as vLLM does), so that logits / temperature
# stays finite; the repetition penalty divides or multiplies logits, so it is kept within two decades of 1.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 100.0
REPETITION_PENALTY_RANGE = (0.01, 100.0)
# bad words a request may give (as words, or as token sequences of at most MAX_BAD_WORD_TOKENS): enough for any
# word list, small enough that building a request's word index stays a millisecond's work for the engine
MAX_BAD_WORDS, MAX_BAD_WORD_TOKENS = 2048, 64


def truncated_prompt(ids: list[int], keep: int | None, max_model_len: int) -> list[int]:
    """vLLM's truncate_prompt_tokens: the last `keep` token ids of a prompt (-1: the last max_model_len; None:
    all of them)."""
    if keep is None:
        return ids
    keep = max_model_len if keep == -1 else keep
    return ids[-keep:] if len(ids) > keep else ids


@dataclass
class TokenLogprobs:
    """One token's log-probability and the `logprobs` most likely tokens there (id, logprob), best first.
    `rank`: the token's rank in that distribution (1 = most likely), given for prompt tokens."""

    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
    rank: int | None = None


@dataclass
class SamplingParams:
    """As in vLLM. temperature 0 = greedy; top_k <= 0, top_p = 1 and min_p = 0 disable those filters (min_p:
    tokens less likely than min_p times the most likely one, after temperature, are dropped before top-k).
    max_tokens 0: the prompt is only prefilled (for its `prompt_logprobs`); no token is generated."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] | str | None = None
    include_stop_str_in_output: bool = False  # the stop string that ended the output stays in its text
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    detokenize: bool = True  # False: token ids only (no text, no stop strings), as in vLLM
    skip_special_tokens: bool = True  # False: special tokens' text stays in the output text, as in vLLM
    truncate_prompt_tokens: int | None = None  # the prompt's last k tokens (-1: max_model_len), as vLLM
    # Penalties and biases on the logits, before temperature / top-k / top-p (greedy too), as vLLM:
    # repetition (HF / CTRL: a logit of a token seen in the prompt or output is divided by it if positive,
    # else multiplied), then frequency (minus it times the token's count in the output) and presence
    # (minus it once if the token is in the output), then logit_bias (token id -> added value).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    # Log-probabilities of each output token (raw model distribution, before penalties and temperature, as
    # vLLM's default) and of the `logprobs` most likely tokens at its position; None: not computed.
    logprobs: int | None = None
    # Log-probabilities of every prompt token after the first (log-softmax of the raw logits at the
    # position before it, as vLLM's prompt_logprobs), with the `prompt_logprobs` most likely tokens there.
    prompt_logprobs: int | None = None
    # No EOS (unless ignore_eos) and no stop_token_ids are sampled, and stop strings are not checked,
    # before the output has min_tokens tokens (vLLM's min_tokens).
    min_tokens: int = 0
    # vLLM's allowed_token_ids: only these token ids are ever sampled (None: any).
    allowed_token_ids: list[int] | None = None
    # vLLM's bad_words: a word is never generated. The engine tokenizes each (as it starts the text and, when
    # that gives as many tokens and another first one, after a space) into bad_words_ids; a token sequence
    # there has its last token masked whenever the output ends with the rest of it (a one-token word always).
    # The output alone is matched, not the prompt, as vLLM.
    bad_words: list[str] | None = None
    bad_words_ids: list[list[int]] | None = None
    # The output constrained to a JSON schema / JSON object / regex / choice / grammar (app/structured.py):
    # a token bitmask applied in the sampler; EOS (allowed once the grammar is complete) ends it, even
    # with ignore_eos.
    structured: StructuredOutputs | None = None
    # vLLM's request priority: with SchedulerConfig.queue_order "priority", waiting requests are admitted lowest
    # value first (then oldest first) and a request is preempted before any of higher priority; 0 otherwise.
    priority: int = 0
    # vLLM's cache_salt: a request reuses cached prefix pages (and its pages are reused) only among requests of
    # the same salt (and adapter), so tenants given different salts cannot time each other's prompts.
    cache_salt: str | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        if isinstance(self.temperature, (int, float)) and 0 < self.temperature < MIN_TEMPERATURE:
            self.temperature = MIN_TEMPERATURE
        if self.logit_bias is not None:
            try:
                self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except (TypeError, ValueError, AttributeError):
                raise ParamError(
                    "logit_bias", f"logit_bias must map token ids to numbers, got {self.logit_bias!r}"
                ) from None
        self.validate()
        self._validate_extensions()

    def _validate_extensions(self) -> None:
        """prompt_logprobs, truncate_prompt_tokens, min_tokens, allowed_token_ids and the bad words."""
        if self.prompt_logprobs is not None and not (
            isinstance(self.prompt_logprobs, int) and 0 <= self.prompt_logprobs <= MAX_LOGPROBS
        ):
            raise ParamError(
                "prompt_logprobs",
                f"prompt_logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.prompt_logprobs!r}",
            )
        k = self.truncate_prompt_tokens
        if k is not None and not (isinstance(k, int) and (k == -1 or k >= 1)):
            raise ParamError(
                "truncate_prompt_tokens",
                f"truncate_prompt_tokens must be -1 (the maximum context length) or >= 1, got {k!r}",
            )
        if not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ParamError(
                "min_tokens",
                f"min_tokens must be an integer in [0, max_tokens={self.max_tokens}], got {self.min_tokens!r}",
            )
        a = self.allowed_token_ids
        if a is not None and not (isinstance(a, list) and a and _token_ids(a)):
            raise ParamError(
                "allowed_token_ids", f"allowed_token_ids must be a non-empty list of token ids >= 0, got {str(a)[:200]}"
            )
        c = self.cache_salt
        if c is not None and not (isinstance(c, str) and 0 < len(c) <= MAX_CACHE_SALT):
            raise ParamError(
                "cache_salt", f"cache_salt must be a non-empty string of at most {MAX_CACHE_SALT} characters"
            )
        w = self.bad_words
        if w is not None and not (isinstance(w, list) and all(isinstance(x, str) and x.strip() for x in w)):
            raise ParamError("bad_words", f"bad_words must be a list of words (non-blank strings), got {str(w)[:200]}")
        seqs = self.bad_words_ids
        if seqs is not None and not (
            isinstance(seqs, list) and all(isinstance(q, list) and _token_ids(q) for q in seqs)
        ):
            raise ParamError("bad_words_ids", f"bad_words_ids must be a list of token id lists, got {str(seqs)[:200]}")
        lens = [len(q) for q in seqs or []]
        if lens and not 0 < min(lens) <= max(lens) <= MAX_BAD_WORD_TOKENS:
            n = 0 if min(lens) == 0 else max(lens)
            raise ParamError(
                "bad_words", f"bad_words: a word must be 1 to {MAX_BAD_WORD_TOKENS} tokens long, one is {n}"
            )
        if w is not None and len(w) > MAX_BAD_WORDS:
            raise ParamError("bad_words", f"bad_words: at most {MAX_BAD_WORDS} words, got {len(w)}")
        if seqs is not None and len(seqs) > 2 * MAX_BAD_WORDS:  # a word gives up to two token sequences
            raise ParamError(
                "bad_words_ids", f"bad_words_ids: at most {2 * MAX_BAD_WORDS} token sequences, got {len(seqs)}"
            )

    @functools.cached_property
    def bad_words_index(self) -> tuple[list[int], dict[tuple[int, ...], list[int]], int]:
        """bad_words_ids for the sampler, built once: (the one-token words, {the rest of a longer word: its last
        tokens}, the longest such rest), so that a step looks up the output's last 1..longest tokens instead of
        comparing every word."""
        single: list[int] = []
        ends: dict[tuple[int, ...], list[int]] = {}
        for q in self.bad_words_ids or []:
            if len(q) == 1:
                single.append(q[0])
            else:
                ends.setdefault(tuple(q[:-1]), []).append(q[-1])
        return single, ends, max((len(k) for k in ends), default=0)

    @property
    def needs_history(self) -> bool:
        """Whether the runner keeps the request's tokens so far (penalties, grammar)."""
        return self.penalized or self.structured is not None

    @property
    def penalized(self) -> bool:
        """Whether sampling needs the request's tokens so far (penalties, bad words) or changes logits (bias,
        allowed tokens)."""
        return (
            self.presence_penalty != 0
            or self.frequency_penalty != 0
            or self.repetition_penalty != 1
            or bool(self.logit_bias)
            or self.allowed_token_ids is not None
            or bool(self.bad_words_ids)
        )

    def validate(self) -> None:
        """Raises ValueError for a value the sampler cannot honour. Everything accepted here samples without
        error (tests/test_sampling.py drives the sampler with extreme values of every field)."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise ParamError("max_tokens", f"max_tokens must be a non-negative integer, got {self.max_tokens!r}")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE):
            raise ParamError("temperature", f"temperature must be in [0, {MAX_TEMPERATURE}], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ParamError("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int):
            raise ParamError("top_k", f"top_k must be an integer, got {self.top_k!r}")
        if not 0 <= self.min_p <= 1:
            raise ParamError("min_p", f"min_p must be in [0, 1], got {self.min_p}")
        if self.seed is not None and not (isinstance(self.seed, int) and SEED_MIN <= self.seed <= SEED_MAX):
            raise ParamError(
                "seed", f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}] (64 bits), got {self.seed!r}"
            )
        if self.stop and not self.detokenize:
            raise ParamError("stop", "stop strings need detokenize=True")
        if not (isinstance(self.priority, int) and SEED_MIN <= self.priority <= SEED_MAX):
            raise ParamError("priority", f"priority must be a 64-bit integer, got {self.priority!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ParamError(name, f"{name} must be in [-2, 2], got {getattr(self, name)}")
        lo, hi = REPETITION_PENALTY_RANGE
        if not lo <= self.repetition_penalty <= hi:
            raise ParamError(
                "repetition_penalty", f"repetition_penalty must be in [{lo}, {hi}], got {self.repetition_penalty}"
            )
        if self.logprobs is not None and not (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ParamError("logprobs", f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        for tok, bias in (self.logit_bias or {}).items():
            if tok < 0 or not -100.0 <= bias <= 100.0:
                raise ParamError(
                    "logit_bias", f"logit_bias {tok}: {bias} needs a token id >= 0 and a bias in [-100, 100]"
                )


class ParamError(ValueError):
    """A SamplingParams value the sampler cannot honour; `param` names the field (over HTTP: a 400 whose `param`
    it is, as OpenAI's errors)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _token_ids(xs: list) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in xs)


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    adapter: str | None
    params: SamplingParams
    prompt: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the pool or computed by a launched step
    num_kv_confirmed: int = 0  # of those, computed by steps that returned their results (with prefix caching)
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache when first admitted
    # output tokens sampled by launched steps whose results the engine has not read yet (asynchronous
    # scheduling: at most 1; always 0 between synchronous steps)
    num_pending: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" (then `error` says why)
    error: str | None = None
    output_logprobs: list[TokenLogprobs] = field(default_factory=list)  # when params.logprobs is set
    # when params.prompt_logprobs is set: [None] (the first prompt token has none) + one per prompt token
    # computed so far; the scheduler asks the runner for the next ones as the prompt is prefilled
    prompt_logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    stop_ids_banned: list[int] = field(default_factory=list)  # masked while the output is < min_tokens
    text: str = ""  # detokenized output (stop string removed)
    emitted_chars: int = 0  # text already returned by streaming outputs
    emitted_tokens: int = 0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    num_preemptions: int = 0

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, n: int) -> list[int]:
        """all_token_ids[start:start + n] without building the whole list (decode steps take one token)."""
        p = len(self.prompt_token_ids)
        if start >= p:
            return self.output_token_ids[start - p : start - p + n]
        head = self.prompt_token_ids[start : start + n]
        return head + self.output_token_ids[: n - len(head)] if len(head) < n else head

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def finished(self) -> bool:
        return self.status == RequestStatus.FINISHED


@dataclass
class RequestOutput:
    """One request's news from one step: the `delta_*` since its last output (for streaming); the last
    output (`finished`) also carries the cumulative `token_ids`, `text` and `logprobs` (empty / None in
    the others, so that a step costs nothing per token already generated)."""

    request_id: str
    adapter: str | None
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    delta_token_ids: list[int]
    delta_text: str
    finished: bool
    finish_reason: str | None
    metrics: dict[str, float | None] = field(default_factory=dict)
    logprobs: list[TokenLogprobs] | None = None  # per token of token_ids, when requested
    delta_logprobs: list[TokenLogprobs] | None = None  # per token of delta_token_ids
    # per prompt token (the first is None), when requested: in a request's first output (the step that
    # finished its prompt) and in its last one
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    error: str | None = None  # finish_reason "error": what failed (this request alone failed)


@dataclass
class ModelOutput:
    """What an executor returns for one step: one token per sequence with `sample` (in order), their
    TokenLogprobs where requested, and prompt-token TokenLogprobs per request id for the sequences that
    asked for them (one per entry of their `prompt_lp_targets`)."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    prompt_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
