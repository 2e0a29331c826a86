"""The TP-group deployment: one Serve replica owning one `Engine` (in-process for one device, or over a
`TPExecutor` of N rank actors for tensor parallelism) and its single step loop.

In:  `generate(request_id, prompt_token_ids, params, adapter)` (a streaming method: call it through
     `handle.options(stream=True)`), `abort`, `add_adapter` / `remove_adapter` (a refusal is a returned
     `{"error", "status"}`), `list_adapters`, `stats`.
Out: a stream of items: `RequestOutput`s whose `delta_text` / `delta_token_ids` are new since the previous
     item; the last one (`finished=True`) also carries the cumulative `text` and `token_ids`. An error is an
     item `{"error", "status"}` (and `retry_after_s` for an early abort) that ends the stream. The first item
     comes with the request's first tokens, or is the error that ended it before any: when the engine refuses
     the request (400 / 404), drops it before it ran (early abort: 429), or fails before its first token
     (503: nothing ran, the caller may send it elsewhere). So a caller that has the first item knows whether
     the request started, without a separate acknowledgement (one Serve item fewer per request).

Coalescing: every Serve streaming item costs CPU in this replica and in the ingress (~0.3 ms), so a stream
does not send one item per engine step. Its first tokens (until the client has text to show) and its
last output go out at once; in between, a stream sends what has accumulated at most every
`stream_interval_s` (one merged item; 0 = every step, merging only the steps that finished while the
consumer was still busy with an earlier item).

Concurrency: the engine is not thread-safe. One engine thread owns it: everything that touches it (new
requests, aborts, adapter registrations) is queued as a command by the event loop and applied by that thread
between two steps (an adapter is read, validated and packed before, in another thread:
`Engine.prepare_adapter`, so a load never stalls running streams); the thread runs `engine.step()` back to
back while there is work and hands each step's
outputs (and command results) to the event loop with `call_soon_threadsafe`, without waiting: streaming
overlaps the next step. After each step the thread also takes a `stats()` snapshot, so the event loop
never reads engine state while a step runs. When a stream's consumer goes away (client disconnect: Serve
cancels the call),
the generator's `finally` queues an abort, so the request's KV pages are freed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from app.config import EngineConfig
from app.engine import Engine, EngineDeadError, PreparedAdapter
from app.lora.adapter import AdapterError
from app.request import RequestOutput, SamplingParams
from deployments.config import GroupSettings
from deployments.metrics import GroupMetrics
from deployments.routing import LinearFit

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


Command = AddRequest | AbortRequest | RegisterAdapter | RemoveAdapter


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


class _Stream:
    """One request's outputs on their way from the step loop (`put`, event loop) to its `generate` (`get`).

    Outputs are merged as they arrive. `get` returns the pending output when it is due: at once until the
    client has something to show (an output with text; with tokens when the request does not detokenize,
    as text can be held back by a stop string or a partial character), and for a finished output or an
    error dict (an error replaces tokens still pending; nothing follows a finished output or an error);
    otherwise once `interval` seconds have passed since the last item went out. `ready` wakes the
    consumer when an output arrives in an empty stream (it then sleeps until that output is due) or when
    the pending output becomes due, so a stream costs a couple of wake-ups per item it sends, not one per
    engine step."""

    def __init__(self, interval: float, text: bool = True):
        self.interval = interval
        self.text = text
        self.pending: RequestOutput | dict | None = None
        self.due = float("-inf")  # a pending output may go out from this time on
        self.started = False  # an output the client can show went out
        self.ready = asyncio.Event()

    @staticmethod
    def _last(item: RequestOutput | dict) -> bool:
        return not isinstance(item, RequestOutput) or item.finished

    def put(self, item: RequestOutput | dict) -> None:
        p = self.pending
        if p is not None and self._last(p):
            return
        self.pending = _merge(p, item) if isinstance(p, RequestOutput) and isinstance(item, RequestOutput) else item
        if p is None or self._last(item) or time.monotonic() >= self.due:
            self.ready.set()

    async def get(self) -> RequestOutput | dict:
        while True:
            p, now = self.pending, time.monotonic()
            if p is not None and (self._last(p) or now >= self.due):
                self.pending = None
                if self.started or (
                    isinstance(p, RequestOutput) and (p.delta_text if self.text else p.delta_token_ids)
                ):
                    self.started = True
                    self.due = now + self.interval
                return p
            self.ready.clear()
            if p is None:
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
        self.engine.freeze_heap()  # this process serves this engine until it ends
        # when the group started (wall clock) and how long each part took: in stats() for startup benchmarks
        self.startup = {
            "started": started,
            "model_s": engine_s - (self.engine.warmup_s or 0.0),
            "warmup_s": self.engine.warmup_s or 0.0,
            "adapters_s": time.perf_counter() - t0,
            "num_adapters": len(adapters or {}),
            # seconds the background pinning of their host copies took, once it is over (0.0: nothing to
            # pin, or it failed); None while it runs, when page fills may still copy from pageable memory
            "adapters_pinned_s": None if adapters else 0.0,
        }
        self._adapter_table = self._adapters_now()
        # metrics carry the model name clients use (the ingress's), so both exports label alike
        self.metrics = GroupMetrics(name, served_model_name or self.engine.model_name, ray_export=ray_metrics)
        self._cmds: deque[_Cmd] = deque()  # appended by the event loop, taken by the engine thread
        self._streams: dict[str, _Stream] = {}
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
        for st in self._streams.values():
            st.put(self._unavailable_item(err))
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
            self._adapter_table = self._adapters_now()
            return {"name": info.name, "path": info.path, "rank": info.rank, "num_pages": info.num_pages}
        if isinstance(cmd, RemoveAdapter):
            path = e.adapters[cmd.name].path if cmd.name in e.adapters else None
            e.remove_adapter(cmd.name)
            self._adapter_table = self._adapters_now()
            return path
        raise TypeError(f"not a command: {cmd!r}")

    def _adapters_now(self) -> dict[str, dict]:
        """The registered adapters' table, rebuilt only when one is added or removed (a new dict each
        time, never mutated: snapshots share it), so a step's snapshot costs nothing per adapter."""
        return {n: {"path": a.path, "rank": a.rank, "num_pages": a.num_pages} for n, a in self.engine.adapters.items()}

    def _take_snapshot(self) -> dict:
        """Engine figures read in the thread that owns the engine (between steps)."""
        s = self.engine.stats()
        return {
            "queue": s.queue,
            "pool": dataclasses.asdict(s.pool),
            "resident_adapters": s.resident_adapters,
            "adapters": self._adapter_table,
            "steps": s.steps,
            "num_preemptions": s.num_preemptions,
            "num_prefetches": s.num_prefetches,
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
            st = self._streams.get(rid)
            if st is not None:
                st.put(self._stream_item(out))
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
    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[dict | RequestOutput]:
        """Streams RequestOutput deltas, coalesced, or an error item (see the module docstring)."""
        st = _Stream(self.stream_interval_s, text=params.detokenize)
        self._streams[request_id] = st
        done = False
        try:
            try:
                await self._call(AddRequest(prompt_token_ids, params, adapter, request_id, time.monotonic()))
            except KeyError as e:
                done = True
                yield {"error": str(e.args[0]) if e.args else str(e), "status": 404}
                return
            except ValueError as e:
                done = True
                yield {"error": str(e), "status": 400}
                return
            except GroupUnavailable as e:
                done = True
                yield self._unavailable_item(e)
                return
            self.metrics.inc("prompt_tokens", len(prompt_token_ids))
            self.metrics.adapter_request(adapter, len(prompt_token_ids))
            while True:
                out = await st.get()
                yield out
                if _Stream._last(out):
                    done = True
                    return
        finally:
            self._streams.pop(request_id, None)
            self._last_token_time.pop(request_id, None)
            if not done:  # the consumer went away (disconnect, cancellation): free the request's pages
                self.metrics.inc("requests_aborted")
                if self._failed is None:
                    self._submit(_Cmd(AbortRequest(request_id)))

    async def abort(self, request_id: str) -> None:
        self._submit(_Cmd(AbortRequest(request_id)))

    async def note_rejected(self, n: int = 1) -> None:
        """Admission control in an ingress refused `n` requests meant for this group (a counter)."""
        self.metrics.inc("requests_rejected", n)

    # ---- adapters --------------------------------------------------------------------------------
    # A refusal is an answer ({"error", "status"}), not an exception: Serve logs a traceback for every
    # exception a replica method raises, and a user's bad adapter or unknown name is not a failure here.
    async def add_adapter(self, name: str, path: str, confined: bool = True) -> dict:
        """The adapter's info, or {"error", "status": 400} when it is refused (nothing changed).
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
        except AdapterError as e:
            return {"error": str(e), "status": 400}

    async def remove_adapter(self, name: str) -> dict:
        """{"path": the removed adapter's path}, or {"error", "status"}: 404 not loaded, 400 in use."""
        try:
            return {"path": await self._call(RemoveAdapter(name))}
        except KeyError as e:
            return {"error": str(e.args[0]) if e.args else f"adapter {name!r} is not loaded", "status": 404}
        except AdapterError as e:
            return {"error": str(e), "status": 400}

    async def list_adapters(self) -> dict[str, dict]:
        return dict(self._snapshot["adapters"])

    # ---- state -----------------------------------------------------------------------------------
    async def stats(self) -> dict:
        """Queue, pool, adapters and metrics of this group (plain data, polled by every ingress)."""
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
        s["startup"] = self.startup
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
