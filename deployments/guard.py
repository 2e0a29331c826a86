"""The ingress's first gate: a pure ASGI middleware in front of the FastAPI app that decides who may call a
route and how large a request body may be, before any of the body is read or parsed.

In:  every HTTP request to an ingress replica (ASGI scope / receive / send); an `AccessPolicy` (the keys of
     each role) and `max_body_bytes`.
Out: a 401 / 403 / 413 OpenAI error object, sent without reading the body; or the request handed to the app
     with its body read in (never more than `max_body_bytes`) and replayed to the app as one message.

Roles (`ROUTE_ROLES`; a key is sent as `Authorization: Bearer <key>`):
  inference  /v1/completions, /v1/chat/completions,             an `api_keys` or `admin_api_keys` key
             /v1/responses, /v1/models, /v1/models/{id}, /tokenize,
             /detokenize, /version
  admin      /v1/load_lora_adapter, /v1/unload_lora_adapter,      an `admin_api_keys` key
             /reset_prefix_cache
  metrics    /metrics                                             a `metrics_api_keys` or admin key
  public     /health and every other path (the app answers them: 404 / 405 for unknown ones)
With no key configured at all every route is open (the local demo; bind it to 127.0.0.1). Once any key is
configured a role is closed unless keys of its own (or admin keys) are set: with only `api_keys`, load /
unload answer 403 to every key and /metrics answers 401/403 unless `metrics_open` is set (for a scrape
listener that only the monitoring network reaches).
A wrong or missing key is 401; a valid key of another role is 403.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.protocol import error_body

Role = Literal["inference", "admin", "metrics", "public"]

ROUTE_ROLES: dict[str, Role] = {
    "/v1/completions": "inference",
    "/v1/chat/completions": "inference",
    "/v1/responses": "inference",
    "/v1/models": "inference",
    "/tokenize": "inference",
    "/detokenize": "inference",
    "/version": "inference",
    "/v1/load_lora_adapter": "admin",
    "/v1/unload_lora_adapter": "admin",
    "/reset_prefix_cache": "admin",
    "/metrics": "metrics",
}


def route_role(path: str) -> Role:
    """The role of a path inside the application (`route_path`): `ROUTE_ROLES`, and every
    `/v1/models/{id}` is inference like `/v1/models`."""
    role = ROUTE_ROLES.get(path)
    if role is not None:
        return role
    return "inference" if path.startswith("/v1/models/") else "public"


def _keys(keys: list[str] | None) -> tuple[bytes, ...]:
    return tuple(k.encode() for k in keys or ())


@dataclass(frozen=True)
class AccessPolicy:
    """The keys of each role (see the module docstring)."""

    api_keys: tuple[bytes, ...] = ()
    admin_api_keys: tuple[bytes, ...] = ()
    metrics_api_keys: tuple[bytes, ...] = ()
    metrics_open: bool = False

    @classmethod
    def from_lists(
        cls,
        api_keys: list[str] | None = None,
        admin_api_keys: list[str] | None = None,
        metrics_api_keys: list[str] | None = None,
        metrics_open: bool = False,
    ) -> AccessPolicy:
        return cls(_keys(api_keys), _keys(admin_api_keys), _keys(metrics_api_keys), metrics_open)

    @property
    def open(self) -> bool:
        """No key configured: every route is open (the local demo)."""
        return not (self.api_keys or self.admin_api_keys or self.metrics_api_keys)

    def check(self, role: Role, authorization: str | None) -> tuple[int, str] | None:
        """None when the request may go on, else (status, message)."""
        if role == "public" or self.open or (role == "metrics" and self.metrics_open):
            return None
        allowed = {
            "inference": self.api_keys + self.admin_api_keys if self.api_keys else None,
            "admin": self.admin_api_keys or (),
            "metrics": self.metrics_api_keys + self.admin_api_keys,
        }[role]
        if allowed is None:  # admin or metrics keys only: inference stays open
            return None
        key = _bearer(authorization)
        if key is not None and _member(key, allowed):
            return None
        every = self.api_keys + self.admin_api_keys + self.metrics_api_keys
        if key is not None and _member(key, every):
            if role == "admin" and not self.admin_api_keys:
                return 403, "adapter loading and unloading are disabled: no admin_api_keys are configured"
            return 403, f"this key may not call {role} routes"
        return 401, "invalid or missing API key (use 'Authorization: Bearer <key>')"


def _bearer(authorization: str | None) -> bytes | None:
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    return key.encode() if scheme.lower() == "bearer" and key else None


def _member(key: bytes, keys: tuple[bytes, ...]) -> bool:
    """Constant-time comparison against every key (no early exit that would time which one matched)."""
    found = False
    for k in keys:
        found |= hmac.compare_digest(key, k)
    return found


def route_path(scope: Scope) -> str:
    """The path inside the application (Serve's route_prefix is the ASGI root_path), without a trailing /."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


class RequestGuard:
    """ASGI middleware: access check, then the body limit (Content-Length first, then while reading)."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy, max_body_bytes: int):
        self.app = app
        self.policy = policy
        self.max_body_bytes = max_body_bytes

    @property
    def routes(self):
        """The app's routes (and `router`, below): Serve reads them to name access log lines and request
        metrics after the matched route (`/v1/models/{model_id}`) instead of the application's prefix."""
        inner: Any = self.app  # a FastAPI app (Starlette's ASGI type does not declare its routes)
        return inner.routes

    @property
    def router(self):
        inner: Any = self.app
        return inner.router

    def add_exception_handler(self, exc_class, handler) -> None:
        """Serve registers its back-pressure handlers on the app it is given: they belong to the inner app
        (a Starlette / FastAPI app then: `@serve.ingress` gives one)."""
        inner: Any = self.app
        inner.add_exception_handler(exc_class, handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        denied = self.policy.check(route_role(route_path(scope)), headers.get("authorization"))
        if denied is not None:
            await _reply(scope, receive, send, *denied)
            return
        too_large = (
            413,
            f"the request body is larger than the limit of {self.max_body_bytes} bytes (max_body_bytes)",
        )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await _reply(scope, receive, send, *too_large)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away while sending
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _reply(scope, receive, send, *too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed, body
            if replayed:
                return await receive()  # after the body: http.disconnect, as the server sends it
            replayed, out = True, body
            body = b""
            return {"type": "http.request", "body": out, "more_body": False}

        await self.app(scope, replay, send)


async def _reply(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    await JSONResponse(error_body(status, message), status_code=status, headers=headers)(scope, receive, send)
