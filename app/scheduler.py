"""Iteration-level scheduler (continuous batching) over the unified pool.

Contract: each step is one forward pass; `schedule()` decides how many tokens of each request it
computes (`{request: num_new_tokens}`), so prefill chunks and decodes share a step. A request's
`num_computed_tokens` counts the tokens whose K/V are in the pool; it is scheduled
`min(num_tokens - num_computed_tokens, token budget)` new tokens, and samples a token when they reach
its end.

Order: running requests first (admission order), then waiting ones (FCFS). A waiting request is admitted
when its adapter is (or can be made) resident and pinned, its KV pages fit, the batch has room for one
more distinct adapter and `max_num_seqs` is not reached. When a running request needs a KV page and
none is free, the most recently admitted request is preempted by recompute: its pages are freed, its
adapter unpinned, and it goes back to the front of the queue with its generated tokens kept, to be
prefilled again later (same output for greedy and seeded sampling). A request that could never fit
alone is refused when added, so preemption always makes progress.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from app.config import LoRAConfig, SchedulerConfig
from app.pool import PagePool
from app.request import ModelOutput, Request, RequestStatus, SamplingParams


@dataclass
class ScheduledSeq:
    """What a rank needs to run one request this step (plain data: it crosses process boundaries)."""

    request_id: str
    token_ids: list[int]  # the new tokens fed this step
    start_pos: int  # position of token_ids[0] (= tokens already cached)
    kv_pages: list[int]  # all KV pages of the request, in order
    adapter: str | None
    sample: bool  # this step reaches the end of the known tokens: emit one token
    params: SamplingParams
    prompt_len: int = 0  # tokens [0, prompt_len) are the prompt (the sampler's penalties need it)
    # prompt logprobs wanted this step: the rows at positions prompt_lp_start, prompt_lp_start + 1, ... give
    # the log-probabilities of these next prompt tokens (prompt[position + 1])
    prompt_lp_start: int = 0
    prompt_lp_targets: list[int] = field(default_factory=list)
    banned_ids: list[int] = field(default_factory=list)  # tokens the sampler must not pick (min_tokens)


@dataclass
class SchedulerOutput:
    seqs: list[ScheduledSeq] = field(default_factory=list)
    adapter_loads: list[tuple[str, list[int]]] = field(default_factory=list)  # fill these pages first
    finished_ids: list[str] = field(default_factory=list)  # drop per-request state
    prefetch: list[str] = field(default_factory=list)  # loads for queued requests: may overlap the step
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, lora_cfg: LoRAConfig, pool: PagePool, adapter_pages: Callable[[str], int]):
        self.cfg, self.lora_cfg, self.pool = cfg, lora_cfg, pool
        if cfg.max_num_seqs is None or cfg.max_num_batched_tokens is None or lora_cfg.max_loras_per_batch is None:
            raise ValueError("the scheduler needs resolved sizes (EngineConfig.with_device_defaults)")
        self.max_num_seqs: int = cfg.max_num_seqs
        self.max_num_batched_tokens: int = cfg.max_num_batched_tokens
        self.max_loras_per_batch: int = lora_cfg.max_loras_per_batch
        self.adapter_pages = adapter_pages
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._finished_ids: list[str] = []
        self.num_preemptions = 0
        self.num_prefetches = 0
        self.num_early_aborts = 0
        self.early_aborted: list[Request] = []  # drained by the engine, which reports them

    # ---- queue -----------------------------------------------------------------------------------
    def pages_to_fit(self, req: Request) -> int:
        n = -(-(len(req.prompt_token_ids) + req.params.max_tokens) // self.pool.page_size)
        return n + (self.adapter_pages(req.adapter) if req.adapter else 0)

    def add(self, req: Request) -> None:
        need = self.pages_to_fit(req)
        if need > self.pool.num_pages:
            raise ValueError(
                f"request needs {need} pool pages (prompt + max_tokens + adapter) but the pool "
                f"has {self.pool.num_pages}: lower max_tokens or shorten the prompt"
            )
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> Request | None:
        for req in self.waiting:
            if req.request_id == request_id:
                self.waiting.remove(req)
                self.finish(req, "abort")
                return req
        for req in self.running:
            if req.request_id == request_id:
                self.finish(req, "abort")
                return req
        return None

    def finish(self, req: Request, reason: str) -> None:
        if req.status == RequestStatus.RUNNING:
            self.running.remove(req)
            self._release(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.finish_time = time.monotonic()
        self._finished_ids.append(req.request_id)

    def _release(self, req: Request) -> None:
        self.pool.free_kv(req.request_id)
        if req.adapter:
            self.pool.unpin(req.adapter)

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.status = RequestStatus.WAITING
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # ---- one step --------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_ids=self._finished_ids)
        self._finished_ids = []
        budget = self.max_num_batched_tokens
        chosen: list[tuple[Request, int]] = []

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.pool.grow_kv(req.request_id, req.num_computed_tokens + n):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted_ids.append(victim.request_id)
                if victim is req:
                    break
            else:
                chosen.append((req, n))
                budget -= n
                i += 1

        if self.cfg.early_abort_ttft_slo_s is not None:
            self._early_abort()
        adapters = {r.adapter for r in self.running if r.adapter}
        while self.waiting and not out.preempted_ids and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            name = req.adapter
            if name and name not in adapters and len(adapters) >= self.max_loras_per_batch:
                break
            if name:
                pages = self.pool.load_adapter(name, self.adapter_pages(name))
                if pages is None:
                    break
                if pages:
                    out.adapter_loads.append((name, pages))
                self.pool.pin(name)
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self.pool.grow_kv(req.request_id, req.num_computed_tokens + n):
                if name:
                    self.pool.unpin(name)  # stays cached (its pages are filled this step anyway)
                break
            self.waiting.popleft()
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
            self.running.append(req)
            if name:
                adapters.add(name)
            chosen.append((req, n))
            budget -= n

        if self.lora_cfg.prefetch and not out.preempted_ids:
            self._prefetch(out)

        for req, n in chosen:
            start = req.num_computed_tokens
            seq = ScheduledSeq(
                request_id=req.request_id,
                token_ids=req.token_slice(start, n),
                start_pos=start,
                kv_pages=list(self.pool.kv_pages(req.request_id)),
                adapter=req.adapter,
                sample=start + n == req.num_tokens,
                params=req.params,
                prompt_len=len(req.prompt_token_ids),
            )
            if req.prompt_logprobs:  # positions whose next prompt token has no logprob yet (not again
                # after a preemption: the recompute feeds the prompt a second time)
                first = max(start, len(req.prompt_logprobs) - 1)
                end = min(start + n, len(req.prompt_token_ids) - 1)
                if first < end:
                    seq.prompt_lp_start = first
                    seq.prompt_lp_targets = req.prompt_token_ids[first + 1 : end + 1]
            if seq.sample and len(req.output_token_ids) < req.params.min_tokens:
                seq.banned_ids = req.stop_ids_banned
            out.seqs.append(seq)
        return out

    def _early_abort(self) -> None:
        """Drops queued requests that can no longer meet their first-token deadline (S-LoRA's early
        abort), so that the capacity goes to requests that still can."""
        slo = self.cfg.early_abort_ttft_slo_s
        if slo is None:
            return
        now = time.monotonic()
        for req in list(self.waiting):
            if not req.output_token_ids and now - req.arrival_time > slo:
                self.waiting.remove(req)
                self.finish(req, "abort")
                self.early_aborted.append(req)
                self.num_early_aborts += 1

    def _prefetch(self, out: SchedulerOutput) -> None:
        """Loads the adapters of the next queued requests into pages that are free now (never evicting,
        keeping a page per running request for its growth), so that their copy overlaps this step and they
        are resident when the requests are admitted."""
        reserve = len(self.running)
        for req in list(itertools.islice(self.waiting, self.max_loras_per_batch)):
            name = req.adapter
            if not name or self.pool.is_resident(name):
                continue
            n = self.adapter_pages(name)
            if self.pool.num_free < n + reserve:
                break
            pages = self.pool.load_adapter(name, n)
            assert pages is not None  # n free pages were checked above
            out.adapter_loads.append((name, pages))
            out.prefetch.append(name)
            self.num_prefetches += 1

    def update(self, out: SchedulerOutput, requests: dict[str, Request], result: ModelOutput) -> list[Request]:
        """Advances the scheduled requests; appends the sampled tokens (and their TokenLogprobs, where
        requested) and the prompt logprobs computed this step. Returns the requests that reached the end
        of their tokens (the engine then checks their stop conditions); a request with max_tokens 0 gets
        no token then (its prompt is done)."""
        it = iter(zip(result.tokens, result.logprobs or [None] * len(result.tokens)))
        got = []
        for s in out.seqs:
            req = requests[s.request_id]
            req.num_computed_tokens = s.start_pos + len(s.token_ids)
            if s.prompt_lp_targets:
                req.prompt_logprobs += result.prompt_logprobs[s.request_id]
            if s.sample:
                tok, lp = next(it)
                if req.params.max_tokens > 0:
                    req.output_token_ids.append(tok)
                    if lp is not None:
                        req.output_logprobs.append(lp)
                got.append(req)
        return got
