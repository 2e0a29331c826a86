"""Iteration-level scheduler (continuous batching) over the unified pool.

Contract: each step is one forward pass; `schedule()` decides how many tokens of each request it
computes (`{request: num_new_tokens}`), so prefill chunks and decodes share a step. A request's
`num_computed_tokens` counts the tokens whose K/V are in the pool; it is scheduled
`min(num_tokens - num_computed_tokens, token budget)` new tokens, and samples a token when they reach
its end. `schedule()` advances `num_computed_tokens` (the step will compute them) and counts the token the
step samples in `num_pending` until `update()` appends it.

Asynchronous scheduling (app/engine.py): step N+1 is scheduled before step N's sampled tokens are read.
A request whose token is pending then gets one token that is a placeholder (`ScheduledSeq.from_last_step`:
the runner feeds the token it sampled for the request in step N, on the device). A request is not
scheduled while it has nothing to compute but its pending result, or when its pending token reaches
max_tokens. A request that turns out to have finished at step N has one extra token computed by step N+1,
which `update()` discards. Its pages are freed when the engine learns it finished; work still queued on
the device may use them then, which is safe because every later use of those pages is queued after it
on the same stream (adapter prefetches on the side stream wait for it, see ModelRunner._load_adapters).

Order: running requests first (admission order), then waiting ones in the order of the admission policies
below. A waiting request is admitted when its adapter is (or can be made) resident and pinned, its KV pages
fit, the batch has room for one more distinct adapter and `max_num_seqs` is not reached; admission stops at
the first one that cannot be. While requests run, a new one must also leave `admission_headroom_pages`
allocatable pages per running request once its adapter and first chunk are placed: room for the running
requests to grow, so that an admission rarely costs a preemption (measured: benchmarks/results/
session-2026-12-06b/ run 2). When a running request needs a KV page and none is free, the most recently
admitted request is preempted by recompute: its pages are freed, its adapter unpinned, and it goes back to
the front of the queue with its generated tokens kept, to be prefilled again later (same output for greedy
and seeded sampling). A request that could never fit alone is refused when added, so preemption always makes progress.

Prefix caching (app/pool.py, on with PoolConfig.enable_prefix_caching): when a request is admitted with no
K/V computed (new, or preempted), it attaches the cached pages of its longest run of leading full pages
(same adapter, same token ids), at most up to its last token (which must be computed to sample), and starts
its prefill after them; a request that wants prompt logprobs computes them all. A full page is registered
once the step that computed it has returned its results (`update`), so a failed step's pages never are,
and every step that reads a registered page was launched after the one that wrote it.

Admission policies (SchedulerConfig / LoRAConfig; `_admission_order`, `_early_abort`):
  * queue order: preempted requests first, then FCFS (oldest first) or LCFS (newest first); or priority
    (vLLM's): lowest `SamplingParams.priority` first, then oldest (a preempted request keeps its arrival time);
    the running batch is then kept in that order, so the request preempted for pages is one of lowest priority,
    and the predicted early abort never switches to newest first;
  * early abort (`early_abort_ttft_slo_s`): a queued request without a token that can no longer meet its first-token
    deadline (arrival + early_abort_ttft_slo_s) is finished with reason "abort" before it takes GPU time. `expired`:
    its deadline has passed. `predicted` (S-LoRA's early abort): its wait, predicted as its position in the
    order past the seats free now (those are taken at once) over PREDICTED_RATE_MARGIN times the admission
    rate measured in saturated steps (from a schedule that left requests waiting to the next one that did
    too) of the last early_abort_ttft_slo_s seconds, would pass it; and while the
    arrival rate of that window exceeds the admission rate and the queue past the free seats is longer than
    one deadline's admissions (at that margin), the newest requests go first (the oldest would miss their
    deadline anyway; a shorter burst FCFS drains in time keeps its order);
  * adapter clustering (`cluster_min_adapters`): once the batch holds that many distinct adapters, waiting
    requests whose adapter is in it (or that need none) go before the others, except that a request that
    has waited `cluster_max_wait_s` keeps its place (aging: nothing starves).
`clock` (time.monotonic by default, a fake one in tests) gives the times these policies compare.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from app.config import LoRAConfig, SchedulerConfig
from app.pool import PagePool
from app.request import ModelOutput, Request, RequestStatus, SamplingParams

# The predicted early abort plans with this multiple of the admission rate it measured: the rate comes from
# the saturated steps of one deadline's window (few admissions, a noisy figure) and a dropped request cannot
# be taken back, while one admitted that then misses its deadline costs only its seat. With the fake-clock
# scheduler on gamma traces (benchmarks/results/session-2026-12-03-pm/early_abort_sim) 1.5 attained more
# than 1 in every (rate, cv) cell tried.
PREDICTED_RATE_MARGIN = 1.5


def _priority_key(req: Request) -> tuple[int, float]:
    return req.params.priority, req.arrival_time


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
    # token_ids is [placeholder]: the runner feeds the token it sampled for this request in the last step
    # it launched (asynchronous scheduling; see the module docstring)
    from_last_step: bool = False
    # the tokens before start_pos, in the first step of a request that starts after cached prefix pages and
    # whose sampling needs its tokens so far (SamplingParams.needs_history); empty otherwise
    history_ids: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    seqs: list[ScheduledSeq] = field(default_factory=list)  # one-token rows (decodes) first, then the rest
    adapter_loads: list[tuple[str, list[int]]] = field(default_factory=list)  # fill these pages first
    finished_ids: list[str] = field(default_factory=list)  # drop per-request state
    prefetch: list[str] = field(default_factory=list)  # loads for queued requests: may overlap the step
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)


class Scheduler:
    def __init__(
        self,
        cfg: SchedulerConfig,
        lora_cfg: LoRAConfig,
        pool: PagePool,
        adapter_pages: Callable[[str], int],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg, self.lora_cfg, self.pool = cfg, lora_cfg, pool
        if cfg.max_num_seqs is None or cfg.max_num_batched_tokens is None or lora_cfg.max_loras_per_batch is None:
            raise ValueError("the scheduler needs resolved sizes (EngineConfig.with_device_defaults)")
        self.max_num_seqs: int = cfg.max_num_seqs
        self.max_num_batched_tokens: int = cfg.max_num_batched_tokens
        self.max_loras_per_batch: int = lora_cfg.max_loras_per_batch
        self.adapter_pages = adapter_pages
        self.clock = clock
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._finished_ids: list[str] = []
        self.num_preemptions = 0
        self.num_prefetches = 0
        self.num_early_aborts = 0
        self.early_aborted: list[Request] = []  # drained by the engine, which reports them
        self.num_load_wait_steps = 0  # steps that copied the adapter of a request they admitted (no prefetch)
        self.num_cluster_steps = 0  # steps whose admission order was clustered by adapter
        # prefix caching: prompt tokens of the admissions that looked the cache up, and tokens found there
        self.prefix_queried_tokens = 0
        self.prefix_hit_tokens = 0
        # predicted early abort: arrival times, and (time, admitted, step seconds) of saturated steps, within
        # the last early_abort_ttft_slo_s seconds
        self._arrivals: deque[float] = deque()
        self._service: deque[tuple[float, int, float]] = deque()
        self._last_schedule: float | None = None  # the last schedule, if it left requests waiting

    # ---- queue -----------------------------------------------------------------------------------
    def pages_to_fit(self, req: Request) -> int:
        n = -(-(len(req.prompt_token_ids) + req.params.max_tokens) // self.pool.page_size)
        return n + (self.adapter_pages(req.adapter) if req.adapter else 0)

    def add(self, req: Request) -> None:
        need = self.pages_to_fit(req)
        ad = self.adapter_pages(req.adapter) if req.adapter else 0
        if need > self.pool.num_pages or need - ad > self.pool.kv_limit or ad > (self.pool.adapter_limit or need):
            raise ValueError(
                f"request needs {need} pool pages (prompt + max_tokens + adapter) but the pool "
                f"has {self.pool.num_pages} ({self.pool.kv_limit} for KV): lower max_tokens or shorten the prompt"
            )
        self.waiting.append(req)
        if self._predicting:
            self._arrivals.append(req.arrival_time)

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
        elif req.status == RequestStatus.WAITING and req in self.waiting:  # preempted with a token pending
            self.waiting.remove(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.finish_time = self.clock()
        self._finished_ids.append(req.request_id)

    def _release(self, req: Request) -> None:
        self.pool.free_kv(req.request_id)
        if req.adapter:
            self.pool.unpin(req.adapter)
            if not self.lora_cfg.keep_idle_adapters and not self.pool.is_pinned(req.adapter):
                self.pool.evict(req.adapter)  # S-LoRA: an adapter leaves the GPU with its last request

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.status = RequestStatus.WAITING
        req.num_computed_tokens = req.num_kv_confirmed = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # ---- one step --------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_ids=self._finished_ids)
        self._finished_ids = []
        budget = self.max_num_batched_tokens
        chosen: list[tuple[Request, int]] = []
        attached: set[str] = set()  # requests admitted in this schedule after cached prefix pages

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens + req.num_pending - req.num_computed_tokens, budget)
            if n <= 0 or (req.num_pending and len(req.output_token_ids) + req.num_pending >= req.params.max_tokens):
                i += 1  # its last launched step's result decides what comes next
                continue
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

        if not out.preempted_ids:
            self._admit(out, chosen, budget, attached)

        if self.lora_cfg.prefetch and not out.preempted_ids:
            self._prefetch(out)

        # one-token rows first: the runner sends that prefix of a mixed step to the decode attention kernel
        for req, n in sorted(chosen, key=lambda c: c[1] != 1):
            start = req.num_computed_tokens
            placeholder = start >= req.num_tokens
            if placeholder and (n != 1 or start != req.num_tokens or req.num_pending != 1):
                raise AssertionError(
                    f"request {req.request_id}: {n} tokens from {start} with {req.num_pending} pending"
                )
            seq = ScheduledSeq(
                request_id=req.request_id,
                token_ids=[0] if placeholder else req.token_slice(start, n),
                start_pos=start,
                kv_pages=list(self.pool.kv_pages(req.request_id)),
                adapter=req.adapter,
                sample=start + n == req.num_tokens + req.num_pending,
                params=req.params,
                prompt_len=len(req.prompt_token_ids),
                from_last_step=placeholder,
            )
            if attached and req.request_id in attached and req.params.needs_history:
                seq.history_ids = req.token_slice(0, start)
            req.num_computed_tokens = start + n
            if seq.sample and req.params.max_tokens > 0:
                req.num_pending += 1
            if req.prompt_logprobs:  # positions whose next prompt token has no logprob yet (not again
                # after a preemption: the recompute feeds the prompt a second time)
                first = max(start, len(req.prompt_logprobs) - 1)
                end = min(start + n, len(req.prompt_token_ids) - 1)
                if first < end:
                    seq.prompt_lp_start = first
                    seq.prompt_lp_targets = req.prompt_token_ids[first + 1 : end + 1]
            if seq.sample and len(req.output_token_ids) + req.num_pending - 1 < req.params.min_tokens:
                seq.banned_ids = req.stop_ids_banned
            out.seqs.append(seq)
        return out

    # ---- admission (waiting queue) -----------------------------------------------------------------
    def _admit(self, out: SchedulerOutput, chosen: list[tuple[Request, int]], budget: int, attached: set[str]) -> None:
        """Admits waiting requests in the policies' order (module docstring) while the step has room; adds to
        `attached` those that start after cached prefix pages."""
        now = self.clock()
        if self.cfg.early_abort_ttft_slo_s is not None:
            self._early_abort(now)
        adapters = {r.adapter for r in self.running if r.adapter}
        admitted, loads = 0, len(out.adapter_loads)
        for req in self._admission_order(now, adapters):
            if budget <= 0 or len(self.running) >= self.max_num_seqs:
                break
            name = req.adapter
            if name and name not in adapters and len(adapters) >= self.max_loras_per_batch:
                break
            if self.running and not self._leaves_headroom(req, budget):
                break
            if name:
                pages = self.pool.load_adapter(name, self.adapter_pages(name))
                if pages is None:
                    break
                if pages:
                    out.adapter_loads.append((name, pages))
                self.pool.pin(name)
            hit = self._attach_prefix(req)
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self.pool.grow_kv(req.request_id, req.num_computed_tokens + n):
                if hit:
                    self.pool.free_kv(req.request_id)  # the pages go back to the cache
                    req.num_computed_tokens = req.num_kv_confirmed = 0
                if name:
                    self.pool.unpin(name)  # stays cached (its pages are filled this step anyway)
                break
            if hit:
                attached.add(req.request_id)
            if hit is not None:
                self.prefix_queried_tokens += req.num_tokens
                self.prefix_hit_tokens += hit
                if req.first_scheduled_time is None:
                    req.num_cached_tokens = hit
            self._take_waiting(req)
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
                admitted += 1
            if self.cfg.queue_order == "priority":
                bisect.insort(self.running, req, key=_priority_key)
            else:
                self.running.append(req)
            if name:
                adapters.add(name)
            chosen.append((req, n))
            budget -= n
        if len(out.adapter_loads) > loads:
            self.num_load_wait_steps += 1
        if self._predicting:  # a saturated step: one between two schedules that both left requests waiting
            if self.waiting and self._last_schedule is not None:
                self._service.append((now, admitted, now - self._last_schedule))
            self._last_schedule = now if self.waiting else None

    def _leaves_headroom(self, req: Request, budget: int) -> bool:
        """Whether admitting `req` (its adapter pinned, its first chunk's KV pages, no prefix-cache hit counted)
        keeps `admission_headroom_pages` allocatable pages per running request."""
        n = min(req.num_tokens - req.num_computed_tokens, budget)
        need = self.pool.kv_pages_needed(req.request_id, req.num_computed_tokens + n)
        if req.adapter and not self.pool.is_pinned(req.adapter):  # loaded, or pinned out of the evictable cache
            need += self.adapter_pages(req.adapter)
        return self.pool.available() - need >= self.cfg.admission_headroom_pages * len(self.running)

    def _attach_prefix(self, req: Request) -> int | None:
        """Prefix caching at admission (module docstring): attaches the request's cached leading pages and
        counts them as computed. Returns the tokens found, or None where the cache was not looked up."""
        if (
            not self.pool.prefix_caching
            or req.num_computed_tokens
            or req.params.prompt_logprobs is not None
            or self.pool.kv_pages(req.request_id)
        ):
            return None
        ps = self.pool.page_size
        blocks = (tuple(req.token_slice(i * ps, ps)) for i in range((req.num_tokens - 1) // ps))
        pages = self.pool.match_prefix(req.adapter, blocks, req.params.cache_salt)
        self.pool.attach_prefix(req.request_id, req.adapter, pages)
        req.num_computed_tokens = req.num_kv_confirmed = len(pages) * ps
        return req.num_computed_tokens

    def _register_blocks(self, req: Request) -> None:
        """Registers the request's full pages whose K/V a returned step computed (module docstring)."""
        ps = self.pool.page_size
        have = self.pool.registered_blocks(req.request_id)
        full = min(req.num_kv_confirmed, req.num_tokens) // ps
        if full > have:
            blocks = [tuple(req.token_slice(i * ps, ps)) for i in range(have, full)]
            self.pool.register_blocks(req.request_id, req.adapter, blocks, req.params.cache_salt)

    def _take_waiting(self, req: Request) -> None:
        if self.waiting[0] is req:
            self.waiting.popleft()
        elif self.waiting[-1] is req:
            self.waiting.pop()
        else:
            self.waiting.remove(req)

    @property
    def _predicting(self) -> bool:
        return self.cfg.early_abort_ttft_slo_s is not None and self.cfg.early_abort == "predicted"

    def rates(self, now: float | None = None) -> tuple[float | None, float | None]:
        """(arrival rate, admission rate) in requests per second over the last early_abort_ttft_slo_s seconds, as the
        predicted early abort measures them (module docstring); None where not measured (yet)."""
        if not self._predicting:
            return None, None
        now = self.clock() if now is None else now
        window = self.cfg.early_abort_ttft_slo_s
        assert window is not None  # _predicting
        while self._arrivals and self._arrivals[0] < now - window:
            self._arrivals.popleft()
        while self._service and self._service[0][0] < now - window:
            self._service.popleft()
        arrival = len(self._arrivals) / window if self._arrivals else None
        busy = sum(dt for _, _, dt in self._service)
        admitted = sum(n for _, n, _ in self._service)
        service = admitted / busy if busy > 0 and admitted > 0 else None
        return arrival, service

    @property
    def _free_seats(self) -> int:
        return max(0, self.max_num_seqs - len(self.running))

    def _newest_first(self, now: float, rates: tuple[float | None, float | None] | None = None) -> bool:
        """Predicted early abort: newest first while overloaded, that is while requests arrive faster than
        they are admitted and the queue past the free seats is longer than what is admitted within one
        deadline (then FCFS would make every request miss; a short burst that FCFS drains in time keeps
        its order). Otherwise the configured queue order. `rates`: `self.rates(now)` when the caller has it."""
        if self.cfg.queue_order == "priority":
            return False
        if self._predicting:
            arrival, service = rates or self.rates(now)
            slo = self.cfg.early_abort_ttft_slo_s
            assert slo is not None  # _predicting
            if arrival is not None and service is not None:
                backlog = len(self.waiting) - self._free_seats
                return arrival > service and backlog > PREDICTED_RATE_MARGIN * service * slo
        return self.cfg.queue_order == "lcfs"

    def _queue_order(self, newest_first: bool) -> list[Request]:
        """The waiting queue with the preempted requests (at its front) first, then the others oldest or
        newest first; by priority, then arrival, with queue_order "priority"."""
        if self.cfg.queue_order == "priority":
            return sorted(self.waiting, key=_priority_key)
        queue = list(self.waiting)
        resumed = sum(1 for _ in itertools.takewhile(lambda r: r.num_preemptions > 0, queue))
        return queue[:resumed] + queue[resumed:][::-1] if newest_first else queue

    def _admission_order(self, now: float, adapters: set[str]) -> Iterator[Request]:
        """The waiting requests in the order admission tries them. `adapters` (the batch's, grown by the
        caller as requests are admitted) is read when clustering starts. The caller may take each yielded
        request out of the queue before asking for the next."""
        newest_first = self._newest_first(now)
        k_min = self.lora_cfg.cluster_min_adapters
        if not newest_first and k_min is None and self.cfg.queue_order != "priority":
            # FCFS: the head, again after each admission
            while self.waiting:
                yield self.waiting[0]
            return
        order = self._queue_order(newest_first)
        for i, req in enumerate(order):
            if k_min is not None and len(adapters) >= k_min:
                self.num_cluster_steps += 1
                rest = order[i:]
                max_wait = self.lora_cfg.cluster_max_wait_s
                first = [
                    r.adapter is None
                    or r.adapter in adapters
                    or r.num_preemptions > 0
                    or now - r.arrival_time >= max_wait
                    for r in rest
                ]
                yield from (r for r, f in zip(rest, first) if f)
                yield from (r for r, f in zip(rest, first) if not f)
                return
            yield req

    def _early_abort(self, now: float) -> None:
        """Drops queued requests that can no longer meet their first-token deadline (S-LoRA's early abort,
        module docstring), so that the capacity goes to requests that still can."""
        slo = self.cfg.early_abort_ttft_slo_s
        assert slo is not None  # called only with an early-abort deadline
        rates = self.rates(now)
        service = rates[1] * PREDICTED_RATE_MARGIN if rates[1] else None
        ahead = 0  # requests that will be admitted before the one looked at
        free = self._free_seats  # seats the first `free` of them take at once
        dropped = []
        for req in self._queue_order(self._newest_first(now, rates)):
            if req.output_token_ids or req.num_pending:  # it has its first token (a pending one, when async)
                ahead += 1
                continue
            wait = max(0, ahead - free) / service if service else 0.0
            if now - req.arrival_time + wait > slo:
                dropped.append(req)
            else:
                ahead += 1
        if not dropped:
            return
        gone = set(map(id, dropped))
        self.waiting = deque(r for r in self.waiting if id(r) not in gone)
        for req in dropped:
            self.finish(req, "abort")
            self.early_aborted.append(req)
            self.num_early_aborts += 1

    def _prefetch(self, out: SchedulerOutput) -> None:
        """Loads the adapters of the next queued requests into pages that are free now or idle in the
        prefix cache (never evicting an adapter; keeping a page per running request for its growth), so that
        their copy overlaps this step and they are resident when the requests are admitted. It reads the
        queue in admission order (by priority, oldest or newest first; clustering aside) and only as far as
        the next step can admit: the queued requests whose prompts fill one step's token budget (the first
        one always). Reading further queued hundreds of copies at once after a burst of cold adapters, which
        held the host in the step that issued them and the next step waiting for all of them, and loaded
        adapters that were evicted again before use (benchmarks/results/session-2026-12-07e)."""
        reserve = len(self.running)
        k = self.max_loras_per_batch
        if self.cfg.queue_order == "priority":
            ahead = heapq.nsmallest(k, self.waiting, key=_priority_key)
        elif self._newest_first(self.clock()):
            ahead = self._queue_order(newest_first=True)[:k]
        else:
            ahead = list(itertools.islice(self.waiting, k))
        tokens = self.max_num_batched_tokens
        for req in ahead:
            if tokens <= 0:
                break
            tokens -= req.num_tokens - req.num_computed_tokens
            name = req.adapter
            if not name or self.pool.is_resident(name):
                continue
            n = self.adapter_pages(name)
            if self.pool.num_free + self.pool.num_cached_kv < n + reserve:  # idle prefix pages give way
                break
            pages = self.pool.load_adapter(name, n)
            if pages is None:  # free pages, but a static split's adapter share is full
                break
            out.adapter_loads.append((name, pages))
            out.prefetch.append(name)
            self.num_prefetches += 1

    def update(self, out: SchedulerOutput, requests: dict[str, Request], result: ModelOutput) -> list[Request]:
        """Takes in a step's results: appends the sampled tokens (and their TokenLogprobs, where requested)
        and the prompt logprobs computed by the step. `requests`: the step's requests by id, as they were
        when it was scheduled (a finished one's results are dropped: an aborted request, or one that
        finished at the step before, see the module docstring). Returns the requests that reached the end
        of their tokens (the engine then checks their stop conditions); a request with max_tokens 0 gets
        no token then (its prompt is done)."""
        it = iter(zip(result.tokens, result.logprobs or [None] * len(result.tokens)))
        got = []
        caching, ps = self.pool.prefix_caching, self.pool.page_size
        for s in out.seqs:
            maybe = requests.get(s.request_id)
            tok, lp = next(it) if s.sample else (None, None)
            if maybe is None or maybe.finished:
                continue
            req = maybe
            if caching and req.status == RequestStatus.RUNNING:  # not preempted since: this step's K/V is there
                end = s.start_pos + len(s.token_ids)
                if end > req.num_kv_confirmed:
                    req.num_kv_confirmed = end
                    if end // ps > s.start_pos // ps:
                        self._register_blocks(req)
            if s.prompt_lp_targets:
                req.prompt_logprobs += result.prompt_logprobs[s.request_id]
            if s.sample:
                assert tok is not None
                if req.params.max_tokens > 0:
                    req.num_pending -= 1
                    req.output_token_ids.append(tok)
                    if lp is not None:
                        req.output_logprobs.append(lp)
                got.append(req)
        return got
