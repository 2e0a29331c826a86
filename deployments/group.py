"""The TP-group deployment: one Serve replica owning one `Engine` (in-process for one device, or over a
`TPExecutor` of N rank actors for tensor parallelism) and its single step loop.

In:  `subscribe(subscriber)` (a streaming method: call it through `handle.options(stream=True)`) and
     `start(subscriber, [(request_id, prompt_token_ids, params)], adapter)`: an ingress replica keeps one
     subscription per group and starts every request on it; `abort([request_id])`; `generate(request_id,
     prompt_token_ids, params, adapter)`, one request's own stream (for a caller of one request);
     `add_adapter` / `remove_adapter` (a refusal is a returned `{"error", "status"}`), `list_adapters`, `stats`.
Out: per request, a sequence of items: `RequestOutput`s whose `delta_text` / `delta_token_ids` are new since
     the previous item; the last one (`finished=True`) also carries the cumulative `text` and `token_ids`. An
     error is an item `{"error", "status"}` (and `retry_after_s` for an early abort) that ends the sequence.
     The first item comes with the request's first tokens, or is the error that ended it before any: when the
     engine refuses the request (400 / 404), drops it before it ran (early abort: 429), or fails before its
     first token (503: nothing ran, the caller may send it elsewhere). So a caller that has the first item
     knows whether the request started, without a separate acknowledgement. `generate` yields a request's
     items; `subscribe` yields batches {request_id: item} of its requests' items (`start` returns a request's
     refusal instead: its only item).

Multiplexing and coalescing: every Serve streaming item costs CPU in this replica and in the caller (~0.3 ms),
so the group sends neither one stream per request nor one item per engine step. A subscriber's outputs go out
as one batch (`_Outbox`): at once when a request has its first tokens (until the client has text to show),
its last output or an error; in between at most every `stream_interval_s` (0 = every step, merging only the
steps that finished while the consumer was still busy with an earlier batch).

Concurrency: the engine is not thread-safe. One engine thread owns it: everything that touches it (new
requests, aborts, adapter registrations) is queued as a command by the event loop and applied by that thread
between two steps (an adapter is read, validated and packed before, in another thread:
`Engine.prepare_adapter`, so a load never stalls running streams); the thread runs `engine.step()` back to
back while there is work and hands each step's
outputs (and command results) to the event loop with `call_soon_threadsafe`, without waiting: streaming
overlaps the next step. After each step the thread also takes a `stats()` snapshot, so the event loop
never reads engine state while a step runs. When a consumer goes away (a client disconnect: the ingress calls `abort`;
a cancelled `generate` or `subscribe` stream: its `finally`), the group aborts its requests, so their KV
pages are freed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from app.config import EngineConfig
from app.engine import Engine, EngineDeadError, PreparedAdapter
from app.lora.adapter import AdapterError, AdapterExists
from app.request import RequestOutput, SamplingParams
from deployments.config import GroupSettings
from deployments.metrics import GroupMetrics
from deployments.routing import LinearFit
from deployments.subscription import is_last

logger = logging.getLogger("ray.serve")

EMA = 0.2  # weight of the newest step in the step-time / prefill-rate averages
MIN_RATE_TOKENS = 32  # steps with fewer tokens say little about the prefill rate


class GroupUnavailable(RuntimeError):
    """This group's engine is dead: the request was not run here and may be retried on another group."""


# Commands from the event loop to the engine thread, applied between two steps (`SLoRAGroup._apply`).
@dataclass(frozen=True)
class AddRequest:
    prompt_token_ids: list[int]
    params: SamplingParams
    adapter: str | None
    request_id: str
    arrival_time: float


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class RegisterAdapter:
    prepared: PreparedAdapter


@dataclass(frozen=True)
class RemoveAdapter:
    name: str


@dataclass(frozen=True)
class ResetPrefixCache:
    pass


Command = AddRequest | AbortRequest | RegisterAdapter | RemoveAdapter | ResetPrefixCache


@dataclass
class _Cmd:
    """A queued command and the future its result goes to (None: nobody waits for it)."""

    cmd: Command
    fut: asyncio.Future | None = None


def _merge(a: RequestOutput, b: RequestOutput) -> RequestOutput:
    """Two outputs of one request as one (coalescing, or a consumer slower than the step loop)."""
    lps = None if b.delta_logprobs is None else (a.delta_logprobs or []) + b.delta_logprobs
    return dataclasses.replace(
        b,
        delta_text=a.delta_text + b.delta_text,
        delta_token_ids=a.delta_token_ids + b.delta_token_ids,
        delta_logprobs=lps,
        prompt_logprobs=b.prompt_logprobs if b.prompt_logprobs is not None else a.prompt_logprobs,
    )


class _Outbox:
    """One subscriber's outputs on their way from the step loop (`put`, event loop) to its stream (`get`):
    an ingress replica's multiplexed stream (every request it started on this group), or one request's
    `generate` stream.

    Each request's outputs are merged as they arrive. `get` returns every pending output at once, as one
    batch {request_id: item}, when one of them is urgent (a request that has not yet sent the client
    something to show: an output with text, or with tokens when the request does not detokenize, as text
    can be held back by a stop string or a partial character; a finished output; an error dict, which
    replaces tokens still pending; nothing follows a last item) or once `interval` seconds have passed since
    the last batch. So a busy subscriber gets about one item per step or per interval, whatever the number
    of its requests: a Serve stream item costs ~0.3 ms of CPU in the sending and the receiving replica
    (session-2026-12-04d ray_stream_cost), one per request per step was most of the group's CPU."""

    def __init__(self, interval: float):
        self.interval = interval
        self.requests: dict[str, bool] = {}  # open requests -> do they detokenize (what "started" means)
        self.pending: dict[str, RequestOutput | dict] = {}
        self.started: set[str] = set()  # requests that sent the client something to show
        self.urgent = False
        self.due = float("-inf")  # non-urgent outputs may go out from this time on
        self.ready = asyncio.Event()

    def open(self, request_id: str, text: bool = True) -> None:
        self.requests[request_id] = text

    def close(self, request_id: str) -> None:
        """Forgets a request and whatever it had pending (it was aborted: its consumer is gone)."""
        self.requests.pop(request_id, None)
        self.pending.pop(request_id, None)
        self.started.discard(request_id)

    def put(self, request_id: str, item: RequestOutput | dict) -> None:
        if request_id not in self.requests:
            return
        p = self.pending.get(request_id)
        if p is not None and is_last(p):
            return
        merged = _merge(p, item) if isinstance(p, RequestOutput) and isinstance(item, RequestOutput) else item
        self.pending[request_id] = merged
        if is_last(merged) or request_id not in self.started:
            self.urgent = True
            self.ready.set()
        elif time.monotonic() >= self.due:
            self.ready.set()

    def _shows(self, request_id: str, item: RequestOutput | dict) -> bool:
        return isinstance(item, RequestOutput) and bool(
            item.delta_text if self.requests.get(request_id, True) else item.delta_token_ids
        )

    async def get(self) -> dict[str, RequestOutput | dict]:
        while True:
            now = time.monotonic()
            if self.pending and (self.urgent or now >= self.due):
                batch, self.pending, self.urgent = self.pending, {}, False
                for rid, item in batch.items():
                    if is_last(item):
                        self.requests.pop(rid, None)
                        self.started.discard(rid)
                    elif self._shows(rid, item):
                        self.started.add(rid)
                self.due = now + self.interval
                return batch
            self.ready.clear()
            if not self.pending:
                await self.ready.wait()
            else:
                try:
                    await asyncio.wait_for(self.ready.wait(), self.due - now)
                except TimeoutError:
                    pass


class SLoRAGroup:
    def __init__(
        self,
        name: str,
        cfg: EngineConfig | dict,
        adapters: dict[str, str] | None = None,
        settings: GroupSettings | dict | None = None,
        num_threads: int | None = None,
        ray_metrics: bool = True,
        served_model_name: str | None = None,
    ):
        """A group named `name` running `cfg` with `settings` (deployments/config.py: TP size, stream
        interval), the `adapters` {name: path} registered at start; `num_threads`: torch's CPU threads."""
        if isinstance(cfg, dict):
            cfg = EngineConfig(**cfg)
        settings = GroupSettings.model_validate(settings or {})
        tensor_parallel_size = settings.tensor_parallel_size
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self.name = name
        self.tensor_parallel_size = tensor_parallel_size
        self.stream_interval_s = settings.stream_interval_s
        executor = None
        if tensor_parallel_size > 1:
            from deployments.tp import TPExecutor

            executor = TPExecutor(cfg, tensor_parallel_size)
        started, t0 = time.time(), time.perf_counter()
        self.engine = Engine(cfg, executor=executor)
        engine_s = time.perf_counter() - t0
        if self.engine.warmup_s is not None:
            logger.info(
                "group %s: warmup (every kernel variant and CUDA graph) took %.1f s", name, self.engine.warmup_s
            )
        t0 = time.perf_counter()
        # pageable at first: pinning is the slowest part of a large start (~25 s for 1,000 7B adapters on an
        # H200 host) and serial, so it runs after the group is ready, in `_pin_adapters`
        self.engine.add_adapters(adapters or {}, pin=False)
        adapters_s = time.perf_counter() - t0
        # the decode graphs of the LoRA groups these adapters target (when warm-up is on), before serving
        graphs_s = self.engine.warmup_adapter_graphs()
        self.engine.freeze_heap()  # this process serves this engine until it ends
        # when the group started (wall clock) and how long each part took: in stats() for startup benchmarks
        self.startup = {
            "started": started,
            "model_s": engine_s - (self.engine.warmup_s or 0.0),
            "warmup_s": (self.engine.warmup_s or 0.0) + graphs_s,
            "adapters_s": adapters_s,
            "num_adapters": len(adapters or {}),
            # seconds the background pinning of their host copies took, once it is over (0.0: nothing to
            # pin, or it failed); None while it runs, when page fills may still copy from pageable memory
            "adapters_pinned_s": None if adapters else 0.0,
        }
        # the table's version: this replica's own prefix (a replacement replica starts anew) and a count
        self._adapters_epoch, self._adapters_count = uuid.uuid4().hex[:12], 0
        self._rebuild_adapter_table()
        # metrics carry the model name clients use (the ingress's), so both exports label alike
        self.metrics = GroupMetrics(name, served_model_name or self.engine.model_name, ray_export=ray_metrics)
        self._cmds: deque[_Cmd] = deque()  # appended by the event loop, taken by the engine thread
        self._boxes: dict[str, _Outbox] = {}  # subscriber id -> its outbox
        self._routes: dict[str, _Outbox] = {}  # request id -> the outbox its outputs go to
        self._last_token_time: dict[str, float] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._failed: BaseException | None = None
        self._step_time: float | None = None
        self._prefill_tps: float | None = None
        self._step_cost = LinearFit()  # step seconds over tokens computed in the step
        # (steps, wall seconds, engine-thread CPU seconds) of engine.step() calls, replaced as one tuple per step
        self._step_totals = (0, 0.0, 0.0)
        self._stats_calls = 0  # stats() answered: the ingresses' polls (they poll an idle group less often)
        self._snapshot = self._take_snapshot()
        if adapters:
            threading.Thread(target=self._pin_adapters, name="adapter-pin", daemon=True).start()

    def _pin_adapters(self) -> None:
        """Background thread: pins the startup adapters' host copies (page fills from them become
        asynchronous); a failure only leaves them pageable."""
        t0 = time.perf_counter()
        try:
            n = self.engine.pin_adapters()
        except Exception as e:  # noqa: BLE001 - pinned memory is an optimisation
            logger.warning("group %s: pinning the adapters' host copies failed, they stay pageable: %r", self.name, e)
            self.startup["adapters_pinned_s"] = 0.0
            return
        self.startup["adapters_pinned_s"] = dt = time.perf_counter() - t0
        if n:
            logger.info("group %s: %d adapters' host copies pinned in %.1f s", self.name, n, dt)

    # ---- the step loop ---------------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._thread is None:
            self._event_loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._engine_thread, name=f"engine-{self.name}", daemon=True)
            self._thread.start()

    def _submit(self, cmd: _Cmd) -> None:
        self._ensure_loop()
        self._cmds.append(cmd)
        self._wake.set()

    def _engine_thread(self) -> None:
        """The only thread that touches the engine: applies queued commands, then runs steps back to back
        while there is work, handing each step's outputs to the event loop without waiting for it (the
        streams' work overlaps the next step). Ends when the engine dies (after handing that over too)."""
        loop = self._event_loop
        assert loop is not None, "the thread is started from the event loop"
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._cmds or self.engine.has_unfinished():
                cmds = [self._cmds.popleft() for _ in range(len(self._cmds))]
                try:
                    results, outputs, t_end, adapters = self._run(cmds)
                except BaseException as e:  # noqa: BLE001 - the engine is dead: fail everything waiting on it
                    loop.call_soon_threadsafe(self._die, e, cmds)
                    return
                loop.call_soon_threadsafe(self._deliver, results, outputs, t_end, adapters)

    def _deliver(self, results: list, outputs: list[RequestOutput], t_end: float, adapters: int | None) -> None:
        """Event loop: resolve the applied commands' futures, route a step's outputs to their streams."""
        for fut, value, exc in results:
            if fut is not None and not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(value)
        self._dispatch(outputs, t_end, adapters)

    def _die(self, e: BaseException, cmds: list[_Cmd]) -> None:
        """The engine can run no more steps: from now on this group reports itself unhealthy (Serve replaces
        the replica; the ingresses route around it), every open stream ends with a 503 error item and every
        queued command's future fails, so that nothing waits on a dead engine."""
        if not isinstance(e, asyncio.CancelledError):
            logger.error("group %s: the engine failed, the group is unhealthy until replaced: %r", self.name, e)
        self._failed = e
        err = GroupUnavailable(f"group {self.name} failed: {e!r}")
        for rid, box in self._routes.items():
            box.put(rid, self._unavailable_item(err))
        self._routes.clear()
        for c in [*cmds, *self._cmds]:
            if c.fut is not None and not c.fut.done():
                c.fut.set_exception(err)
        self._cmds.clear()

    @staticmethod
    def _unavailable_item(err: BaseException) -> dict:
        return {"error": str(err), "status": 503}

    def _run(self, cmds: list[_Cmd]):
        """Engine thread: apply the queued commands, run one step if there is work, snapshot stats. Returns
        (command results, outputs, end time, distinct adapters of the step or None without a step). The
        step's time, from the start of this call to its end, is what a client sees between two steps under
        load: it feeds the step-time averages and fit that admission control uses."""
        t0 = time.perf_counter()
        results: list[tuple[asyncio.Future | None, Any, Exception | None]] = []
        for c in cmds:
            try:
                results.append((c.fut, self._apply(c), None))
            except Exception as e:  # noqa: BLE001 - returned to the caller that queued the command
                results.append((c.fut, None, e))
        outputs: list[RequestOutput] = []
        adapters = None
        if self.engine.has_unfinished():
            w0, c0 = time.perf_counter(), time.thread_time()
            outputs = self.engine.step()
            n, wall, cpu = self._step_totals
            self._step_totals = (n + 1, wall + time.perf_counter() - w0, cpu + time.thread_time() - c0)
            adapters = self.engine.last_step_adapters
            self._snapshot = self._take_snapshot()
            dt = time.perf_counter() - t0
            tokens = self.engine.last_step_tokens
            self._step_cost.observe(tokens, dt)
            self._step_time = dt if self._step_time is None else (1 - EMA) * self._step_time + EMA * dt
            if tokens >= MIN_RATE_TOKENS and dt > 0:
                rate = tokens / dt
                self._prefill_tps = rate if self._prefill_tps is None else (1 - EMA) * self._prefill_tps + EMA * rate
        else:
            self._snapshot = self._take_snapshot()
        return results, outputs, time.monotonic(), adapters

    def _apply(self, c: _Cmd) -> Any:
        e, cmd = self.engine, c.cmd
        if isinstance(cmd, AddRequest):
            return e.add_request(cmd.prompt_token_ids, cmd.params, cmd.adapter, cmd.request_id, cmd.arrival_time)
        if isinstance(cmd, AbortRequest):
            return e.abort(cmd.request_id)
        if isinstance(cmd, RegisterAdapter):
            info = e.register_adapter(cmd.prepared)
            self._rebuild_adapter_table()
            return {"name": info.name, "path": info.path, "rank": info.rank, "num_pages": info.num_pages}
        if isinstance(cmd, RemoveAdapter):
            path = e.adapters[cmd.name].path if cmd.name in e.adapters else None
            e.remove_adapter(cmd.name)
            self._rebuild_adapter_table()
            return path
        if isinstance(cmd, ResetPrefixCache):
            return e.reset_prefix_cache()
        raise TypeError(f"not a command: {cmd!r}")

    def _rebuild_adapter_table(self) -> None:
        """The registered adapters' table, rebuilt only when one is added or removed (a new dict each
        time, never mutated: snapshots share it), so a step's snapshot costs nothing per adapter; and its
        version (`stats(adapters_version=...)` leaves an unchanged table out)."""
        self._adapter_table = {
            n: {"path": a.path, "rank": a.rank, "num_pages": a.num_pages} for n, a in self.engine.adapters.items()
        }
        self._adapters_count += 1
        self._adapters_version = f"{self._adapters_epoch}-{self._adapters_count}"

    def _take_snapshot(self) -> dict:
        """Engine figures read in the thread that owns the engine (between steps)."""
        s = self.engine.stats()
        return {
            "queue": s.queue,
            "pool": dataclasses.asdict(s.pool),
            "resident_adapters": s.resident_adapters,
            "adapters": self._adapter_table,
            "adapters_version": self._adapters_version,
            "steps": s.steps,
            "num_preemptions": s.num_preemptions,
            "num_prefetches": s.num_prefetches,
            "prefix_queried_tokens": s.prefix_queried_tokens,
            "prefix_hit_tokens": s.prefix_hit_tokens,
            "lora": {  # vllm:lora_requests_info
                "running": s.running_adapters,
                "waiting": s.waiting_adapters,
                "max_lora": s.max_loras_per_batch,
            },
            "time": time.time(),
        }

    def _dispatch(self, outputs: list[RequestOutput], now: float, adapters: int | None) -> None:
        """Event loop: route outputs to their streams and record latency metrics (`adapters`: distinct
        adapters of the step, None when no step ran)."""
        m = self.metrics
        if adapters is not None:
            m.inc("engine_steps")
            m.observe("distinct_adapters_per_batch", adapters)
        # token counters once per step (per adapter), not per output: each is a Ray metric call (a flood's
        # CPU profile, session-2026-12-04d: Ray metric calls cost the event loop as much as the dispatch)
        tokens: collections.Counter[str | None] = collections.Counter()
        for out in outputs:
            rid = out.request_id
            n_new = len(out.delta_token_ids)
            if n_new:
                tokens[out.adapter] += n_new
            last = self._last_token_time.get(rid)
            if last is not None and n_new:
                m.observe("inter_token_latency_seconds", (now - last) / n_new)
            if n_new:
                self._last_token_time[rid] = now
            if out.finished:
                self._last_token_time.pop(rid, None)
                t = out.metrics
                if out.finish_reason != "abort":
                    m.request_finished(out.finish_reason or "stop")
                    arrival = t["arrival_time"]
                    assert arrival is not None  # every request has one (Request.arrival_time)
                    if (first := t.get("first_token_time")) is not None:
                        m.observe("time_to_first_token_seconds", first - arrival)
                    if (scheduled := t.get("first_scheduled_time")) is not None:
                        m.observe("request_queue_time_seconds", scheduled - arrival)
                    m.observe("e2e_request_latency_seconds", (t.get("finish_time") or now) - arrival)
            else:  # only the last output carries the cumulative fields; the prompt goes back with it
                out = dataclasses.replace(out, prompt_token_ids=[])
            box = self._routes.get(rid)
            if box is not None:
                item = self._stream_item(out)
                box.put(rid, item)
                if is_last(item):
                    del self._routes[rid]
        if tokens:
            m.inc("generation_tokens", sum(tokens.values()))
            for adapter, n in tokens.items():
                m.adapter_tokens(adapter, n)
        s = self._snapshot
        m.set_counter("adapter_loads", s["pool"]["loads"])
        m.set_counter("adapter_hits", s["pool"]["hits"])
        m.set_counter("adapter_evictions", s["pool"]["evictions"])
        m.set_counter("adapter_prefetches", s["num_prefetches"])
        m.set_counter("preemptions", s["num_preemptions"])
        m.set_counter("prefix_cache_queries", s["prefix_queried_tokens"])
        m.set_counter("prefix_cache_hits", s["prefix_hit_tokens"])
        m.set_gauges(self._gauges(s), s["pool"])

    def _stream_item(self, out: RequestOutput) -> RequestOutput | dict:
        """What a stream sends for an output: an error dict for a failed request (500) and for one that the
        scheduler's early abort dropped before it started (429 with `retry_after_s`: the client may retry;
        one dropped after it started ends with finish_reason "abort")."""
        if out.error is not None:
            return {"error": out.error, "status": 500}
        if out.finish_reason == "abort" and out.metrics.get("first_scheduled_time") is None:
            slo = self.engine.cfg.scheduler.early_abort_ttft_slo_s or 1.0
            return {
                "error": f"overloaded: the request could not start within its time-to-first-token SLO of {slo}s "
                "and was dropped before it ran (early abort); retry later",
                "status": 429,
                "retry_after_s": math.ceil(slo),
            }
        return out

    @staticmethod
    def _gauges(s: dict) -> dict[str, float]:
        return {
            "num_requests_running": s["queue"]["running"],
            "num_requests_waiting": s["queue"]["waiting"],
            "queued_prefill_tokens": s["queue"]["queued_prefill_tokens"],
            "resident_adapters": len(s["resident_adapters"]),
            "registered_adapters": len(s["adapters"]),
        }

    async def _call(self, cmd: Command) -> Any:
        self._check_alive()
        fut = asyncio.get_running_loop().create_future()
        self._submit(_Cmd(cmd, fut))
        return await fut

    def _check_alive(self) -> None:
        """Raises GroupUnavailable when the engine has failed or its executor is dead (a rank actor gone:
        checked without blocking, so a dead idle group is seen at once by `stats` and `check_health`)."""
        if self._failed is None and not self.engine.executor_alive():
            self._die(EngineDeadError("a tensor-parallel rank of the executor is gone"), [])
        if self._failed is not None:
            raise GroupUnavailable(f"group {self.name} failed: {self._failed!r}")

    # ---- requests --------------------------------------------------------------------------------
    async def subscribe(self, subscriber: str) -> AsyncIterator[dict[str, RequestOutput | dict]]:
        """A multiplexed stream (call through `handle.options(stream=True)`): batches {request_id: item} of
        the outputs of every request `start`ed with this `subscriber` id (each request's items as `generate`
        yields them; see `_Outbox` for when a batch goes out). The first batch is empty: the subscription is
        open, `start` may be called. One per ingress replica and group, instead of a Serve stream per request.
        When the stream ends (the subscriber cancelled it or went away), its unfinished requests are aborted."""
        box = _Outbox(self.stream_interval_s)
        self._open_box(subscriber, box)
        try:
            yield {}
            while True:
                yield await box.get()
        finally:
            self._close_box(subscriber, box)

    async def start(
        self, subscriber: str, requests: list[tuple[str, list[int], SamplingParams]], adapter: str | None = None
    ) -> list[dict | None]:
        """Starts `requests` ((request_id, prompt_token_ids, params), one adapter) whose outputs go to
        `subscriber`'s stream (`subscribe`). Returns, per request, None (added: its items follow on the
        stream) or the error item that ends it before it ran: 404 unknown adapter, 400 refused, 503 (the
        group is dead, or `subscriber` has no open stream here, e.g. on a replica that replaced the one it
        subscribed to: nothing ran, the caller may send it elsewhere and subscribe again)."""
        box = self._boxes.get(subscriber)
        if box is None:
            err = {"error": f"group {self.name}: no subscription {subscriber!r}", "status": 503, "unsubscribed": True}
            return [err] * len(requests)
        return await self._start_on(box, requests, adapter)

    async def _start_on(
        self, box: _Outbox, requests: list[tuple[str, list[int], SamplingParams]], adapter: str | None
    ) -> list[dict | None]:
        try:
            self._check_alive()
        except GroupUnavailable as e:
            return [self._unavailable_item(e)] * len(requests)
        loop = asyncio.get_running_loop()
        futs = []
        for rid, ids, params in requests:
            box.open(rid, params.detokenize)
            self._routes[rid] = box
            fut = loop.create_future()
            self._submit(_Cmd(AddRequest(ids, params, adapter, rid, time.monotonic()), fut))
            futs.append(fut)
        results: list[dict | None] = []
        for (rid, ids, _), r in zip(requests, await asyncio.gather(*futs, return_exceptions=True)):
            err = self._refusal(r) if isinstance(r, BaseException) else None
            if err is None:
                self.metrics.inc("prompt_tokens", len(ids))
                self.metrics.adapter_request(adapter, len(ids))
            else:
                if self._routes.get(rid) is box:
                    del self._routes[rid]
                box.close(rid)
            results.append(err)
        return results

    def _refusal(self, e: BaseException) -> dict:
        """The error item for an AddRequest that raised (the request is not in the engine)."""
        if isinstance(e, KeyError):
            return {"error": str(e.args[0]) if e.args else str(e), "status": 404}
        if isinstance(e, ValueError):
            return {"error": str(e), "status": 400}
        if isinstance(e, GroupUnavailable):
            return self._unavailable_item(e)
        logger.error("group %s: adding a request failed: %r", self.name, e)
        return {"error": f"the request could not be added: {e!r}", "status": 500}

    def _open_box(self, subscriber: str, box: _Outbox) -> None:
        old = self._boxes.get(subscriber)
        self._boxes[subscriber] = box
        if old is not None:
            self._close_box(subscriber, old)

    def _close_box(self, subscriber: str, box: _Outbox) -> None:
        """The subscriber is gone: abort its unfinished requests (their KV pages are freed)."""
        if self._boxes.get(subscriber) is box:
            del self._boxes[subscriber]
        for rid in list(box.requests):
            self._abort(rid, box)

    def _abort(self, request_id: str, box: _Outbox | None = None) -> None:
        """Aborts a request its consumer no longer reads (nothing if it already ended)."""
        box = box or self._routes.get(request_id)
        if box is None or request_id not in box.requests:
            return
        box.close(request_id)
        if self._routes.get(request_id) is box:
            del self._routes[request_id]
        self._last_token_time.pop(request_id, None)
        self.metrics.inc("requests_aborted")
        if self._failed is None:
            self._submit(_Cmd(AbortRequest(request_id)))

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[dict | RequestOutput]:
        """One request's own stream (see the module docstring): what `subscribe` carries for it, unbatched.
        For callers of one request at a time (tests, a Python client); the ingress multiplexes."""
        box = _Outbox(self.stream_interval_s)
        try:
            [err] = await self._start_on(box, [(request_id, prompt_token_ids, params)], adapter)
            if err is not None:
                yield err
                return
            while True:
                out = (await box.get())[request_id]
                yield out
                if is_last(out):
                    return
        finally:
            self._abort(request_id, box)

    async def abort(self, request_ids: list[str]) -> None:
        """The consumers of these `start`ed requests went away (a client disconnected): abort them."""
        for rid in request_ids:
            self._abort(rid)

    async def note_rejected(self, n: int = 1) -> None:
        """Admission control in an ingress refused `n` requests meant for this group (a counter)."""
        self.metrics.inc("requests_rejected", n)

    # ---- adapters --------------------------------------------------------------------------------
    # A refusal is an answer ({"error", "status"}), not an exception: Serve logs a traceback for every
    # exception a replica method raises, and a user's bad adapter or unknown name is not a failure here.
    async def add_adapter(self, name: str, path: str, confined: bool = True) -> dict:
        """The adapter's info, or {"error", "status": 400, "exists"} when it is refused (nothing changed;
        "exists": a registered adapter has that name).
        `confined`: every file read must resolve under the allowed adapter roots (a run-time load; False
        only to put back an adapter this group had registered before)."""
        self._check_alive()  # a failed group reads nothing
        lora = self.engine.cfg.lora
        roots = lora.allowed_adapter_roots if confined else None
        try:
            # Reading, validating and packing take seconds for a large adapter: a worker thread does them
            # while the step loop runs; the loop then only registers the packed adapter between two steps.
            prepared = await asyncio.to_thread(self.engine.prepare_adapter, name, path, roots, lora.load_timeout_s)
            return await self._call(RegisterAdapter(prepared))
        except AdapterError as e:  # "exists": the name is registered already (another ingress replica's load)
            return {"error": str(e), "status": 400, "exists": isinstance(e, AdapterExists)}

    async def remove_adapter(self, name: str) -> dict:
        """{"path": the removed adapter's path}, or {"error", "status"}: 404 not loaded, 400 in use."""
        try:
            return {"path": await self._call(RemoveAdapter(name))}
        except KeyError as e:
            return {"error": str(e.args[0]) if e.args else f"adapter {name!r} is not loaded", "status": 404}
        except AdapterError as e:
            return {"error": str(e), "status": 400}

    async def reset_prefix_cache(self) -> int:
        """Forgets the engine's cached prefix blocks between two steps (Engine.reset_prefix_cache); returns
        how many."""
        return await self._call(ResetPrefixCache())

    async def list_adapters(self) -> dict[str, dict]:
        return dict(self._snapshot["adapters"])

    # ---- state -----------------------------------------------------------------------------------
    async def stats(self, adapters_version: str | None = None) -> dict:
        """Queue, pool, adapters and metrics of this group (plain data, polled by every ingress). With the
        `adapters_version` of the caller's last answer, the adapter table is left out while it has not changed
        since (with thousands of adapters it is most of the answer: 2000 made it 127 kB)."""
        self._stats_calls += 1
        s = dict(self._snapshot)
        try:
            self._check_alive()
            s["healthy"] = True
        except GroupUnavailable:
            s["healthy"] = False
        q = s["queue"]
        # requests queued for the step loop but not yet in the engine: admission must count them too
        adds = [c.cmd for c in self._cmds if isinstance(c.cmd, AddRequest)]
        s["queue"] = dict(
            q,
            waiting=q["waiting"] + len(adds),
            waiting_lengths=q["waiting_lengths"] + [(len(a.prompt_token_ids), a.params.max_tokens) for a in adds],
            queued_prefill_tokens=q["queued_prefill_tokens"] + sum(len(a.prompt_token_ids) for a in adds),
            step_time_s=self._step_time,
            prefill_tps=self._prefill_tps,
            step_cost=self._step_cost.params(),
        )
        s["name"] = self.name
        s["model"] = self.engine.model_name
        s["subscriptions"] = len(self._boxes)  # open multiplexed streams (one per ingress replica in use)
        s["startup"] = self.startup
        s["stats_calls"] = self._stats_calls
        n, wall, cpu = self._step_totals
        # engine.step() totals since start: wall time, and the engine thread's CPU time in it. A device sync
        # spins (CPU time); wall minus CPU is time the thread was not running: waiting for the GIL that this
        # replica's other threads (streams, Serve) hold, or descheduled by the OS
        s["engine_steps"] = {"steps": n, "wall_s": wall, "cpu_s": cpu}
        s["tensor_parallel_size"] = self.tensor_parallel_size
        s["ranks"] = getattr(self.engine.executor, "ranks", [])  # tensor parallelism: the rank actors
        s["gauges"] = self._gauges(s)
        s["metrics"] = self.metrics.snapshot()
        self.metrics.keep_alive()
        if adapters_version is not None and adapters_version == s["adapters_version"]:
            del s["adapters"]
        return s

    async def check_health(self) -> None:
        """Serve's health check: raises when the engine or any rank is dead (Serve then replaces us)."""
        self._check_alive()

    def __del__(self):
        ex = getattr(getattr(self, "engine", None), "executor", None)
        if ex is not None and hasattr(ex, "shutdown"):
            try:
                ex.shutdown()
            except Exception:  # noqa: BLE001 - best effort at replica shutdown
                pass


# The ingresses poll stats() a few times a second: no access log line per call.
GroupDeployment = serve.deployment(
    name="SLoRAGroup",
    num_replicas=1,
    max_ongoing_requests=1024,
    health_check_period_s=2,
    logging_config={"enable_access_log": False},
)(SLoRAGroup)
