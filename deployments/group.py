"""The TP-group deployment: one Serve replica owning one `Engine` (in-process for one device, or over a
`TPExecutor` of N rank actors for tensor parallelism) and its single step loop.

In:  `generate(request_id, prompt_token_ids, params, adapter)` (a streaming method: call it through
     `handle.options(stream=True)`), `abort`, `add_adapter` / `remove_adapter` (a refusal is a returned
     `{"error", "status"}`), `list_adapters`, `stats`.
Out: a stream of items: first `{"accepted": True}` (or `{"error", "status"}` when the engine refuses the
     request), then `RequestOutput`s whose `delta_text` / `delta_token_ids` are new since the previous
     item; the last one (`finished=True`) also carries the cumulative `text` and `token_ids`.

Coalescing: every Serve streaming item costs CPU in this replica and in the ingress (~0.3 ms), so a stream
does not send one item per engine step. Its first tokens (until the client has text to show) and its
last output go out at once; in between, a stream sends what has accumulated at most every
`stream_interval_s` (one merged item; 0 = every step).

Concurrency: the engine is not thread-safe. Everything that touches it (new requests, aborts, adapter
registrations) is queued as a command by the event loop and applied by the step loop in its worker thread
between two steps (an adapter is read, validated and packed before, in another thread:
`Engine.prepare_adapter`, so a load never stalls running streams); one background task runs `engine.step()` in that thread while there is work. After
each step the thread also takes a `stats()` snapshot, so the event loop never reads engine state
while a step runs. When a stream's consumer goes away (client disconnect: Serve cancels the call),
the generator's `finally` queues an abort, so the request's KV pages are freed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from app.config import EngineConfig
from app.engine import Engine
from app.lora.adapter import AdapterError
from app.request import RequestOutput, SamplingParams
from deployments.metrics import GroupMetrics

logger = logging.getLogger("ray.serve")

EMA = 0.2  # weight of the newest step in the step-time / prefill-rate averages
MIN_RATE_TOKENS = 32  # steps with fewer tokens say little about the prefill rate


@dataclass
class _Cmd:
    kind: str  # add | abort | add_adapter | remove_adapter
    args: tuple
    fut: asyncio.Future | None = None


def _merge(a: RequestOutput, b: RequestOutput) -> RequestOutput:
    """Two outputs of one request as one (coalescing, or a consumer slower than the step loop)."""
    lps = None if b.delta_logprobs is None else (a.delta_logprobs or []) + b.delta_logprobs
    return dataclasses.replace(
        b,
        delta_text=a.delta_text + b.delta_text,
        delta_token_ids=a.delta_token_ids + b.delta_token_ids,
        delta_logprobs=lps,
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
        self.pending = _merge(p, item) if p is not None and isinstance(item, RequestOutput) else item
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
        tensor_parallel_size: int = 1,
        num_threads: int | None = None,
        ray_metrics: bool = True,
        stream_interval_s: float = 0.05,
    ):
        """`stream_interval_s`: a stream sends its new tokens at most this often (its first tokens and its
        end at once); 0 = one item per engine step."""
        if stream_interval_s < 0:
            raise ValueError(f"stream_interval_s must be >= 0, got {stream_interval_s}")
        if isinstance(cfg, dict):
            cfg = EngineConfig(**cfg)
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        self.name = name
        self.tensor_parallel_size = tensor_parallel_size
        self.stream_interval_s = stream_interval_s
        executor = None
        if tensor_parallel_size > 1:
            from deployments.tp import TPExecutor

            executor = TPExecutor(cfg, tensor_parallel_size)
        self.engine = Engine(cfg, executor=executor)
        if self.engine.warmup_s is not None:
            logger.info(
                "group %s: warmup (every kernel variant and CUDA graph) took %.1f s", name, self.engine.warmup_s
            )
        for adapter, path in (adapters or {}).items():
            self.engine.add_adapter(adapter, path)
        self._adapter_table = self._adapters_now()
        self.metrics = GroupMetrics(name, self.engine.model_name, ray_export=ray_metrics)
        self._cmds: list[_Cmd] = []
        self._streams: dict[str, _Stream] = {}
        self._last_token_time: dict[str, float] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._failed: BaseException | None = None
        self._step_time: float | None = None
        self._prefill_tps: float | None = None
        self._steps_adapters: int | None = None
        self._snapshot = self._take_snapshot()

    # ---- the step loop ---------------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def _submit(self, cmd: _Cmd) -> None:
        self._ensure_loop()
        self._cmds.append(cmd)
        self._wake.set()

    async def _loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._cmds or self.engine.has_unfinished():
                    cmds, self._cmds = self._cmds, []
                    results, outputs, t_end = await asyncio.to_thread(self._run, cmds)
                    for fut, value, exc in results:
                        if fut is not None and not fut.done():
                            fut.set_exception(exc) if exc is not None else fut.set_result(value)
                    self._dispatch(outputs, t_end)
        except BaseException as e:  # noqa: BLE001 - fail every waiting stream instead of hanging it
            if not isinstance(e, asyncio.CancelledError):
                logger.exception("group %s: step loop failed", self.name)
            self._failed = e
            for st in self._streams.values():
                st.put({"error": f"engine failure: {e!r}", "status": 500})
            for c in self._cmds:
                if c.fut is not None and not c.fut.done():
                    c.fut.set_exception(RuntimeError(f"engine failure: {e!r}"))
            raise

    def _run(self, cmds: list[_Cmd]):
        """Worker thread: apply the queued commands, run one step if there is work, snapshot stats."""
        results = []
        for c in cmds:
            try:
                results.append((c.fut, self._apply(c), None))
            except Exception as e:  # noqa: BLE001 - returned to the caller that queued the command
                results.append((c.fut, None, e))
        outputs: list[RequestOutput] = []
        if self.engine.has_unfinished():
            before = [(r, r.num_computed_tokens) for r in self.engine.requests.values()]
            t0 = time.perf_counter()
            outputs = self.engine.step()
            dt = time.perf_counter() - t0
            tokens = sum(max(0, r.num_computed_tokens - c) for r, c in before)
            self._step_time = dt if self._step_time is None else (1 - EMA) * self._step_time + EMA * dt
            if tokens >= MIN_RATE_TOKENS and dt > 0:
                rate = tokens / dt
                self._prefill_tps = rate if self._prefill_tps is None else (1 - EMA) * self._prefill_tps + EMA * rate
            self._steps_adapters = self.engine.last_step_adapters
        else:
            self._steps_adapters = None
        self._snapshot = self._take_snapshot()
        return results, outputs, time.monotonic()

    def _apply(self, c: _Cmd) -> Any:
        e = self.engine
        if c.kind == "add":
            return e.add_request(*c.args)
        if c.kind == "abort":
            (rid,) = c.args
            if rid in e.requests:
                e.abort(rid)
                return True
            return False
        if c.kind == "add_adapter":
            info = e.register_adapter(*c.args)
            self._adapter_table = self._adapters_now()
            return {"name": info.name, "path": info.path, "rank": info.rank, "num_pages": info.num_pages}
        if c.kind == "remove_adapter":
            (name,) = c.args
            path = e.adapters[name].path if name in e.adapters else None
            e.remove_adapter(name)
            self._adapter_table = self._adapters_now()
            return path
        raise ValueError(c.kind)

    def _adapters_now(self) -> dict[str, dict]:
        """The registered adapters' table, rebuilt only when one is added or removed (a new dict each
        time, never mutated: snapshots share it), so a step's snapshot costs nothing per adapter."""
        return {n: {"path": a.path, "rank": a.rank, "num_pages": a.num_pages} for n, a in self.engine.adapters.items()}

    def _take_snapshot(self) -> dict:
        """Engine figures read in the thread that owns the engine (between steps)."""
        e = self.engine
        sch = e.scheduler
        queued = sum(max(0, r.num_tokens - r.num_computed_tokens - 1) for r in [*sch.waiting, *sch.running])
        p = e.pool_stats()
        return {
            "queue": {
                "waiting": len(sch.waiting),
                "running": len(sch.running),
                "queued_prefill_tokens": queued,
                "max_num_seqs": e.cfg.scheduler.max_num_seqs,
            },
            "pool": {
                "total": p.total,
                "free": p.free,
                "kv": p.kv,
                "adapter": p.adapter,
                "adapter_pinned": p.adapter_pinned,
                "kv_fragmentation": p.kv_fragmentation,
                "loads": p.loads,
                "hits": p.hits,
                "evictions": p.evictions,
            },
            "resident_adapters": e.pool.resident_adapters(),
            "adapters": self._adapter_table,
            "steps": e.steps,
            "num_preemptions": sch.num_preemptions,
            "num_prefetches": sch.num_prefetches,
        }

    def _dispatch(self, outputs: list[RequestOutput], now: float) -> None:
        """Event loop: route outputs to their streams and record latency metrics."""
        m = self.metrics
        if self._steps_adapters is not None:
            m.inc("engine_steps")
            m.observe("distinct_adapters_per_batch", self._steps_adapters)
        for out in outputs:
            rid = out.request_id
            n_new = len(out.delta_token_ids)
            m.inc("generation_tokens", n_new)
            last = self._last_token_time.get(rid)
            if last is not None and n_new:
                m.observe("inter_token_latency_seconds", (now - last) / n_new)
            if n_new:
                self._last_token_time[rid] = now
            if out.finished:
                self._last_token_time.pop(rid, None)
                t = out.metrics
                if out.finish_reason != "abort":
                    m.inc("request_success")
                    if t.get("first_token_time") is not None:
                        m.observe("time_to_first_token_seconds", t["first_token_time"] - t["arrival_time"])
                    if t.get("first_scheduled_time") is not None:
                        m.observe("request_queue_time_seconds", t["first_scheduled_time"] - t["arrival_time"])
                    m.observe("e2e_request_latency_seconds", (t.get("finish_time") or now) - t["arrival_time"])
            else:
                out = dataclasses.replace(out, token_ids=[], text="", prompt_token_ids=[])
            st = self._streams.get(rid)
            if st is not None:
                st.put(out)
        s = self._snapshot
        m.set_counter("adapter_loads", s["pool"]["loads"])
        m.set_counter("adapter_hits", s["pool"]["hits"])
        m.set_counter("adapter_evictions", s["pool"]["evictions"])
        m.set_counter("adapter_prefetches", s["num_prefetches"])
        m.set_counter("preemptions", s["num_preemptions"])
        m.set_gauges(self._gauges(s), s["pool"])

    @staticmethod
    def _gauges(s: dict) -> dict[str, float]:
        return {
            "num_requests_running": s["queue"]["running"],
            "num_requests_waiting": s["queue"]["waiting"],
            "queued_prefill_tokens": s["queue"]["queued_prefill_tokens"],
            "resident_adapters": len(s["resident_adapters"]),
            "registered_adapters": len(s["adapters"]),
        }

    async def _call(self, kind: str, *args) -> Any:
        self._check_alive()
        fut = asyncio.get_running_loop().create_future()
        self._submit(_Cmd(kind, args, fut))
        return await fut

    def _check_alive(self) -> None:
        if self._failed is not None:
            raise RuntimeError(f"group {self.name}: engine failed: {self._failed!r}")

    # ---- requests --------------------------------------------------------------------------------
    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> AsyncIterator[dict | RequestOutput]:
        """Streams `{"accepted": True}` then RequestOutput deltas, coalesced (see the module docstring)."""
        st = _Stream(self.stream_interval_s, text=params.detokenize)
        self._streams[request_id] = st
        done = False
        try:
            try:
                await self._call("add", prompt_token_ids, params, adapter, request_id, time.monotonic())
            except KeyError as e:
                done = True
                yield {"error": str(e.args[0]) if e.args else str(e), "status": 404}
                return
            except ValueError as e:
                done = True
                yield {"error": str(e), "status": 400}
                return
            self.metrics.inc("prompt_tokens", len(prompt_token_ids))
            yield {"accepted": True}
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
                    self._submit(_Cmd("abort", (request_id,)))

    async def abort(self, request_id: str) -> None:
        self._submit(_Cmd("abort", (request_id,)))

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
            return await self._call("add_adapter", prepared)
        except AdapterError as e:
            return {"error": str(e), "status": 400}

    async def remove_adapter(self, name: str) -> dict:
        """{"path": the removed adapter's path}, or {"error", "status"}: 404 not loaded, 400 in use."""
        try:
            return {"path": await self._call("remove_adapter", name)}
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
        s["queue"] = dict(s["queue"], step_time_s=self._step_time, prefill_tps=self._prefill_tps)
        s["name"] = self.name
        s["model"] = self.engine.model_name
        s["tensor_parallel_size"] = self.tensor_parallel_size
        s["gauges"] = self._gauges(s)
        s["metrics"] = self.metrics.snapshot()
        return s

    async def check_health(self) -> None:
        if self._failed is not None:
            raise RuntimeError(f"group {self.name}: step loop failed: {self._failed!r}")

    def __del__(self):
        ex = getattr(getattr(self, "engine", None), "executor", None)
        if ex is not None and hasattr(ex, "shutdown"):
            try:
                ex.shutdown()
            except Exception:  # noqa: BLE001 - best effort at replica shutdown
                pass


# The ingresses poll stats() a few times a second: no access log line per call.
GroupDeployment = serve.deployment(
    SLoRAGroup,
    name="SLoRAGroup",
    num_replicas=1,
    max_ongoing_requests=1024,
    health_check_period_s=10,
    logging_config={"enable_access_log": False},
)
