"""sloray's engine: everything that runs without Ray (see DESIGN.md). `from app import LLM, SamplingParams`."""

from app.config import EngineConfig
from app.llm import LLM
from app.request import RequestOutput, SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "EngineConfig"]
