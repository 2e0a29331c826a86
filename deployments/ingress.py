"""The OpenAI-compatible HTTP ingress (FastAPI via `@serve.ingress`).

In:  HTTP requests; handles of the TP-group deployments (one per group, injected by `build_app`).
Out: OpenAI responses / SSE streams, error objects, `/v1/models[/{id}]`, vLLM's `/tokenize`, `/detokenize` and
     `/version`, `/health`, `/metrics`.

Per request: the guard (deployments/guard.py, in front of the FastAPI app: the key of the route's role
(401 / 403) and the body size (413), both before the body is read) -> parse and validate (400) -> resolve
`model` to the base model or an adapter (404) -> request limits (prompts x n, prompt length before
tokenizing, total tokens: 400) -> tokenize (bodies over 16 KB in a worker thread: the event loop keeps
serving other requests and /health; chat template for chat) -> choose a group (adapter clustering,
deployments/routing.py) -> admission control (429 + Retry-After when the predicted time to first token
misses `admission_ttft_slo_s`) -> stream from the group (`generate`, through `.options(stream=True)`). The
response starts once a choice has its first tokens; when the group's first answer is an error instead (a
refusal, an early abort: 429 + Retry-After, a group that died: another group is tried), that is the answer.
A background task polls every group's `stats()` a few times a second; routing, admission, `/v1/models`
and `/metrics` read that shared state, so every ingress replica sees the whole service.

Model ids: the base model's `served_model_name`, an adapter's name, or Ray Serve LLM's `base_model:adapter`.

Readiness: a group is "starting" until it first answers a stats poll (its replica is still building and
warming up its engine). While no group can serve, `/health` and every route that needs a group answer 503 +
`Retry-After` at once (nothing waits on a group that is not up); once every group has answered, the replica
logs one line with the service's URL, the base model and the number of adapters. Serve's access log lines of
`access_log_exclude` routes (`/health` and `/metrics` by default: probes and scrapes) are dropped in this
replica's logger.
"""

# No `from __future__ import annotations` here: FastAPI must see the route annotations as classes
# (with postponed annotations Serve's ingress wrapper loses them).
import asyncio
import collections
import importlib.metadata
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeGuard

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.lora.adapter import AdapterError, check_adapter_name, confine_path
from app.reasoning import ReasoningSplitter, split_reasoning
from app.request import RequestOutput
from app.tokenizer import Tokenizer
from app.tools import StreamingToolParser, ToolCall, forced_calls, function_names, parse_tool_calls, tool_format
from deployments.config import IngressSettings
from deployments.guard import AccessPolicy, RequestGuard
from deployments.metrics import ServiceCollector
from deployments.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
    UnloadLoRAAdapterRequest,
    UnsupportedField,
    UsageInfo,
    VersionResponse,
    chat_logprobs,
    completion_logprobs,
    error_body,
    generation_defaults,
    random_id,
    token_namer,
    vllm_prompt_logprobs,
)
from deployments.responses import ResponseEvents, ResponseShell, ResponsesRequest, chat_body, response_object
from deployments.routing import Decision, GroupState, Router, request_start_age_s
from deployments.subscription import RequestStream, Subscription

logger = logging.getLogger("ray.serve")


class IngressConfig(IngressSettings):
    """What the ingress needs: its settings and what build_app derives from the engine's config and model."""

    served_model_name: str
    model_path: str
    tokenizer_path: str
    max_model_len: int = Field(description="the engine's (EngineConfig.max_model_len of the model)")
    allowed_adapter_roots: list[str] = Field(default_factory=list, description="the engine's lora roots")
    ingress_replicas: int = Field(1, ge=1, description="replicas of this ingress (BuildArgs.num_ingress_replicas)")
    priority_scheduling: bool = Field(False, description="the engine's queue_order is priority (requests' priority)")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


def _error_response(status: int, message: str, param: str | None = None, headers: Mapping[str, str] | None = None):
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


# Every error is an OpenAI error object; the schema says so (and declaring "4XX" keeps FastAPI from
# documenting its 422, which this service never answers: validation errors are 400).
ERROR_RESPONSES: dict[int | str, dict] = {
    400: {
        "model": ErrorResponse,
        "description": "invalid request (a body that does not validate, too large a request)",
    },
    "4XX": {
        "model": ErrorResponse,
        "description": "401 missing or wrong key, 403 a key of another role, 404 unknown model or adapter, "
        "405 wrong method, 413 body over max_body_bytes, 429 overloaded (with Retry-After)",
    },
    "5XX": {"model": ErrorResponse, "description": "the service failed, or no group can serve (503)"},
}
api = FastAPI(title="sloray", description="OpenAI-compatible multi-LoRA serving", responses=ERROR_RESPONSES)


@api.exception_handler(APIError)
async def _api_error(_: Request, e: APIError):
    return _error_response(e.status, e.message, e.param, e.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, e: RequestValidationError):
    parts, param = [], None
    for err in e.errors():
        loc = err.get("loc", ())
        if err.get("type") == "json_invalid":  # loc is ("body", character position)
            why = err.get("ctx", {}).get("error", "decode error")
            parts.append(f"the body is not valid JSON: {why} at character {loc[-1]}")
            continue
        where = ".".join(str(x) for x in loc if x != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        if param is None and len(loc) > 1 and isinstance(loc[1], str):
            param = loc[1]  # the top-level field of the first error that names one
    # a field this server knows but does not implement names itself (deployments/protocol.py UnsupportedField)
    param = next((p for err in e.errors() if (p := getattr(err.get("ctx", {}).get("error"), "param", None))), param)
    return _error_response(400, "; ".join(parts[:5]) or "invalid request", param)


@api.exception_handler(Exception)
async def _internal_error(_: Request, e: Exception):
    """Whatever else fails reaches the client as an OpenAI error object, not plain text."""
    logger.error("request failed: %r", e)
    return _error_response(500, f"internal error: {type(e).__name__}")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException):
    return _error_response(e.status_code, str(e.detail), headers=e.headers)  # 405 keeps its Allow header


def _done(result: object) -> TypeGuard[dict]:
    """A group's answer to add_adapter / remove_adapter that is not a refusal or an exception."""
    return isinstance(result, dict) and "error" not in result


UNAVAILABLE_RETRY_AFTER_S = 1  # Retry-After of a 503: another group (or this one, replaced) takes it
STARTING_RETRY_AFTER_S = 5  # Retry-After of a 503 while every group is still starting (warming up)
READY_WAIT_S = 1.0  # a request that comes before any group has answered waits this long for one
# A request body up to this size is tokenized on the event loop (a few ms at most), larger ones in a worker
# thread (a long prompt must not stall the loop): the thread hop costs two event-loop turns, which under a
# flood of small requests queue behind everything else the loop does.
INLINE_TOKENIZE_BYTES = 16384


class QuietRoutes(logging.Filter):
    """Drops Serve's access log records (`serve_access_log`) of the given application routes (matched at the
    end of the record's route, whatever the application's route_prefix)."""

    def __init__(self, routes: list[str]):
        super().__init__()
        self.routes = tuple(r.rstrip("/") for r in routes if r.strip("/"))

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "serve_access_log", False) or not self.routes:
            return True
        route = str(getattr(record, "route", "") or "").split("?")[0].rstrip("/")
        return not route.endswith(self.routes)


class _GroupDown(Exception):
    """A group is dead or unreachable and did not run the request (so it may run elsewhere)."""


def _unavailable(message: str) -> APIError:
    return APIError(503, message, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


def _item_error(item: dict) -> APIError:
    """The client's error for a group's error item that is not a 503 (a refusal, a failed request, or an early
    abort before the request ran: 429 with its `retry_after_s` as Retry-After)."""
    retry = item.get("retry_after_s")
    headers = {"Retry-After": str(retry)} if retry else None
    return APIError(item.get("status", 500), item.get("error", "engine error"), headers=headers)


def _retrieved(f: asyncio.Future) -> None:
    """Marks a future's exception as seen (a choice's first item that nobody awaits after a cancel)."""
    if not f.cancelled():
        f.exception()


async def _items(c: "_Choice"):
    """A choice's items from its group: the first one (awaited since `_launch`), then the rest of its stream."""
    first, c.first = c.first, None
    if first is not None:
        yield await first
    async for out in c.gen:
        yield out


def _cause(e: BaseException) -> BaseException:
    """The user exception behind a Ray task error (Ray re-raises it as a subclass carrying `.cause`)."""
    return getattr(e, "cause", None) or e


def _version() -> str:
    try:
        return importlib.metadata.version("sloray")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that pip did not install
        return "unknown (not installed)"


async def _service_url() -> str:
    """The URL this replica's application answers at, from the Serve controller's view of the instance (the
    HTTP options and the application's route_prefix); "(unknown)" when it cannot be read."""
    try:
        import ray

        app = serve.get_replica_context().app_name
        controller = ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
        details = await controller.get_serve_instance_details.remote()
        http = details.get("http_options") or {}
        prefix = (details.get("applications", {}).get(app) or {}).get("route_prefix") or "/"
        return f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}{prefix}"
    except Exception as e:  # noqa: BLE001 - the line is informative; a Serve without that view is no error
        return f"(unknown: {type(e).__name__})"


@dataclass
class _Choice:
    index: int
    prompt_len: int
    group: str
    gen: RequestStream  # the group's items for this choice
    first: "asyncio.Future | None" = None  # the group's first item, awaited by _launch, not yet absorbed
    text: str = ""
    num_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens its group found in the prefix cache
    released: bool = False  # counted back out of the router's local in-flight
    admitted_at: float = 0.0  # monotonic time of the admission decision
    decision: Decision | None = None  # its admission's predictions (calibrated by the first token)
    start_key: int | None = None  # its Router.open_start key until its first token or its end
    finish_reason: str | None = None
    parts: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # output tokens with logprobs (when requested) ...
    lps: list = field(default_factory=list)  # ... and their TokenLogprobs
    prompt_lps: list | None = None  # the prompt's TokenLogprobs (first None), when requested
    started: bool = False  # a stream chunk of this choice went out (the first carries the prompt's parts)
    lp_sent: int = 0  # of them already in stream chunks
    text_sent: int = 0  # characters already in stream chunks

    def take_logprobs(self) -> tuple[list[int], list, int]:
        """The tokens and logprobs not yet streamed, and the text offset where they start."""
        ids, lps, offset = self.ids[self.lp_sent :], self.lps[self.lp_sent :], self.text_sent
        self.lp_sent = len(self.ids)
        return ids, lps, offset


@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, groups: list[DeploymentHandle], config: IngressConfig | dict):
        self.cfg = config if isinstance(config, IngressConfig) else IngressConfig(**config)
        self.groups = {h.deployment_name: h for h in groups}
        self.subscriptions: dict[str, Subscription] = {}  # one multiplexed stream per group, opened on demand
        self.router = Router(
            list(self.groups),
            eps=self.cfg.routing_eps,
            admission_ttft_slo_s=self.cfg.admission_ttft_slo_s,
            peers=self.cfg.ingress_replicas,
        )
        self.tokenizer = Tokenizer(self.cfg.tokenizer_path)
        self.snapshots: dict[str, dict | None] = dict.fromkeys(self.groups)
        # adapter loads and unloads this replica has made; a group's snapshot lists adapters as of the count
        # when its poll was sent (`_snapshot_edits`), and is not trusted for adapters after a later edit
        self._adapter_edits = 0
        self._snapshot_edits: dict[str, int] = {}
        self._loading: dict[str, asyncio.Future] = {}  # on-demand adapter loads in flight, by name
        # adapters this replica loaded on demand, least recently requested first (max_dynamic_adapters)
        self._dynamic: collections.OrderedDict[str, None] = collections.OrderedDict()
        # a request's unset sampling fields: the model's generation config (IngressSettings.generation_config)
        self.sampling_defaults = (
            generation_defaults(self.cfg.model_path) if self.cfg.generation_config == "auto" else {}
        )
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ServiceCollector(lambda: self.snapshots, self.cfg.served_model_name))
        self.answered: set[str] = set()  # groups that have answered a stats poll (the others are starting)
        self._answer = asyncio.Event()  # set once any group has answered
        self._poller: asyncio.Task | None = None
        self.version = _version()
        if self.cfg.access_log_exclude:
            logging.getLogger("ray.serve").addFilter(QuietRoutes(self.cfg.access_log_exclude))
        try:  # Serve builds the replica inside its event loop: start polling (and the ready line) now
            asyncio.get_running_loop()
            self._start_polling()
        except RuntimeError:  # built outside an event loop: polling starts with the first request
            pass

    # ---- group state -----------------------------------------------------------------------------
    def _start_polling(self) -> None:
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    def _serving(self) -> list[str]:
        """Groups that answered their last poll and are healthy."""
        return [n for n, s in self.snapshots.items() if s and s.get("healthy", True)]

    async def _require_group(self) -> None:
        """Returns once some group can serve; else 503 + Retry-After at once (after at most READY_WAIT_S for
        a first answer): "starting" while groups have not answered yet, "unavailable" when all are down."""
        self._start_polling()
        if not self.answered:
            try:
                await asyncio.wait_for(self._answer.wait(), READY_WAIT_S)
            except TimeoutError:
                pass
        if self._serving():
            return
        starting = sorted(set(self.groups) - self.answered)
        if starting:
            raise APIError(
                503,
                f"the service is starting: group(s) {starting} are still warming up; retry later",
                headers={"Retry-After": str(STARTING_RETRY_AFTER_S)},
            )
        raise _unavailable(f"no healthy group: {sorted(self.groups)}")

    def _poll_due(self, name: str, since_s: float) -> bool:
        """Whether `name` is polled now, `since_s` after its last poll: every stats_poll_interval_s while it has
        work (its last stats or this replica's requests sent since), while it is starting, down or its last poll
        failed, and while this replica's adapter edits are newer than its last stats; else (idle) every
        stats_idle_poll_interval_s."""
        if self.snapshots[name] is None or self._snapshot_edits.get(name) != self._adapter_edits:
            return True
        return not self.router.idle(name) or since_s >= self.cfg.stats_idle_poll_interval_s

    async def _poll_loop(self) -> None:
        """One polling loop per group, so that a group that hangs (being replaced) delays no other's state;
        each wakes every stats_poll_interval_s and polls when `_poll_due`."""

        async def loop(name: str, h: DeploymentHandle):
            last = -math.inf
            while True:
                now = time.monotonic()
                if self._poll_due(name, now - last):
                    last = now
                    await self._poll_group(name, h)
                await asyncio.sleep(self.cfg.stats_poll_interval_s)

        await asyncio.gather(*(loop(n, h) for n, h in self.groups.items()))

    async def _poll_once(self) -> None:
        """A fresh poll of the groups that have answered before (a starting group is left to the background
        loop: it would only make the caller wait for the poll's timeout)."""
        await asyncio.gather(*(self._poll_group(n, h) for n, h in self.groups.items() if n in self.answered))

    async def _poll_group(self, name: str, h: DeploymentHandle) -> None:
        edits = self._adapter_edits
        prev = self.snapshots[name]  # its adapter table is reused when the group's has not changed since
        known = prev["adapters_version"] if prev else None
        try:
            s = await asyncio.wait_for(
                self._await(h.stats.remote(adapters_version=known)), self.cfg.stats_poll_timeout_s
            )
        except Exception as e:  # noqa: BLE001 - an unreachable group is marked down, not fatal
            if name in self.answered:
                logger.warning("group %s did not answer stats(): %r", name, e)
            else:
                logger.info("group %s is still starting (no answer to stats() yet)", name)
            self.snapshots[name] = None
            self.router.mark_unhealthy(name)
            return
        if "adapters" not in s and prev is not None:  # left out: unchanged since `prev`
            s["adapters"] = prev["adapters"]
        self.snapshots[name] = s
        self._snapshot_edits[name] = edits
        self.router.update(GroupState.from_stats(s))
        if name not in self.answered:
            self.answered.add(name)
            self._answer.set()
            if self.answered == set(self.groups):
                await self._log_ready(s)

    async def _log_ready(self, s: dict) -> None:
        """The one line that says the service is up (every group has answered once)."""
        tp = s.get("tensor_parallel_size", 1)
        logger.info(
            "sloray is ready at %s: base model %r, %d adapter(s), %d group(s) of tensor_parallel_size %d",
            await _service_url(),
            self.cfg.served_model_name,
            len(s.get("adapters", {})),
            len(self.groups),
            tp,
        )

    @staticmethod
    async def _await(resp):
        return await resp

    async def _adapters(self, fresh: bool = False) -> dict[str, dict]:
        """Registered adapters: from the last poll (unless this replica loaded or unloaded an adapter since
        that poll was sent: an adapter it unloaded on demand must not look loaded), or asked from a serving
        group (after a miss, or for listings); 503 at once while no group serves."""
        if not fresh:
            for name, s in self.snapshots.items():
                if s and self._snapshot_edits.get(name) == self._adapter_edits:
                    return s["adapters"]
        await self._require_group()
        errors = []
        for name in self._serving():
            try:
                return await asyncio.wait_for(
                    self._await(self.groups[name].list_adapters.remote()), self.cfg.stats_poll_timeout_s
                )
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        raise _unavailable(f"no group answered: {errors[:1]!r}")

    def __serve_build_asgi_app__(self):
        """Serve calls this once the replica is built: the routes' app (bound to this replica by
        `@serve.ingress`) behind this replica's guard, which checks keys and body size before any parsing."""
        c = self.cfg
        policy = AccessPolicy.from_lists(c.api_keys, c.admin_api_keys, c.metrics_api_keys, c.metrics_open)
        if policy.open:
            logger.warning(
                "no API keys are configured: every route (adapter loading included) is open; keep the HTTP "
                "listener private (http_options host 127.0.0.1) or set api_keys and admin_api_keys"
            )
        return RequestGuard(self.app, policy, self.cfg.max_body_bytes)  # type: ignore[attr-defined]  # @serve.ingress

    # ---- helpers ---------------------------------------------------------------------------------
    async def _resolve_model(self, model: str | None, load: bool = False) -> str | None:
        """None for the base model (also when `model` is None), else the adapter's name, for an adapter's
        name or Ray Serve LLM's `base_model:adapter`; 404 for an unknown model."""
        return (await self._find_model(model, load))[0]

    async def _find_model(self, model: str | None, load: bool = False) -> tuple[str | None, dict | None]:
        """(adapter name, its registry entry) as `_resolve_model`; (None, None) for the base model. `load`
        (the generation routes): an adapter of dynamic_lora_loading_path that is not loaded yet is loaded."""
        base = self.cfg.served_model_name
        if model is None or model == base:
            return None, None
        short = model[len(base) + 1 :] if model.startswith(base + ":") else None
        for fresh in (False, True):
            adapters = await self._adapters(fresh=fresh)
            for name in (model, short):
                if name in adapters:
                    if load and name in self._dynamic:
                        self._dynamic.move_to_end(name)
                    return name, adapters[name]
        if load and self.cfg.dynamic_lora_loading_path:
            name = short or model
            entry = await self._load_on_demand(name)
            if entry is not None:
                return name, entry
        raise APIError(
            404,
            f"the model {model!r} does not exist (neither the base model {base!r}, nor a loaded adapter, "
            f"nor '{base}:<adapter>')",
            "model",
        )

    async def _load_on_demand(self, name: str) -> dict | None:
        """Ray Serve LLM's dynamic LoRA loading: the registry entry of adapter `name` once loaded from
        `dynamic_lora_loading_path/name`, or None when there is no such adapter directory (a 404 then). One
        load per name however many requests wait for it; a bad adapter is the requests' 400 (param model)."""
        try:
            check_adapter_name(name)
        except AdapterError:
            return None
        path = Path(self.cfg.dynamic_lora_loading_path or "") / name
        if not (path / "adapter_config.json").is_file():
            return None
        load = self._loading.get(name)
        if load is None:
            load = self._loading[name] = asyncio.ensure_future(self._make_room_and_load(name, str(path)))
            load.add_done_callback(lambda _: self._loading.pop(name, None))
        await asyncio.shield(load)  # a waiting request that goes away does not cancel the others' load
        return (await self._adapters(fresh=True)).get(name)

    async def _make_room_and_load(self, name: str, path: str) -> None:
        """Loads `name` on demand after unloading, while this replica holds max_dynamic_adapters of them, the
        least recently requested one that no running request uses (none: loaded beyond the limit, logged)."""
        cap = self.cfg.max_dynamic_adapters
        while cap is not None and len(self._dynamic) >= cap:
            for old in list(self._dynamic):
                try:
                    await self._unload_everywhere(old, "model")
                except APIError as e:
                    if e.status == 404:  # unloaded by someone else meanwhile
                        del self._dynamic[old]
                        break
                    continue  # in use: the next least recently requested
                del self._dynamic[old]
                logger.info("adapter %r unloaded to make room for %r (max_dynamic_adapters=%d)", old, name, cap)
                break
            else:
                logger.warning("max_dynamic_adapters=%d: every adapter loaded on demand is in use; %r is loaded "
                               "beyond the limit", cap, name)  # fmt: skip
                break
        await self._load_everywhere(name, path, "model", True)
        self._dynamic[name] = None
        logger.info("adapter %r loaded on demand from %s", name, path)

    def _check_prompt_sizes(self, num_prompts: int, n: int, text_chars: list[int], param: str) -> None:
        """Cheap limits, before any tokenizing: prompts x n, and texts too long for the context whatever
        their tokens (tokenizing costs ~200 bytes of memory per character)."""
        if num_prompts * n > self.cfg.max_choices_per_request:
            raise APIError(
                400,
                f"{num_prompts} prompt(s) x n={n} is {num_prompts * n} sequences, more than the limit of "
                f"{self.cfg.max_choices_per_request} per request",
                "n" if num_prompts == 1 else param,
            )
        for chars in text_chars:
            if self.tokenizer.surely_longer_than(chars, self.cfg.max_model_len):
                raise APIError(
                    400,
                    f"the prompt has {chars} characters, more than any prompt within this model's maximum "
                    f"context length of {self.cfg.max_model_len} tokens can have",
                    param,
                )

    async def _tokenize(
        self, body, encoded: Iterable[list[int]], default_max: int | None, request: Request
    ) -> list[list[int]]:
        """Runs `encoded` (a generator that tokenizes one prompt per item) in a worker thread, so that the
        event loop goes on serving while a long prompt is encoded, or inline when the request's body is
        at most INLINE_TOKENIZE_BYTES (by its Content-Length). Each prompt is cut to the request's
        `truncate_prompt_tokens` and checked against the context as soon as it is encoded, and the running
        total (prompt tokens + max_tokens of every choice) against `max_request_tokens`: a request stops
        costing at its first prompt over a limit."""

        def run() -> list[list[int]]:
            prompts, total = [], 0
            for whole in encoded:
                ids = body.truncated(whole, self.cfg.max_model_len)
                total += body.n * (len(ids) + self._max_tokens(body.max_tokens, len(ids), default_max))
                if total > self.cfg.max_request_tokens:
                    raise APIError(
                        400,
                        f"the request asks for more than {self.cfg.max_request_tokens} tokens (prompt tokens + "
                        "max_tokens over its prompts x n), the limit per request (max_request_tokens)",
                        "max_tokens",
                    )
                prompts.append(ids)
            return prompts

        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) <= INLINE_TOKENIZE_BYTES:
            return run()
        return await asyncio.to_thread(run)

    def _max_tokens(self, requested: int | None, prompt_len: int, default: int | None) -> int:
        limit = self.cfg.max_model_len
        room = limit - prompt_len
        if room <= 0:
            raise APIError(
                400,
                f"the prompt has {prompt_len} tokens; this model's maximum context length is {limit} tokens "
                "(prompt and output together), which leaves no room for output",
            )
        max_tokens = requested if requested is not None else (default if default is not None else room)
        if max_tokens > room:
            raise APIError(
                400,
                f"this model's maximum context length is {limit} tokens; the prompt has {prompt_len} tokens, "
                f"so max_tokens can be at most {room} (it is {max_tokens})",
                "max_tokens",
            )
        return max_tokens

    def _received(self, request: Request) -> float:
        """When the request reached the service (time.monotonic() scale): now, or earlier by the age of
        the load balancer's `request_start_header` stamp, so that admission counts the time it queued in
        front of this handler (the balancer, Serve's proxy, this replica's event loop)."""
        now = time.monotonic()
        header = self.cfg.request_start_header
        if not header:
            return now
        return now - request_start_age_s(request.headers.get(header), time.time())

    async def _start(
        self, body, prompts: list[list[int]], adapter: str | None, default_max: int | None, received: float
    ):
        """Routes, admits and starts every choice (len(prompts) x n); returns them once the request has started
        (a choice has its first tokens: `_launch`), so that a request refused or dropped before it ran gets its
        own status (400, 404, 429 + Retry-After), and one whose group died before it started goes to another."""
        n = body.n
        params = []
        if body.priority and not self.cfg.priority_scheduling:  # vLLM's answer to the same request
            raise APIError(400, f"got priority {body.priority}, but priority scheduling is not enabled "
                           "(engine: {scheduler: {queue_order: priority}})", "priority")  # fmt: skip
        # bad_words tokenized here, once for every choice, not on the group's engine thread
        words = body.bad_words
        bad_words_ids = await asyncio.to_thread(self.tokenizer.word_token_ids, words) if words else None
        for ids in prompts:
            if not ids:
                raise APIError(400, "the prompt is empty", "prompt")
            max_tokens = self._max_tokens(body.max_tokens, len(ids), default_max)
            try:
                choice = [body.to_sampling_params(max_tokens, j, self.sampling_defaults) for j in range(n)]
                if bad_words_ids is not None:
                    choice = [replace(p, bad_words=None, bad_words_ids=bad_words_ids) for p in choice]
            except ValueError as e:
                raise APIError(400, str(e), getattr(e, "param", None)) from None
            params.append(choice)
        await self._require_group()
        tried: set[str] = set()
        while True:
            starting = set(self.groups) - self.answered
            group = self.router.choose(adapter, n=len(prompts) * n, exclude=tried | starting)
            if group is None:
                raise _unavailable(f"no group can take the request (tried {sorted(tried)})")
            decision = self.router.admit(group, sum(len(p) for p in prompts) * n, elapsed_s=time.monotonic() - received)
            if not decision.admitted:
                self.groups[group].note_rejected.remote(len(prompts) * n)
                raise APIError(
                    429,
                    f"overloaded: predicted time to first token {decision.predicted_ttft_s:.3f}s "
                    f"exceeds the SLO of {self.cfg.admission_ttft_slo_s}s; retry later",
                    headers={"Retry-After": str(decision.retry_after_s)},
                )
            try:
                return await self._launch(group, prompts, params, adapter, decision)
            except _GroupDown as e:  # nothing ran there: try another group
                logger.warning("group %s is down, retrying the request elsewhere: %s", group, e)
                self.router.mark_unhealthy(group)
                tried.add(group)

    async def _launch(
        self, group: str, prompts: list[list[int]], params, adapter: str | None, decision: Decision
    ) -> list["_Choice"]:
        """Starts every choice on `group` (each one's first item is awaited in `_Choice.first`) and returns
        once one choice has its first tokens. Raises, cancelling every choice, when the first items to come
        are errors: _GroupDown when the group is dead or unreachable (nothing ran: the caller tries another),
        APIError when it refuses or drops the request (400, 404, early abort: 429 + Retry-After)."""
        try:
            sub = await self._subscription(group)
        except Exception as e:  # noqa: BLE001 - the group cannot be reached: nothing ran
            raise _GroupDown(repr(_cause(e))) from None
        base = random_id("req")
        choices, requests = [], []
        for i, ids in enumerate(prompts):
            for j, p in enumerate(params[i]):
                index = i * len(params[i]) + j
                rid = f"{base}-{index}"
                c = _Choice(
                    index=index,
                    prompt_len=len(ids),
                    group=group,
                    gen=sub.stream(rid),
                    admitted_at=time.monotonic(),
                    decision=decision,
                    start_key=self.router.open_start(group),
                )
                self.router.sent(group, len(ids))
                requests.append((rid, ids, p))
                choices.append(c)
        sub.start(requests, adapter)
        firsts = []
        for c in choices:
            c.first = f = asyncio.ensure_future(c.gen.__anext__())
            f.add_done_callback(_retrieved)
            firsts.append(f)
        # The request has started once one choice has its first tokens; the other choices' first items are
        # read by _collect / _stream (a choice that waits for a seat does not hold back the others' tokens).
        try:
            done, _ = await asyncio.wait(firsts, return_when=asyncio.FIRST_COMPLETED)
            items = [f.result() for f in done]
        except Exception as e:  # noqa: BLE001 - the replica is gone or unreachable
            self._cancel(choices)
            raise _GroupDown(repr(_cause(e))) from None
        except BaseException:
            self._cancel(choices)
            raise
        if any(isinstance(i, RequestOutput) for i in items):
            return choices
        first = items[0]  # an error item before any tokens: the request did not start
        assert isinstance(first, dict)
        self._cancel(choices)
        if first.get("status") == 503:
            raise _GroupDown(first.get("error", "group unavailable"))
        raise _item_error(first)

    async def _subscription(self, group: str) -> Subscription:
        """This replica's open subscription to `group` (a new one when there is none, or it was lost); raises
        when the group does not open one in time."""
        while True:
            sub = self.subscriptions.get(group)
            if sub is None or sub.closed:
                sub = self.subscriptions[group] = Subscription(self.groups[group])
            await sub.wait_open(self.cfg.stats_poll_timeout_s)
            if not sub.closed:  # else it closed (idle) while this waited for it to open: take a new one
                return sub

    def _cancel(self, choices: list[_Choice]) -> None:
        """Stops the choices' streams (the group aborts unfinished requests) and releases them."""
        for c in choices:
            if c.first is not None:
                c.first.cancel()
            if c.finish_reason is None:
                c.gen.cancel()
            if not c.released:
                c.released = True
                self.router.done(c.group, c.prompt_len)
            self._end_start(c)

    def _end_start(self, c: _Choice) -> None:
        if c.start_key is not None:
            self.router.close_start(c.group, c.start_key)
            c.start_key = None

    async def _collect(self, choices: list[_Choice]) -> None:
        async def one(c: _Choice):
            try:
                async for out in _items(c):
                    self._absorb(c, out)
            except APIError:
                raise
            except Exception as e:  # noqa: BLE001 - the group died under a running request
                raise _unavailable(f"group {c.group} failed while running the request: {_cause(e)!r}") from None

        try:
            await asyncio.gather(*(one(c) for c in choices))
        finally:
            self._cancel(choices)

    def _absorb(self, c: _Choice, out) -> str:
        """Applies one streamed item to a choice; returns its new text. The first tokens' arrival calibrates
        admission control (Router.observe_ttft)."""
        if not isinstance(out, RequestOutput):
            if out.get("status", 500) == 503:
                raise _unavailable(out.get("error", "group unavailable"))
            raise _item_error(out)
        if c.num_tokens == 0 and out.delta_token_ids:
            d, actual = c.decision, time.monotonic() - c.admitted_at
            if d is not None:
                self.router.observe_ttft(c.group, d.model_ttft_s, actual, expected_s=d.expected_ttft_s, ahead=d.ahead)
            self._end_start(c)
        c.num_tokens += len(out.delta_token_ids)
        c.cached_tokens = int(out.metrics.get("num_cached_tokens") or c.cached_tokens)
        if out.delta_logprobs is not None:
            c.ids += out.delta_token_ids
            c.lps += out.delta_logprobs
        c.text += out.delta_text
        if out.prompt_logprobs is not None and c.prompt_lps is None:
            c.prompt_lps = out.prompt_logprobs
        if out.finished:
            c.finish_reason = out.finish_reason
            c.text = out.text
        return out.delta_text

    async def _stream(self, choices: list[_Choice], chunk, usage_chunk, running_usage=None):
        """Merges the choices' streams into SSE lines; `chunk(choice, delta_text)` makes one event;
        `running_usage()`: the usage so far, put in every chunk (vLLM's continuous_usage_stats)."""

        def line(event: dict) -> str:
            if running_usage is not None:
                event["usage"] = running_usage()
            return f"data: {json.dumps(event)}\n\n"

        q: asyncio.Queue = asyncio.Queue()

        async def pump(c: _Choice):
            try:
                async for out in _items(c):
                    await q.put((c, out))
            except BaseException as e:  # noqa: BLE001 - forwarded to the client as an error event
                await q.put((c, e))
            finally:
                await q.put((c, None))

        tasks = [asyncio.ensure_future(pump(c)) for c in choices]
        open_ = len(choices)
        try:
            for c in choices:
                first = chunk(c, None)
                if first is not None:
                    yield line(first)
            while open_:
                c, out = await q.get()
                if out is None:
                    open_ -= 1
                    continue
                if isinstance(out, BaseException) or not isinstance(out, RequestOutput):
                    if isinstance(out, dict):
                        status, msg = out.get("status", 500), out.get("error")
                    else:  # the group died under the request
                        status, msg = 503, f"group {c.group} failed while running the request: {_cause(out)!r}"
                    yield f"data: {json.dumps(error_body(status, str(msg)))}\n\n"
                    break
                delta = self._absorb(c, out)
                if delta or out.finished:
                    event = chunk(c, delta)
                    if event is not None:  # None: nothing to send yet (a held-back tool call)
                        yield line(event)
            else:
                if usage_chunk is not None:
                    yield f"data: {json.dumps(usage_chunk())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for t in tasks:
                t.cancel()
            self._cancel(choices)

    # ---- routes ----------------------------------------------------------------------------------
    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest, request: Request):
        received = self._received(request)
        await self._require_group()
        adapter = await self._resolve_model(body.model, load=True)
        texts = body.prompts()
        self._check_prompt_sizes(len(texts), body.n, [len(t) for t in texts if isinstance(t, str)], "prompt")
        encoded = (self.tokenizer.encode(t) if isinstance(t, str) else list(t) for t in texts)
        prompts = await self._tokenize(body, encoded, default_max=16, request=request)
        choices = await self._start(body, prompts, adapter, default_max=16, received=received)
        rid, model, created = random_id("cmpl"), body.model, int(time.time())
        decode = self.tokenizer.decode
        usage = self._usage_for(prompts, body.n)
        n = body.n
        # echo: the prompt as given (token-id prompts, or prompts truncate_prompt_tokens may cut, decoded) before
        # each choice's text
        given = body.truncate_prompt_tokens is None
        echo = [
            (p if isinstance(p, str) and given else decode(ids)) if body.echo else "" for p, ids in zip(texts, prompts)
        ]

        name = token_namer(decode, body.return_tokens_as_token_ids)

        def logprobs(c: _Choice, ids: list[int], lps: list, offset: int = 0, with_prompt: bool = False):
            if body.logprobs is None:
                return None
            if not with_prompt:
                return completion_logprobs(ids, lps, name, offset)
            prompt = prompts[c.index // n]
            plps = c.prompt_lps or [None] * len(prompt)
            return completion_logprobs(prompt + ids, plps + lps, name, offset, prompt_len=len(prompt))

        def prompt_logprobs(c: _Choice):
            """vLLM's field, when asked for by name (echo's logprobs alone go into `logprobs`)."""
            if body.prompt_logprobs is None or c.prompt_lps is None:
                return None
            return vllm_prompt_logprobs(prompts[c.index // n], c.prompt_lps, name)

        if body.stream:

            def chunk(c: _Choice, delta: str | None):
                if delta is None:
                    return None
                ids, lps, offset = c.take_logprobs()
                first, c.started = not c.started, True  # a choice's first chunk carries its prompt
                text = echo[c.index // n] + delta if first else delta
                choice = CompletionChoice(
                    index=c.index,
                    text=text,
                    logprobs=logprobs(c, ids, lps, offset, with_prompt=first and body.echo),
                    finish_reason=c.finish_reason,
                    prompt_logprobs=prompt_logprobs(c) if first else None,
                )
                c.text_sent += len(text)
                return CompletionResponse(id=rid, created=created, model=model, choices=[choice]).model_dump(
                    exclude={"usage"}
                )

            def usage_chunk():
                u = usage(choices)
                return CompletionResponse(id=rid, created=created, model=model, choices=[], usage=u).model_dump()

            return StreamingResponse(
                self._stream(
                    choices,
                    chunk,
                    usage_chunk if body.include_usage else None,
                    (lambda: usage(choices).model_dump()) if body.continuous_usage else None,
                ),
                media_type="text/event-stream",
            )
        await self._collect(choices)
        return CompletionResponse(
            id=rid,
            created=created,
            model=model,
            usage=usage(choices),
            choices=[
                CompletionChoice(
                    index=c.index,
                    text=echo[c.index // n] + c.text,
                    finish_reason=c.finish_reason,
                    logprobs=logprobs(c, c.ids, c.lps, with_prompt=body.echo),
                    prompt_logprobs=prompt_logprobs(c),
                )
                for c in choices
            ],
        )

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest, request: Request):
        """Chat; with `tools` (app/tools.py): the template shows them to the model, tool_choice "auto" parses
        the output in the template's format, "required" and a named function force it by grammar."""
        received = self._received(request)
        await self._require_group()
        adapter = await self._resolve_model(body.model, load=True)
        mode, tools = body.tool_mode(), body.tool_dicts()
        fmt = tool_format(self.tokenizer.chat_template)
        if mode == "auto" and fmt is None:
            raise APIError(
                400,
                "this model's chat template does not show tools to the model, so its output cannot be parsed "
                "for tool calls: use tool_choice 'required' or a named function (the output is then forced)",
                "tool_choice",
            )
        messages, template_kwargs = body.chat(), body.template_kwargs()
        chars = sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))
        self._check_prompt_sizes(1, body.n, [chars], "messages")

        def encoded():
            try:
                ids = self.tokenizer.apply_chat_template(
                    messages,
                    tools=tools,
                    add_generation_prompt=body.add_generation_prompt,
                    template_kwargs=template_kwargs,
                    continue_final_message=body.continue_final_message,
                )
            except Exception as e:  # noqa: BLE001 - a template error is the request's fault
                raise APIError(400, f"chat template failed: {e}", "messages") from None
            yield ids

        prompts = await self._tokenize(body, encoded(), default_max=None, request=request)
        choices = await self._start(body, prompts, adapter, default_max=None, received=received)
        rid, model, created = random_id("chatcmpl"), body.model, int(time.time())
        decode = self.tokenizer.decode
        name = token_namer(decode, body.return_tokens_as_token_ids)  # tokens in logprobs
        usage = self._usage_for(prompts, body.n)
        names = function_names(tools or [])
        forced = mode not in ("none", "auto")
        echoed = body.echoed()
        # reasoning apart from the content (app/reasoning.py), unless the output is constrained from its first
        # token (a grammar or a forced call: the whole answer is the constrained content)
        rp = self.cfg.reasoning_parser if body.structured() is None else None
        tail = decode(prompts[0][-16:]) if rp else ""

        def final(c: _Choice, text: str) -> tuple[str | None, list[ToolCall], str | None]:
            """(content, tool calls, finish reason) of a finished choice's text, its reasoning split off
            already (as vLLM: "tool_calls" when the model called tools, except for a named function,
            whose call is forced)."""
            if mode == "none":
                return (text or None) if rp else text, [], c.finish_reason
            content, calls = (None, forced_calls(text, mode)) if forced else parse_tool_calls(text, fmt, names)
            if not calls:
                return (text or None) if rp else text, [], c.finish_reason
            named = isinstance(mode, dict)
            return content, calls, "tool_calls" if c.finish_reason == "stop" and not named else c.finish_reason

        if body.stream:
            parsers = {c.index: StreamingToolParser(fmt, forced) for c in choices} if mode != "none" else {}
            splitters = {c.index: ReasoningSplitter(rp, tail) for c in choices} if rp else {}

            def chunk(c: _Choice, delta: str | None):
                if delta is None:  # the first chunk: the role (and the echoed final message)
                    return self._chat_chunk(rid, created, model, c, DeltaMessage(role="assistant", content=echoed),
                                            None, body, name)  # fmt: skip
                thought = ""
                if c.index in splitters:  # the reasoning part of the delta goes out beside its content
                    thought, delta = splitters[c.index].feed(delta)
                    if c.finish_reason is not None:
                        r, rest = splitters[c.index].flush()
                        thought, delta = thought + r, delta + rest
                    if not body.include_reasoning:
                        thought = ""
                if c.index not in parsers:
                    d = DeltaMessage(content=delta or (None if rp else delta))
                    reason = c.finish_reason
                else:
                    parser = parsers[c.index]
                    d = DeltaMessage(content=parser.feed(delta) or None)
                    reason = c.finish_reason
                    if c.finish_reason is not None:
                        _, calls, reason = final(c, parser.text)
                        if calls:
                            d.tool_calls = [call.openai(index=i) for i, call in enumerate(calls)]
                        else:
                            d.content = (d.content or "") + parser.rest() or None
                            parser.sent = len(parser.text)
                if thought:
                    d.reasoning = d.reasoning_content = thought
                quiet = d.content is None and not d.tool_calls and not thought
                if quiet and reason is None and not body.logprobs and (rp or c.index in parsers):
                    return None  # held back (maybe a tool call or a tag): nothing to send yet
                return self._chat_chunk(rid, created, model, c, d, reason, body, name)

            def usage_chunk():
                return ChatCompletionChunk(
                    id=rid, created=created, model=model, choices=[], usage=usage(choices)
                ).model_dump()

            return StreamingResponse(
                self._stream(
                    choices,
                    chunk,
                    usage_chunk if body.include_usage else None,
                    (lambda: usage(choices).model_dump()) if body.continuous_usage else None,
                ),
                media_type="text/event-stream",
            )
        await self._collect(choices)
        plps = choices[0].prompt_lps
        out = []
        for c in choices:
            thought, text = split_reasoning(rp, c.text, tail) if rp else (None, c.text)
            thought = thought if body.include_reasoning else None
            content, calls, reason = final(c, text or "")
            if echoed:
                content = echoed + (content or "")
            out.append(
                ChatChoice(
                    index=c.index,
                    message=ChatMessageOut(
                        content=content,
                        tool_calls=[x.openai() for x in calls] or None,
                        reasoning=thought,
                        reasoning_content=thought,
                    ),
                    finish_reason=reason,
                    logprobs=chat_logprobs(c.ids, c.lps, name) if body.logprobs else None,
                )
            )
        return ChatCompletionResponse(
            id=rid,
            created=created,
            model=model,
            usage=usage(choices),
            prompt_logprobs=None if plps is None else vllm_prompt_logprobs(prompts[0], plps, name),
            choices=out,
        )

    @staticmethod
    def _chat_chunk(rid, created, model, c: _Choice, d: DeltaMessage, reason, body, name) -> dict:
        lp = chat_logprobs(*c.take_logprobs()[:2], name) if body.logprobs and d.role is None else None
        return ChatCompletionChunk(
            id=rid,
            created=created,
            model=model,
            choices=[ChatChunkChoice(index=c.index, delta=d, logprobs=lp, finish_reason=reason)],
        ).model_dump(exclude={"usage"})

    @staticmethod
    def _usage_for(prompts: list[list[int]], n: int):
        """OpenAI counts each prompt once, whatever n (its cached tokens those of its first choice);
        completion tokens over all choices."""
        prompt_tokens = sum(len(p) for p in prompts)

        def usage(choices: list[_Choice]) -> UsageInfo:
            done = sum(c.num_tokens for c in choices)
            cached = sum(c.cached_tokens for c in choices if c.index % n == 0)
            return UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=done,
                total_tokens=prompt_tokens + done,
                prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
            )

        return usage

    def _card(self, model_id: str, adapter: dict | None) -> ModelCard:
        if adapter is None:
            return ModelCard(id=model_id, root=self.cfg.model_path, max_model_len=self.cfg.max_model_len)
        base = self.cfg.served_model_name
        return ModelCard(id=model_id, root=adapter["path"], parent=base, max_model_len=self.cfg.max_model_len)

    @api.post("/v1/responses")
    async def responses(self, body: ResponsesRequest, request: Request):
        """OpenAI's Responses API over the chat route (deployments/responses.py): the same model, adapter,
        template, tools, structured output and reasoning split; nothing is stored."""
        try:
            chat = ChatCompletionRequest(**chat_body(body))
        except UnsupportedField as e:
            raise APIError(400, str(e), e.param) from None
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None
        shell = ResponseShell(body)
        answer = await self.chat_completions(chat, request)
        if not isinstance(answer, StreamingResponse):
            return response_object(shell, answer.model_dump())
        events, lines = ResponseEvents(shell), answer.body_iterator

        async def stream():
            try:
                yield events.start()
                async for line in lines:
                    payload = (line if isinstance(line, str) else bytes(line).decode()).removeprefix("data: ").strip()
                    if payload == "[DONE]":
                        yield events.end()
                        return
                    chunk = json.loads(payload)
                    if out := events.feed(chunk):
                        yield out
                    if "error" in chunk:
                        return
            finally:
                await lines.aclose()  # type: ignore[attr-defined]  # the chat stream's generator: frees its requests

        return StreamingResponse(stream(), media_type="text/event-stream")

    @api.get("/v1/models")
    async def models(self):
        adapters = await self._adapters(fresh=True)
        cards = [self._card(self.cfg.served_model_name, None)]
        cards += [self._card(n, a) for n, a in sorted(adapters.items())]
        return ModelList(data=cards)

    @api.get("/v1/models/{model_id}")
    async def model(self, model_id: str) -> ModelCard:
        """One model's card (404 for an unknown id); `base_model:adapter` is answered under that id."""
        return self._card(model_id, (await self._find_model(model_id))[1])

    @api.post("/tokenize")
    async def tokenize(self, body: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        """vLLM's /tokenize: the tokens the completions (`prompt`) or chat (`messages`) route would send to
        the model, with the same limits on the prompt's size."""
        await self._resolve_model(body.model)
        tok = self.tokenizer
        if isinstance(body, TokenizeCompletionRequest):
            self._check_prompt_sizes(1, 1, [len(body.prompt)], "prompt")

            def run() -> list[int]:
                return tok.hf.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            messages, tools = body.chat(), body.tool_dicts()
            chars = sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))
            self._check_prompt_sizes(1, 1, [chars], "messages")

            def run() -> list[int]:
                try:
                    return tok.apply_chat_template(
                        messages, tools, body.add_generation_prompt, body.add_special_tokens, body.chat_template_kwargs,
                        body.continue_final_message,
                    )  # fmt: skip
                except Exception as e:  # noqa: BLE001 - a template error is the request's fault
                    raise APIError(400, f"chat template failed: {e}", "messages") from None

        ids = await asyncio.to_thread(run)
        strs = tok.hf.convert_ids_to_tokens(ids) if body.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.cfg.max_model_len, tokens=ids, token_strs=strs)

    @api.post("/detokenize")
    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        """vLLM's /detokenize: the text of token ids (special tokens skipped, as in outputs)."""
        await self._resolve_model(body.model)
        vocab = len(self.tokenizer.hf)
        bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is not in the vocabulary (0 to {vocab - 1})", "tokens")
        return DetokenizeResponse(prompt=await asyncio.to_thread(self.tokenizer.decode, body.tokens))

    @api.get("/version")
    async def get_version(self) -> VersionResponse:
        return VersionResponse(version=self.version)

    @api.post("/v1/load_lora_adapter")
    async def load_lora_adapter(self, body: LoadLoRAAdapterRequest):
        """Registers an adapter on every group; all or nothing."""
        name = body.lora_name
        if name == self.cfg.served_model_name:
            raise APIError(400, f"{name!r} is the base model's name", "lora_name")
        await self._load_everywhere(name, body.lora_path, "lora_path")
        return Response(f"Success: LoRA adapter '{name}' added successfully.", media_type="text/plain")

    async def _load_everywhere(self, name: str, lora_path: str, param: str, exist_ok: bool = False) -> None:
        """Registers adapter `name` from `lora_path` (under the allowed roots) on every group, all or nothing;
        an APIError naming `param` when it cannot. `exist_ok`: a group that has the name registered already
        (another ingress replica loaded it meanwhile) counts as loaded."""
        try:
            path = confine_path(lora_path, self.cfg.allowed_adapter_roots)
        except AdapterError as e:
            raise APIError(400, str(e), param) from None
        self._adapter_edits += 1
        try:
            results = await asyncio.gather(
                *(h.add_adapter.remote(name, str(path)) for h in self.groups.values()), return_exceptions=True
            )

            def loaded(r: object) -> bool:
                return _done(r) or (exist_ok and isinstance(r, dict) and bool(r.get("exists")))

            failed = [_cause(r) if isinstance(r, BaseException) else r for r in results if not loaded(r)]
            if failed:
                ok = [g for g, r in zip(self.groups, results) if _done(r)]
                await asyncio.gather(*(self.groups[g].remove_adapter.remote(name) for g in ok), return_exceptions=True)
                err = failed[0]
                if isinstance(err, dict):  # refused by the group
                    raise APIError(err["status"], err["error"], param)
                status = 400 if isinstance(err, (AdapterError, ValueError)) else 500
                raise APIError(status, str(err) if status == 400 else f"loading {name!r} failed: {err!r}", param)
        finally:  # a poll sent while the groups changed may show either state
            self._adapter_edits += 1

    @api.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(self, body: UnloadLoRAAdapterRequest):
        name = body.lora_name
        await self._unload_everywhere(name, "lora_name")
        self._dynamic.pop(name, None)
        return Response(f"Success: LoRA adapter '{name}' removed successfully.", media_type="text/plain")

    @api.post("/reset_prefix_cache")
    async def reset_prefix_cache(self):
        """vLLM's and SGLang's (/flush_cache) reset: every group forgets its cached prefix pages (requests
        running keep theirs), e.g. between two benchmark runs. 200 when every group did, else 503."""
        results = await asyncio.gather(
            *(h.reset_prefix_cache.remote() for h in self.groups.values()), return_exceptions=True
        )
        failed = [f"{g}: {_cause(r)!r}" for g, r in zip(self.groups, results) if isinstance(r, BaseException)]
        if failed:
            raise _unavailable(f"the prefix cache was not reset on every group ({'; '.join(failed)})")
        return Response(status_code=200)

    async def _unload_everywhere(self, name: str, param: str) -> None:
        """Unregisters adapter `name` on every group, all or nothing; an APIError naming `param` when it
        cannot (404: loaded nowhere; the group's refusal, e.g. in use)."""
        self._adapter_edits += 1
        try:
            results = await asyncio.gather(
                *(h.remove_adapter.remote(name) for h in self.groups.values()), return_exceptions=True
            )
            if all(isinstance(r, dict) and r.get("status") == 404 for r in results):
                raise APIError(404, f"the adapter {name!r} is not loaded", param)
            failed = [r for r in results if not _done(r) and not (isinstance(r, dict) and r.get("status") == 404)]
            if failed:  # all or nothing: put it back on the groups that had already dropped it
                removed = [(g, r["path"]) for g, r in zip(self.groups, results) if _done(r)]
                await asyncio.gather(
                    *(self.groups[g].add_adapter.remote(name, path, confined=False) for g, path in removed),
                    return_exceptions=True,
                )
                e = failed[0]
                if isinstance(e, dict):  # refused by the group (in use)
                    raise APIError(e["status"], e["error"], param)
                raise APIError(500, f"unloading {name!r} failed: {_cause(e)!r}", param)
        finally:  # a poll sent while the groups changed may show either state
            self._adapter_edits += 1

    @api.get("/health")
    async def health(self):
        """200 while at least one group is healthy (a load balancer keeps sending here: requests go to the
        healthy groups), 503 + Retry-After when none is (at once, also while every group is still starting).
        The body lists each group's health and the groups still starting."""
        self._start_polling()
        await self._poll_once()
        groups = {n: bool(s and s.get("healthy", True)) for n, s in self.snapshots.items()}
        starting = sorted(set(self.groups) - self.answered)
        if not any(groups.values()):
            why = f"the service is starting: {starting} still warming up" if starting else "no healthy group"
            return JSONResponse(
                {**error_body(503, f"{why}: {sorted(groups)}"), "groups": groups, "starting": starting},
                status_code=503,
                headers={"Retry-After": str(STARTING_RETRY_AFTER_S if starting else UNAVAILABLE_RETRY_AFTER_S)},
            )
        return JSONResponse({"status": "ok", "groups": groups, "starting": starting})

    @api.get("/metrics")
    async def metrics(self):
        self._start_polling()
        await self._poll_once()
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def __del__(self):
        if self._poller is not None:
            self._poller.cancel()
        for sub in self.subscriptions.values():
            try:
                sub.close()
            except RuntimeError:  # the event loop is already closed: nothing is left to tell
                pass


IngressDeployment = serve.deployment(name="OpenAIIngress", max_ongoing_requests=1024)(OpenAIIngress)
