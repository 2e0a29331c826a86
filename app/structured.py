"""Structured output: a request's output constrained to a JSON schema, any JSON object, a regex, one of
several strings or a grammar (Lark, or GBNF / EBNF `root ::= ...`), with llguidance (chosen over xgrammar:
benchmarks/grammar_libs.py and benchmarks/results/grammar_libs.md).

In:  `StructuredOutputs` (in SamplingParams: plain data, pickled to the tensor-parallel ranks).
Out: `Grammars.compile(so)` (validation: ValueError naming the problem; one parsed grammar per spec, kept
     in an LRU cache, each request's matcher a copy of it), and `Constraints`, the runner's per-request
     matcher state:
       fill(rows, bitmask)  ->  bring each request's matcher to its output tokens so far (the token sampled
                                last step included), then write the tokens it allows next into its bitmask
                                row (all rows at once, in threads); the runner calls it while the device
                                runs the step's forward pass, so the matchers' work hides under it
       drop(rid)            ->  forget it (finished, or preempted: rebuilt from the outputs on recompute)

A bitmask row has ceil(vocab / 32) int32 words; bit j of word w allows token 32 w + j. `apply_token_bitmask`
applies rows to logits on any device. The grammar's end-of-sequence tokens are the engine's EOS tokens:
once the grammar is complete they are allowed (only they, when it cannot go on), and EOS ends a constrained
request ("stop"). JSON is compact (no free whitespace, separators ", " and ": "): a model cannot spend its
tokens on whitespace. llguidance is imported when the first constrained request arrives.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llguidance import LLMatcher
    from llguidance._lib import JsonCompileOptions  # the options' TypedDict, not re-exported

logger = logging.getLogger(__name__)

GRAMMAR_CACHE_SIZE = 256  # parsed grammars kept per process (LRU)
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class StructuredOutputs:
    """Exactly one of: `json` (a JSON schema, as text), `json_object` (any JSON object), `regex`, `choice`
    (the output is one of these strings) or `grammar` (Lark, as llguidance; or GBNF / EBNF as llama.cpp
    and xgrammar: `root ::= ...`), as vLLM's StructuredOutputsParams."""

    json: str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self):
        given = [k for k in ("json", "regex", "choice", "grammar") if getattr(self, k) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError(
                f"structured output needs exactly one of json, json_object, regex, choice, grammar; got {given}"
            )
        if self.choice is not None and (not self.choice or not all(isinstance(c, str) for c in self.choice)):
            raise ValueError("choice must be a non-empty list of strings")

    @property
    def key(self) -> tuple[str, str]:
        if self.json_object:
            return ("json_object", "")
        if self.choice is not None:
            return ("choice", json.dumps(list(self.choice)))
        kind = next(k for k in ("json", "regex", "grammar") if getattr(self, k) is not None)
        return (kind, getattr(self, kind))


class Grammars:
    """llguidance's view of one tokenizer and vocabulary, and one parsed grammar (a matcher in its start
    state) per spec, LRU; requests get copies of it."""

    def __init__(self, hf_tokenizer, vocab_size: int, stop_token_ids: list[int]):
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=vocab_size, eos_token=sorted(stop_token_ids)
        )
        self.cache: OrderedDict[tuple[str, str], object] = OrderedDict()
        self.compiles = 0

    def _grammar(self, so: StructuredOutputs) -> str:
        M = self.llg.LLMatcher
        if so.json is not None:
            try:
                schema = json.loads(so.json)
            except ValueError as e:
                raise ValueError(f"invalid json for structured output: not JSON ({e})") from None
            return M.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        if so.json_object:
            return M.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
        if so.regex is not None:
            return M.grammar_from_regex(so.regex)
        if so.choice is not None:
            return M.grammar_from_lark("start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in so.choice))
        assert so.grammar is not None  # __post_init__: exactly one field is given
        if "::=" in so.grammar:  # GBNF / EBNF (llama.cpp, xgrammar): converted to Lark
            from llguidance.gbnf_to_lark import gbnf_to_lark

            try:
                return M.grammar_from_lark(gbnf_to_lark(so.grammar))
            except Exception as e:  # noqa: BLE001 - the converter's parse error is the request's fault
                raise ValueError(f"invalid grammar for structured output: {e}") from None
        return M.grammar_from_lark(so.grammar)

    def compile(self, so: StructuredOutputs):
        """The spec's matcher in its start state (cached); ValueError naming what is wrong."""
        m = self.cache.get(so.key)
        if m is not None:
            self.cache.move_to_end(so.key)
            return m
        grammar = self._grammar(so)
        error = self.llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(f"invalid {so.key[0]} for structured output: {error.strip()}")
        m = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise ValueError(f"invalid {so.key[0]} for structured output: {m.get_error()}")
        self.compiles += 1
        self.cache[so.key] = m
        if len(self.cache) > GRAMMAR_CACHE_SIZE:
            self.cache.popitem(last=False)
        return m

    def matcher(self, so: StructuredOutputs) -> LLMatcher:
        return self.compile(so).deep_copy()

    def bitmask(self, rows: int) -> torch.Tensor:
        """A host int32 bitmask [rows, ceil(vocab / 32)]."""
        return torch.zeros((rows, (self.vocab_size + 31) // 32), dtype=torch.int32)


class Constraints:
    """The runner's matchers (tp-rank 0), one per constrained request. A matcher's state is a function of
    the request's output tokens: `fill` first brings it to the outputs it is given (consuming the ones it
    has not seen: a request recomputed after a preemption gets a new matcher that replays its outputs), so
    it is right whatever happened between two steps."""

    def __init__(self, grammars: Grammars):
        self.grammars = grammars
        self.executor = grammars.llg.LLExecutor()  # fills many requests' rows at once, in its threads
        self.state: dict[str, tuple[LLMatcher, int]] = {}  # request id -> (matcher, output tokens consumed)
        self.rebuilds = 0  # matchers made for a request that had output tokens already (recompute)

    def fill(self, rows: list[tuple[str, StructuredOutputs, list[int]]], bitmask: torch.Tensor) -> None:
        """rows[i] = (request id, its spec, its output tokens so far): bitmask row i gets its allowed tokens."""
        from llguidance.torch import fill_next_token_bitmask_par

        matchers = []
        for i, (rid, so, outputs) in enumerate(rows):
            m, n = self.state.get(rid, (None, 0))
            if m is None or n > len(outputs):
                m, n = self.grammars.matcher(so), 0
                self.rebuilds += bool(outputs)
            for tok in outputs[n:]:
                self._consume(rid, m, tok)
            self.state[rid] = (m, len(outputs))
            matchers.append((m, i))
        fill_next_token_bitmask_par(self.executor, matchers, bitmask)

    @staticmethod
    def _consume(rid: str, m, token: int) -> None:
        if not m.consume_token(token):
            raise RuntimeError(f"request {rid}: token {token} breaks its grammar: {m.get_error()}")

    def drop(self, rid: str) -> None:
        self.state.pop(rid, None)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """logits[rows[i], t] = -inf where bit t of bitmask[i] is 0 (in place; bitmask on logits' device)."""
    vocab = logits.shape[-1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(bitmask.shape[0], -1)[:, :vocab].bool()
    idx = torch.tensor(rows, dtype=torch.long, device=logits.device)
    logits[idx] = logits[idx].masked_fill(~allowed, float("-inf"))
