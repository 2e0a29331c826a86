"""Schemathesis hooks for sloray's API: a generated body's `model` is, as often as not, a model the demo
serves (the base model or one of its adapters), so that generated requests reach tokenizing, routing
and generation instead of stopping at a 404.

Used by tests/test_serve.py::test_schemathesis_no_server_errors and by the CLI run (README):
    SCHEMATHESIS_HOOKS=tests.schemathesis_hooks schemathesis run http://127.0.0.1:8000/openapi.json ...
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from app.demo import DEMO_ADAPTERS

MODELS = ["sloray-demo", *DEMO_ADAPTERS]


@schemathesis.hook
def flatmap_body(context, body):
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return st.sampled_from([body["model"], *MODELS]).map(lambda m: {**body, "model": m})
    return st.just(body)
