"""sloray's engine: everything that runs without Ray (see DESIGN.md). `from app import LLM, SamplingParams`.

The names below load on first use (PEP 562), so importing a light module of this package (`app.config`, as
deployments/builder.py does in the process `serve run` builds the application in) does not import torch and the
engine."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import EngineConfig
    from app.llm import LLM
    from app.request import RequestOutput, SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "EngineConfig"]
_HOME = {
    "LLM": "app.llm",
    "SamplingParams": "app.request",
    "RequestOutput": "app.request",
    "EngineConfig": "app.config",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")
