"""The ingress's guard (deployments/guard.py) as a plain ASGI middleware, without Ray: keys are checked and
the body size is enforced before the body is read; what passes reaches the app intact.
tests/test_serve.py checks the same through the real Serve application."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployments.guard import AccessPolicy, RequestGuard, route_path

LIMIT = 1000


class Recorder:
    """The inner app: records the body it was given."""

    def __init__(self):
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send):
        body = await Request(scope, receive).body()
        self.bodies.append(body)
        await JSONResponse({"ok": True, "n": len(body)})(scope, receive, send)


def call(guard, path: str, chunks: list[bytes], headers: dict | None = None, root_path: str = ""):
    """Runs one request through the guard; returns (status, json body, chunks the guard read)."""
    read = []
    pending = list(chunks)

    async def receive():
        if not pending:
            return {"type": "http.disconnect"}
        c = pending.pop(0)
        read.append(c)
        return {"type": "http.request", "body": c, "more_body": bool(pending)}

    sent = []

    async def send(m):
        sent.append(m)

    scope = {
        "type": "http",
        "method": "POST",
        "path": root_path + path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    asyncio.run(guard(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), read


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_body_limit_by_content_length_and_while_reading():
    app = Recorder()
    g = RequestGuard(app, AccessPolicy(), LIMIT)
    # Content-Length above the limit: 413 before a single byte is read
    status, body, read = call(g, "/v1/completions", [b"x" * 10], {"Content-Length": str(LIMIT + 1)})
    assert status == 413 and read == [] and app.bodies == []
    assert body["error"]["code"] == 413 and "max_body_bytes" in body["error"]["message"]
    # no Content-Length (chunked): reading stops at the first chunk past the limit
    status, body, read = call(g, "/v1/completions", [b"x" * 400] * 10)
    assert status == 413 and len(read) == 3 and app.bodies == []
    # at the limit: the app gets the whole body, in one piece
    chunks = [b"a" * 300, b"b" * 300, b"c" * 400]
    status, body, read = call(g, "/v1/completions", chunks)
    assert status == 200 and app.bodies == [b"".join(chunks)]


def test_key_checked_before_the_body_is_read():
    app = Recorder()
    g = RequestGuard(app, AccessPolicy.from_lists(api_keys=["sk-a"]), LIMIT)
    huge = {"Content-Length": str(100 * LIMIT)}
    for headers in ({}, bearer("wrong"), {"Authorization": "sk-a"}, {"Authorization": "Basic sk-a"}):
        status, body, read = call(g, "/v1/chat/completions", [b"{not json"], headers | huge)
        assert status == 401 and read == [] and body["error"]["type"] == "AuthenticationError", headers
    assert call(g, "/v1/completions", [b"{}"], bearer("sk-a"))[0] == 200
    # a valid key with a body over the limit: 413 (the key is checked first, then the size)
    assert call(g, "/v1/completions", [b"x"], bearer("sk-a") | huge)[0] == 413
    # /health and unknown paths are the app's (open)
    assert call(g, "/health", [b""])[0] == 200
    # behind a Serve route prefix (the ASGI root_path), with a trailing slash
    assert call(g, "/v1/completions/", [b""], {}, root_path="/strict")[0] == 401
    assert route_path({"path": "/strict/v1/models", "root_path": "/strict"}) == "/v1/models"


@pytest.mark.parametrize(
    "policy,key,want",
    [
        # no key configured at all: everything open (the local demo)
        (AccessPolicy(), None, dict(inference=200, admin=200, metrics=200)),
        # inference keys only: admin is closed to every key, metrics too unless metrics_open
        (AccessPolicy.from_lists(["inf"]), "inf", dict(inference=200, admin=403, metrics=403)),
        (AccessPolicy.from_lists(["inf"]), None, dict(inference=401, admin=401, metrics=401)),
        (AccessPolicy.from_lists(["inf"], metrics_open=True), None, dict(inference=401, admin=401, metrics=200)),
        # inference + admin + metrics keys
        (AccessPolicy.from_lists(["inf"], ["adm"], ["met"]), "inf", dict(inference=200, admin=403, metrics=403)),
        (AccessPolicy.from_lists(["inf"], ["adm"], ["met"]), "adm", dict(inference=200, admin=200, metrics=200)),
        (AccessPolicy.from_lists(["inf"], ["adm"], ["met"]), "met", dict(inference=403, admin=403, metrics=200)),
        (AccessPolicy.from_lists(["inf"], ["adm"], ["met"]), "bad", dict(inference=401, admin=401, metrics=401)),
        # admin keys only: inference stays open, admin needs its key
        (AccessPolicy.from_lists(None, ["adm"]), None, dict(inference=200, admin=401, metrics=401)),
    ],
)
def test_roles(policy, key, want):
    g = RequestGuard(Recorder(), policy, LIMIT)
    paths = {"inference": "/v1/completions", "admin": "/v1/load_lora_adapter", "metrics": "/metrics"}
    got = {role: call(g, p, [b"{}"], bearer(key) if key else {})[0] for role, p in paths.items()}
    assert got == want
    assert call(g, "/v1/unload_lora_adapter", [b"{}"], bearer(key) if key else {})[0] == want["admin"]
    assert call(g, "/health", [b""])[0] == 200


def test_route_roles_of_the_vllm_routes():
    from deployments.guard import route_role

    for path in ("/v1/models", "/v1/models/demo-r4-attn", "/v1/models/sloray-demo:demo-r4-attn", "/tokenize"):
        assert route_role(path) == "inference", path
    assert route_role("/detokenize") == route_role("/version") == "inference"
    assert route_role("/v1/load_lora_adapter") == "admin" and route_role("/metrics") == "metrics"
    assert route_role("/health") == route_role("/openapi.json") == route_role("/v1/modelsx") == "public"
    policy = AccessPolicy.from_lists(api_keys=["k"])
    assert policy.check(route_role("/v1/models/x"), None)[0] == 401
    assert policy.check(route_role("/tokenize"), "Bearer k") is None


def test_every_route_of_the_app_has_its_role():
    """A route added to the ingress is public unless ROUTE_ROLES names it: only the documented public paths
    (health, FastAPI's schema and docs) may be; every other route needs a key once keys are configured."""
    pytest.importorskip("ray")
    from deployments.guard import route_role
    from deployments.ingress import api

    public = {"/health"}  # besides FastAPI's own /openapi.json and /docs, which the schema does not list
    paths = {p.replace("{model_id}", "x") for p in api.openapi()["paths"]}
    assert {"/v1/responses", "/v1/chat/completions", "/health"} <= paths
    assert {p for p in paths if route_role(p) == "public"} <= public


def test_quiet_routes_drop_only_the_access_lines_of_their_routes():
    import logging

    from deployments.ingress import QuietRoutes

    f = QuietRoutes(["/health", "/metrics"])

    def record(route, access=True):
        r = logging.LogRecord("ray.serve", logging.INFO, "x", 1, "GET", None, None)
        if access:
            r.serve_access_log, r.route = True, route
        return r

    assert not f.filter(record("/health")) and not f.filter(record("/strict/metrics"))
    assert f.filter(record("/v1/models")) and f.filter(record("/v1/models/{model_id}"))
    assert f.filter(record("/health", access=False))  # the app's own lines stay
    assert QuietRoutes([]).filter(record("/health"))
