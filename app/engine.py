"""The engine: adapters registry, request queue and the step loop.

    step():  out = scheduler.schedule()            # which tokens of which requests, adapter loads
             result = executor.execute(out)        # every rank runs the forward pass; rank 0 samples
             scheduler.update(out, result)         # advance requests; stop checks; free finished

`executor` is this process's `ModelRunner` (one device), or anything with the same methods
(`execute`, `pack_adapter`, `add_packed`, `add_adapter`, `remove_adapter`, `pin_adapters`, `alive`, `num_pages`,
`page_size`, `device`), e.g. the Ray tensor-parallel group of deployments/.

Asynchronous scheduling (`EngineConfig.async_scheduling`; executors with `launch`, i.e. the ModelRunner):

    step():  out = scheduler.schedule()            # step N+1, assuming step N's pending tokens
             handle = executor.launch(out)         # queued on the device; N's tokens feed N+1 there
             scheduler.update(N, handle_N.result())  # then step N's results, while N+1 runs

so the device's queue never drains while the host schedules, builds the batch and launches kernels.
Outputs come one step() later than in the synchronous loop; per request they are the same. Before
scheduling, the engine reads the in-flight step's results first (the synchronous order) when the next
step needs a pending token's value on the host: penalties, logit bias and structured output keep the
request's tokens on the host (`SamplingParams.needs_history`).

Adapters are added in two halves: `prepare_adapter` reads, validates and packs (seconds for a large
adapter; thread-safe, it reads no state that steps change, so a server runs it beside the step loop) and
`register_adapter` makes the packed adapter known to the executor and the scheduler (cheap; between steps).
`add_adapter` is both at once.

`warmup()` (at the end of `__init__` on CUDA, `EngineConfig.warmup`) runs every kernel variant and
captures every decode CUDA graph before the first request, so that no request waits for a Triton compile;
`warmup_adapter_graphs()` (a server, once its startup adapters are registered) the decode graphs of their
LoRA groups.
`freeze_heap()` (a server, once its startup is done) takes what startup made out of the garbage collector's
full passes.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from app.config import EngineConfig
from app.cuda_graphs import decode_buckets
from app.lora.adapter import (
    AdapterError,
    AdapterExists,
    LoRAWeights,
    check_adapter_name,
    load_peft_adapter,
    module_shapes,
)
from app.lora.layer import LORA_GROUPS, targeted_groups
from app.model.llama import ModelArgs
from app.pool import PagePool, PoolStats
from app.request import ModelOutput, Request, RequestOutput, SamplingParams, truncated_prompt
from app.sampling import FAILED
from app.scheduler import Scheduler, SchedulerOutput
from app.tokenizer import IncrementalDetokenizer, Tokenizer

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.structured import Grammars

logger = logging.getLogger(__name__)

# Warm-up requests' ids and the warm-up adapters' names start with this: add_adapter refuses names
# with a "/" (check_adapter_name), so they never collide with a user's adapter.
WARMUP_PREFIX = "sloray/warmup"


MAX_STEP_FAILURES = 3  # failed steps in a row after which the executor is taken for dead


class EngineDeadError(RuntimeError):
    """The executor can run no more steps (a tensor-parallel rank is gone, or steps keep failing): the
    engine must be rebuilt. Executors raise it from `execute` when they know they are dead."""


@dataclass
class PreparedAdapter:
    """An adapter read, validated and packed by `prepare_adapter`, not yet registered."""

    name: str
    path: str
    rank: int
    scale: float
    packed: Any  # what the executor's add_packed takes (ModelRunner: a PackedAdapter)
    groups: tuple[str, ...] = ()  # the LoRA groups it targets (app/lora/layer.py targeted_groups)


@dataclass
class InFlightStep:
    """A launched step: its schedule, its requests by id as they were then, and its ModelOutput or the
    executor's handle to it (`result()` waits for the device)."""

    out: SchedulerOutput
    requests: dict[str, Request]
    result: Any  # ModelOutput | app.runner.StepHandle

    @property
    def needs_host_tokens(self) -> bool:
        """Whether the next step needs this one's sampled tokens on the host before it is scheduled."""
        return any(s.sample and s.params.needs_history for s in self.out.seqs)


@dataclass
class AdapterInfo:
    name: str
    path: str
    rank: int
    scale: float
    num_pages: int
    groups: tuple[str, ...] = ()  # the LoRA groups it targets (its steps' decode graphs run those)


@dataclass
class EngineStats:
    """One snapshot of the engine (`Engine.stats`): everything its callers read of its state."""

    queue: dict[str, Any]  # Engine.queue_state()
    pool: PoolStats
    resident_adapters: list[str]  # adapters whose weights are in the pool, LRU first
    steps: int
    num_preemptions: int
    num_prefetches: int
    prefix_queried_tokens: int  # prefix caching: prompt tokens of admissions that looked the cache up
    prefix_hit_tokens: int  # ... and the tokens found there
    num_early_aborts: int
    running_adapters: list[str]  # the distinct adapters of the running requests, sorted
    waiting_adapters: list[str]  # ... and of the queued ones
    max_loras_per_batch: int


class Engine:
    def __init__(self, cfg: EngineConfig, executor=None):
        device = getattr(executor, "device", None) or cfg.resolved_device()
        cfg = cfg.with_device_defaults(device)
        self.cfg = cfg
        self.args = ModelArgs.from_dir(cfg.model)
        self.tokenizer = Tokenizer(cfg.tokenizer or cfg.model)
        if executor is None:
            from app.runner import ModelRunner

            executor = ModelRunner(cfg)
        self.executor = executor
        self.pool = PagePool(
            num_pages=executor.num_pages,
            page_size=executor.page_size,
            adapter_limit=cfg.lora.static_adapter_pages,
            prefix_caching=cfg.pool.enable_prefix_caching,
        )
        self.adapters: dict[str, AdapterInfo] = {}
        self.scheduler = Scheduler(cfg.scheduler, cfg.lora, self.pool, lambda n: self.adapters[n].num_pages)
        self.requests: dict[str, Request] = {}
        self.detok: dict[str, IncrementalDetokenizer] = {}
        self.max_model_len = self.args.max_model_len(cfg.scheduler.max_model_len)
        eos = set(self.args.eos_token_id)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = eos
        self._ids = itertools.count()
        self._grammars: Grammars | None = None
        self.steps = 0
        # the step loop (module docstring); may be switched while no step is in flight (benchmarks do)
        self.async_scheduling = cfg.resolved_async_scheduling(device)
        if self.async_scheduling and not hasattr(executor, "launch"):  # the tensor-parallel group
            if cfg.async_scheduling:
                logger.warning("async_scheduling: %s runs steps synchronously", type(executor).__name__)
            self.async_scheduling = False
        self.inflight: InFlightStep | None = None  # the step launched but not read yet
        self.failed_steps = 0  # in a row
        self.last_step_tokens = 0  # tokens computed by the last step (prefill chunks + decodes)
        self.last_step_adapters = 0
        self.warmup_s: float | None = None
        self._warm_graph_sets: set[tuple[str, ...]] = set()  # LoRA group sets whose decode graphs warm-up ran
        if cfg.warmup == "on" or (cfg.warmup == "auto" and device == "cuda"):
            self.warmup()

    # ---- adapters --------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str | Path, roots: list[str] | None = None) -> AdapterInfo:
        """Validates and registers a PEFT adapter; raises AdapterError and changes nothing if refused.
        `roots`: every file read must resolve under one of them (run-time loads; see load_peft_adapter)."""
        return self.register_adapter(self.prepare_adapter(name, path, roots))

    def add_adapters(self, adapters: dict[str, str], workers: int | None = None, pin: bool = True) -> list[AdapterInfo]:
        """Adds many adapters at start: read, validated and packed by `workers` threads at once (default: one
        per CPU, at most 32: safetensors reads and tensor copies release the GIL), registered in the given
        order, with a log line of progress every 10 s. Raises the first refusal (AdapterError, naming the
        adapter); nothing is registered then. `pin=False` leaves the host copies in pageable memory for
        `pin_adapters` to pin later (pinning is the slowest part on a GPU host: ~1.3 GiB/s on an H200 host,
        ~25 s for 1,000 7B rank-16 adapters, and it does not run in parallel)."""
        names = list(adapters)
        if not names:
            return []
        workers = max(1, min(len(names), workers or min(32, os.cpu_count() or 1)))
        t0 = last = time.perf_counter()
        prepared: list[PreparedAdapter] = []
        with ThreadPoolExecutor(workers, thread_name_prefix="adapter-load") as pool:
            for p in pool.map(lambda n: self.prepare_adapter(n, adapters[n], pin=pin), names):
                prepared.append(p)
                if time.perf_counter() - last > 10:
                    last = time.perf_counter()
                    logger.info("adapters: %d of %d read and packed (%.0f s)", len(prepared), len(names), last - t0)
        infos = [self.register_adapter(p) for p in prepared]
        logger.info("adapters: %d registered in %.1f s (%d threads)", len(infos), time.perf_counter() - t0, workers)
        return infos

    def prepare_adapter(
        self,
        name: str,
        path: str | Path,
        roots: list[str] | None = None,
        timeout_s: float | None = None,
        pin: bool = True,
    ) -> PreparedAdapter:
        """Reads, validates and packs an adapter without registering it (any thread; see the module
        docstring); in pinned host memory unless `pin` is False. Raises AdapterError."""
        self._check_new_name(name)
        w = load_peft_adapter(name, path, self.args, self.cfg.lora.max_lora_rank, roots, timeout_s)
        packed = self.executor.pack_adapter(w, pin=pin)
        return PreparedAdapter(w.name, w.path, w.rank, w.scale, packed, targeted_groups(w.targets))

    def pin_adapters(self) -> int:
        """Pins the host copies of the registered adapters that `add_adapters(pin=False)` left pageable (any
        thread, beside the steps; a server calls it once it is ready). Returns how many it pinned."""
        return self.executor.pin_adapters()

    def register_adapter(self, p: PreparedAdapter) -> AdapterInfo:
        """Registers a prepared adapter (the engine's thread, between steps). Raises AdapterError (a name
        taken meanwhile, or more pages than the pool has) and changes nothing then."""
        self._check_new_name(p.name)
        return self._add_packed(p)

    def _add_packed(self, p: PreparedAdapter) -> AdapterInfo:
        num_pages = self.executor.add_packed(p.name, p.packed)
        room = self.pool.adapter_limit or self.pool.num_pages
        if num_pages > room:
            self.executor.remove_adapter(p.name)
            raise AdapterError(f"adapter {p.name!r} needs {num_pages} pool pages, the pool has {room} for adapters")
        info = AdapterInfo(name=p.name, path=p.path, rank=p.rank, scale=p.scale, num_pages=num_pages, groups=p.groups)
        self.adapters[p.name] = info
        return info

    def _check_new_name(self, name: str) -> None:
        check_adapter_name(name)
        if name == self.model_name:
            raise AdapterError(f"invalid adapter name {name!r}: it is the base model's name")
        if name in self.adapters:
            raise AdapterExists(f"adapter {name!r} is already loaded")

    def _register(self, w: LoRAWeights) -> AdapterInfo:
        """Registers weights made in memory (warm-up adapters; their names are not user names)."""
        packed = self.executor.pack_adapter(w)
        return self._add_packed(PreparedAdapter(w.name, w.path, w.rank, w.scale, packed, targeted_groups(w.targets)))

    def remove_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise KeyError(f"adapter {name!r} is not loaded")
        busy = [r.request_id for r in self.requests.values() if r.adapter == name]
        if busy:
            raise AdapterError(f"adapter {name!r} is in use by {len(busy)} request(s)")
        if self.pool.is_resident(name):
            self.pool.evict(name)
        self.pool.drop_prefixes(name)  # K/V computed with these weights: a new adapter of this name differs
        self.executor.remove_adapter(name)
        del self.adapters[name]

    @property
    def model_name(self) -> str:
        return Path(self.cfg.model).name

    # ---- requests --------------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        adapter: str | None = None,
        request_id: str | None = None,
        arrival_time: float | None = None,
    ) -> str:
        params = params or SamplingParams()
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded")
        if isinstance(prompt, str):
            ids, text = self.tokenizer.encode(prompt), prompt
        else:
            ids, text = [int(t) for t in prompt], None
            self._check_in_vocabulary("token ids", ids)
        if params.truncate_prompt_tokens is not None:
            cut = truncated_prompt(ids, params.truncate_prompt_tokens, self.max_model_len)
            ids, text = cut, (text if cut is ids else self.tokenizer.decode(cut))
        if not ids:
            raise ValueError("the prompt is empty")
        if params.structured is not None:
            self.grammars().compile(params.structured)  # ValueError for a bad schema / regex / grammar
        params = self._with_token_restrictions(params)
        if len(ids) + params.max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"maximum context length {self.max_model_len}"
            )
        rid = request_id if request_id is not None else str(next(self._ids))
        if rid in self.requests:
            raise ValueError(f"request id {rid!r} is already in use")
        req = Request(request_id=rid, prompt_token_ids=ids, adapter=adapter, params=params, prompt=text)
        if params.prompt_logprobs is not None:
            req.prompt_logprobs = [None]
        if params.min_tokens:
            req.stop_ids_banned = sorted(
                set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids)
            )
        if arrival_time is not None:
            req.arrival_time = arrival_time
        self.scheduler.add(req)
        self.requests[rid] = req
        self.detok[rid] = IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens)
        return rid

    def _check_in_vocabulary(self, what: str, ids: list[int]) -> None:
        bad = [t for t in ids if not 0 <= t < self.args.vocab_size]
        if bad:
            raise ValueError(f"{what} {bad[:5]} are outside the vocabulary (size {self.args.vocab_size})")

    def _with_token_restrictions(self, params: SamplingParams) -> SamplingParams:
        """params with its bad_words tokenized into bad_words_ids (a copy: the caller's object is left as it
        is; the ingress does this before a request reaches the group, off the engine thread), after checking
        that every token id it names is in the vocabulary (ValueError)."""
        self._check_in_vocabulary("logit_bias token ids", list(params.logit_bias or {}))
        self._check_in_vocabulary("allowed_token_ids token ids", params.allowed_token_ids or [])
        self._check_in_vocabulary("bad_words_ids token ids", [t for w in params.bad_words_ids or [] for t in w])
        if not params.bad_words:
            return params
        seqs = (params.bad_words_ids or []) + self.tokenizer.word_token_ids(params.bad_words)
        return dataclasses.replace(params, bad_words=None, bad_words_ids=seqs)

    def grammars(self):
        """Compiled grammars of structured-output requests (app/structured.py), made on first use."""
        if self._grammars is None:
            from app.structured import Grammars

            self._grammars = Grammars(self.tokenizer.hf, self.args.vocab_size, sorted(self.eos_token_ids))
        return self._grammars

    def abort(self, request_id: str) -> bool:
        """Drops the request (its pages are freed at the next step); False when it is not known (finished)."""
        req = self.requests.pop(request_id, None)
        if req is not None:
            self.scheduler.abort(request_id)
            self.detok.pop(request_id, None)
        return req is not None

    def has_unfinished(self) -> bool:
        """Requests queued or running, or a launched step whose results are not read yet."""
        return self.scheduler.has_unfinished() or self.inflight is not None

    def queue_state(self) -> dict:
        """The queues as admission control sees them: request counts, prompt tokens still to prefill, the
        output tokens each running request may still produce (max_tokens left, within max_model_len) and
        (tokens to prefill, output tokens) of each waiting request in queue order."""
        sch = self.scheduler

        def left(r: Request) -> int:
            return max(0, min(r.params.max_tokens - len(r.output_token_ids), self.max_model_len - r.num_tokens))

        return {
            "waiting": len(sch.waiting),
            "running": len(sch.running),
            "queued_prefill_tokens": sum(
                max(0, r.num_tokens - r.num_computed_tokens - 1) for r in [*sch.waiting, *sch.running]
            ),
            "running_remaining": [left(r) for r in sch.running],
            "waiting_lengths": [(r.num_tokens - r.num_computed_tokens, left(r)) for r in sch.waiting],
            "max_num_seqs": self.cfg.scheduler.max_num_seqs,
        }

    def stats(self) -> EngineStats:
        """The engine's state as a caller between two steps sees it: queues, pool, counters."""
        sch = self.scheduler
        return EngineStats(
            queue=self.queue_state(),
            pool=self.pool.stats(),
            resident_adapters=self.pool.resident_adapters(),
            steps=self.steps,
            num_preemptions=sch.num_preemptions,
            num_prefetches=sch.num_prefetches,
            prefix_queried_tokens=sch.prefix_queried_tokens,
            prefix_hit_tokens=sch.prefix_hit_tokens,
            num_early_aborts=sch.num_early_aborts,
            running_adapters=sorted({r.adapter for r in sch.running if r.adapter}),
            waiting_adapters=sorted({r.adapter for r in sch.waiting if r.adapter}),
            max_loras_per_batch=sch.max_loras_per_batch,
        )

    def executor_alive(self) -> bool:
        """False once the executor can run no more steps (e.g. a tensor-parallel rank is gone); cheap."""
        return self.executor.alive()

    # ---- the step --------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One forward pass (with asynchronous scheduling: launches one and reads the one before; the
        module docstring). A request that fails alone (its sampling, its stop check) finishes with
        finish_reason "error" and `error` set; the others go on. If the executor raises, every request of
        the step fails that way, the adapters loaded for the step are dropped from the pool (their pages
        may be half filled) and the engine goes on, unless the executor is dead (`EngineDeadError`, or
        MAX_STEP_FAILURES failed steps in a row), which this raises."""
        outputs: list[RequestOutput] = []
        if self.inflight is not None and (not self.async_scheduling or self.inflight.needs_host_tokens):
            outputs += self._read_inflight()
        out = self.scheduler.schedule()
        if self.async_scheduling and not (out.seqs or out.adapter_loads or out.finished_ids or out.preempted_ids):
            outputs += self._read_inflight()  # nothing to launch: every running request awaits its result
        else:
            requests = {s.request_id: self.requests[s.request_id] for s in out.seqs}
            try:
                if self.async_scheduling:
                    launched = InFlightStep(out, requests, self.executor.launch(out))
                else:
                    launched = InFlightStep(out, requests, self.executor.execute(out))
            except EngineDeadError:
                raise
            except Exception as e:  # noqa: BLE001 - this step's requests fail; the engine goes on
                outputs += self._read_inflight()
                outputs += self._step_failed(out, requests, e)
            else:
                self.steps += 1
                self.last_step_tokens = out.num_tokens
                self.last_step_adapters = len({s.adapter for s in out.seqs if s.adapter})
                outputs += self._read_inflight()
                if not out.seqs:  # no results to read
                    self.failed_steps = 0
                else:
                    self.inflight = launched
                    if not self.async_scheduling:
                        outputs += self._read_inflight()
        outputs += [self._output(req) for req in self.scheduler.early_aborted]
        self.scheduler.early_aborted.clear()
        self._drop_finished()
        return outputs

    def _step_failed(self, out: SchedulerOutput, requests: dict[str, Request], e: Exception) -> list[RequestOutput]:
        self.failed_steps += 1
        if self.failed_steps >= MAX_STEP_FAILURES:
            raise EngineDeadError(f"{self.failed_steps} steps in a row failed; the last: {e!r}") from e
        logger.exception("step failed: its %d request(s) are failed, the engine goes on", len(out.seqs))
        return self._fail_step(out, requests, f"the engine step failed: {e!r}")

    def _read_inflight(self) -> list[RequestOutput]:
        """Reads the in-flight step's results (waits for the device), advances its requests and checks
        their stop conditions; its outputs. Nothing when no step is in flight."""
        step, self.inflight = self.inflight, None
        if step is None:
            return []
        result = step.result
        if not isinstance(result, ModelOutput):
            try:
                result = result.result()
            except EngineDeadError:
                raise
            except Exception as e:  # noqa: BLE001 - this step's requests fail; the engine goes on
                return self._step_failed(step.out, step.requests, e)
        self.failed_steps = 0
        now = time.monotonic()
        outputs = []
        for req in self.scheduler.update(step.out, step.requests, result):
            failed = bool(req.output_token_ids) and req.output_token_ids[-1] == FAILED
            try:
                if failed:
                    raise ValueError("sampling failed for this request")
                if req.first_token_time is None:
                    req.first_token_time = now
                reason = self._check_stop(req)
            except Exception as e:  # noqa: BLE001 - this request fails alone
                if failed:
                    req.output_token_ids.pop()
                self._fail(req, str(e))
            else:
                if reason:
                    self.scheduler.finish(req, reason)
            outputs.append(self._output(req))
        return outputs

    def _fail(self, req: Request, message: str) -> None:
        req.error = message
        self.scheduler.finish(req, "error")

    def _fail_step(self, out: SchedulerOutput, requests: dict[str, Request], message: str) -> list[RequestOutput]:
        failed = [r for s in out.seqs if not (r := requests[s.request_id]).finished]
        for req in failed:
            self._fail(req, message)
        # registered pages come from steps that returned, but a failed step may leave the device's memory in doubt
        self.pool.drop_prefixes(everything=True)
        for name, _ in out.adapter_loads:
            if self.pool.is_resident(name) and not self.pool.is_pinned(name):
                self.pool.evict(name)
        outputs = [self._output(req) for req in failed]
        self._drop_finished()
        return outputs

    def _drop_finished(self) -> None:
        for req in [r for r in self.requests.values() if r.finished]:
            del self.requests[req.request_id]
            self.detok.pop(req.request_id, None)

    def _check_stop(self, req: Request) -> str | None:
        p = req.params
        if not req.output_token_ids:  # max_tokens 0: the prompt is done
            return "length"
        tok = req.output_token_ids[-1]
        # EOS and stop tokens were masked before min_tokens; stop strings do not count yet
        counts = len(req.output_token_ids) >= p.min_tokens
        eos = (not p.ignore_eos or p.structured is not None) and tok in self.eos_token_ids
        ends_on_token = counts and (eos or tok in p.stop_token_ids)
        if p.detokenize:
            d = self.detok[req.request_id]
            # as vLLM: the EOS or stop token that ends the output adds no text, unless include_stop_str_in_output
            drop_last = ends_on_token and not p.include_stop_str_in_output
            d.add(req.output_token_ids[:-1] if drop_last else req.output_token_ids)
            req.text = d.text
        if not counts:
            return None
        if ends_on_token:
            return "stop"
        if p.stop:
            start = max(0, req.emitted_chars - max(len(s) for s in p.stop))
            hits = [(i, s) for s in p.stop if (i := req.text.find(s, start)) >= 0]
            if hits:
                i, hit = min(hits)
                req.text = req.text[: i + len(hit) if p.include_stop_str_in_output else i]
                return "stop"
        if len(req.output_token_ids) >= p.max_tokens or req.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _output(self, req: Request) -> RequestOutput:
        # While running, hold back text that could be the start of a stop string.
        hold = 0 if req.finished or not req.params.stop else max(len(s) for s in req.params.stop) - 1
        visible = len(req.text) - hold
        delta_text = req.text[req.emitted_chars : visible] if visible > req.emitted_chars else ""
        req.emitted_chars = max(req.emitted_chars, visible)
        delta_ids = req.output_token_ids[req.emitted_tokens :]
        want_lps = req.params.logprobs is not None
        delta_lps = req.output_logprobs[req.emitted_tokens :] if want_lps else None
        first = req.emitted_tokens == 0  # every output but an abort's carries a new token
        done = req.finished  # the cumulative fields only in the last output: no O(length) copy per step
        prompt_lps = list(req.prompt_logprobs) if req.prompt_logprobs and (first or req.finished) else None
        req.emitted_tokens = len(req.output_token_ids)
        return RequestOutput(
            request_id=req.request_id,
            adapter=req.adapter,
            prompt=req.prompt,
            prompt_token_ids=req.prompt_token_ids,
            token_ids=list(req.output_token_ids) if done else [],
            text=req.text if done else "",
            delta_token_ids=delta_ids,
            delta_text=delta_text,
            finished=req.finished,
            finish_reason=req.finish_reason,
            metrics={
                "arrival_time": req.arrival_time,
                "first_scheduled_time": req.first_scheduled_time,
                "first_token_time": req.first_token_time,
                "finish_time": req.finish_time,
                "num_preemptions": req.num_preemptions,
                "num_cached_tokens": req.num_cached_tokens,
            },
            logprobs=list(req.output_logprobs) if want_lps and done else None,
            delta_logprobs=delta_lps,
            prompt_logprobs=prompt_lps,
            error=req.error,
        )

    # ---- warm-up ---------------------------------------------------------------------------------
    @staticmethod
    def freeze_heap() -> None:
        """Collects, then freezes every object alive now (gc.freeze): the collector's full passes no longer
        walk the model, the compiled kernels and the registered adapters between steps (they took ~1 s of
        each 17-19 s saturated S2 run on an H200, benchmarks/results/issue13/run2). For a process that
        keeps this engine for its whole life (a serving group): a frozen object is never collected, so a
        program that makes and drops engines must not call it."""
        gc.collect()
        gc.freeze()

    def warmup(self) -> float:
        """Runs every kernel variant once, and captures every decode CUDA graph, before serving: Triton
        compiles a variant and a graph is captured the first time a step needs it, which would stall the
        first requests for seconds. Registers temporary all-zero adapters of `warmup_ranks` (at most
        max_lora_rank), prefills prompts of `warmup_prompt_lens` tokens with each of them and without (one
        length and one rank per step), then the same prompts as mixed steps (one request decodes while
        another, with or without an adapter, prefills), then runs one batch of every CUDA-graph batch size
        (1-token prompts, 2 tokens each: a prefill and a decode step of that batch size), with adapters and
        without (the two kinds of decode graph), then `warmup_adapter_graphs` for the adapters registered by
        then. Greedy, so no random state is used; the adapters are removed at the end. Needs an idle engine
        and leaves it idle: no requests, no pages held, the step and pool counters as they were (cached
        adapters may have been evicted). Returns the seconds it took (also in `warmup_s`)."""
        t0 = time.perf_counter()
        max_tokens = min(2, self.max_model_len - 1)
        # a mixed wave's first part decodes for a few steps while its second part arrives and prefills
        long_tokens = min(4, self.max_model_len - 1)
        lens = sorted({min(n, self.max_model_len - long_tokens) for n in self.cfg.warmup_prompt_lens})
        buckets = decode_buckets(self.scheduler.max_num_seqs)

        def waves(adapters: list[str]) -> list[tuple[list, list]]:
            # one adapter rank per prefill step (the batch's largest rank picks the kernel variant)
            choices: list[str | None] = [*adapters] or [None]
            w: list[tuple[list, list]] = [([(n, a), (n, None)], []) for n in lens for a in choices]
            # mixed steps (decoding requests beside a prefill: what a loaded server runs most), in both orders
            # of adapter and base model: attention's decode and prefill parts in one step, LoRA plans over both
            w += [([(n, a)], [(n, None)]) for n in lens for a in choices]
            w += [([(n, None)], [(n, a)]) for n in lens for a in adapters]
            adapter = adapters[0] if adapters else None
            # every decode graph of both kinds: steps with an adapter, and steps of the base model alone
            w += [([(1, (adapter, None)[i % 2]) for i in range(b)], []) for b in buckets]
            w += [([(1, None)] * b, []) for b in buckets] if adapter else []
            return w

        ranks = sorted({min(r, self.cfg.lora.max_lora_rank) for r in self.cfg.warmup_ranks})
        registered = self._warm([(r, None) for r in ranks], waves, (max_tokens, long_tokens))
        self._warm_graph_sets |= {(), tuple(LORA_GROUPS)} if any(registered) else {()}
        self.warmup_s = time.perf_counter() - t0
        self.warmup_s += self.warmup_adapter_graphs()
        logger.info("warmup: %d prefill lengths, decode batch sizes %s, %.2f s", len(lens), buckets, self.warmup_s)
        return self.warmup_s

    def warmup_adapter_graphs(self) -> float:
        """Captures, before serving, the decode CUDA graphs of every set of LoRA groups (app/lora/layer.py) that
        a registered adapter targets and warm-up has not run yet: a graph runs only its groups' LoRA kernels,
        and warm-up's own adapters target every module (a q/v adapter, PEFT's default for Llama, targets the
        q/k/v group alone; S-LoRA's q/k/v/o adapters the q/k/v and o groups). One batch of every graph batch
        size with a temporary all-zero adapter of that set (rank min(warmup_ranks)). A server calls it once
        its startup adapters are registered; the sets of adapters loaded later, and a step's mix of several
        sets, are captured the first time a step needs them. Nothing (0.0) when warm-up is off (`warmup_s`
        None) or every set is warm; otherwise needs an idle engine, leaves it as `warmup` does, and returns
        the seconds it took."""
        sets = sorted({info.groups for info in self.adapters.values()} - self._warm_graph_sets - {()})
        if self.warmup_s is None or not sets:
            return 0.0
        t0 = time.perf_counter()
        buckets = decode_buckets(self.scheduler.max_num_seqs)
        rank = min((self.cfg.lora.max_lora_rank, *self.cfg.warmup_ranks))

        def waves(adapters: list[str]) -> list[tuple[list, list]]:
            return [([(1, a)] * b, []) for a in adapters for b in buckets]

        modules = [tuple(m for g in groups for m in LORA_GROUPS[g]) for groups in sets]
        registered = self._warm([(rank, m) for m in modules], waves, (min(2, self.max_model_len - 1),) * 2)
        # a set whose adapter did not fit in the pool stays cold (captured on first use)
        self._warm_graph_sets |= {groups for groups, name in zip(sets, registered, strict=True) if name}
        dt = time.perf_counter() - t0
        logger.info("warmup: decode graphs of the LoRA groups %s, %.2f s", sets, dt)
        return dt

    def _warm(
        self,
        specs: list[tuple[int, tuple[str, ...] | None]],
        waves: Callable[[list[str]], list[tuple[list, list]]],
        max_tokens: tuple[int, int],
    ) -> list[str | None]:
        """Warm-up's runner: registers a temporary all-zero adapter per (rank, target modules or None for every
        module) of `specs`, then runs the waves that `waves(their names)` returns: each (first, late) lists of
        (prompt length, adapter or None) requests, greedy; the first part is added, stepped once, then the late
        part (so that the first part's requests, which then generate max_tokens[1] tokens instead of
        max_tokens[0], decode beside its prefill); each wave runs to its end. Through a scheduler of its own
        (the live one's config, queues and counters untouched), on the same pool, without early abort; the
        requests and adapters are removed and the step and pool counters restored at the end (prefix caching
        is off meanwhile: the warm-up prompts neither match the cache nor stay in it). Returns, per spec,
        the name of its adapter, or None where it could not be registered (a pool too small for it: warm-up
        goes on without it)."""
        if self.has_unfinished():
            raise RuntimeError("warmup needs an idle engine (no requests)")
        pool, live = self.pool, self.scheduler
        counters = (self.steps, self.last_step_adapters, pool.loads, pool.evictions, pool.hits)
        caching, pool.prefix_caching = pool.prefix_caching, False  # warm-up prompts neither match nor stay
        self.scheduler = Scheduler(
            live.cfg.model_copy(update={"early_abort_ttft_slo_s": None}),
            live.lora_cfg,
            pool,
            live.adapter_pages,
            clock=live.clock,
        )
        names: list[str | None] = []
        try:
            L = self.args.num_layers
            zero = torch.zeros(())  # broadcast views: no host memory until packing
            shapes = module_shapes(self.args)
            for k, (r, modules) in enumerate(specs):
                name = f"{WARMUP_PREFIX}-r{r}" if modules is None else f"{WARMUP_PREFIX}-r{r}-{k}"
                targets = {m: (zero.expand(L, r, i), zero.expand(L, o, r)) for m, (i, o) in shapes.items()}
                if modules is not None:
                    targets = {m: t for m, t in targets.items() if m in modules}
                w = LoRAWeights(name=name, path=WARMUP_PREFIX, rank=r, alpha=float(r), scale=1.0, targets=targets)
                try:
                    self._register(w)
                    names.append(name)
                except AdapterError as e:  # a pool too small for it: warm up without it
                    logger.warning("warmup without a rank-%d adapter: %s", r, e)
                    names.append(None)
            adapters = [n for n in names if n is not None]
            short, long = (
                SamplingParams(max_tokens=t, temperature=0.0, ignore_eos=True, detokenize=False) for t in max_tokens
            )
            vocab = self.args.vocab_size
            for k, (first, late) in enumerate(waves(adapters)):
                for part, reqs in enumerate((first, late)):
                    if part and self.has_unfinished():
                        self.step()  # the first part's prefill; it decodes while the second part prefills
                    for i, (n, a) in enumerate(reqs):
                        prompt = [(7 * i + j) % vocab for j in range(n)]
                        params = long if late and not part else short
                        try:
                            self.add_request(prompt, params, a, request_id=f"{WARMUP_PREFIX}/{k}/{part}/{i}")
                        except ValueError as e:  # larger than the whole pool: skip it
                            logger.debug("warmup request skipped: %s", e)
                while self.has_unfinished():
                    self.step()
        finally:
            for rid in [rid for rid in self.requests if rid.startswith(WARMUP_PREFIX)]:
                self.abort(rid)
            for registered in [n for n in names if n is not None]:
                if registered in self.adapters:
                    self.remove_adapter(registered)
            self.scheduler = live
            self.steps, self.last_step_adapters, pool.loads, pool.evictions, pool.hits = counters
            pool.prefix_caching = caching
        return names

    POLICY_FIELDS = {
        "scheduler": {"early_abort_ttft_slo_s", "early_abort", "queue_order", "admission_headroom_pages"},
        "lora": {
            "prefetch",
            "cluster_min_adapters",
            "cluster_max_wait_s",
            "keep_idle_adapters",
            "static_adapter_pages",
        },
    }

    def set_policies(self, scheduler: dict | None = None, lora: dict | None = None) -> None:
        """Switches the scheduling policies of an idle engine (POLICY_FIELDS of SchedulerConfig / LoRAConfig;
        sizes stay), so that a benchmark compares them on one loaded model: validates them, drops every cached
        adapter from the pool and starts a new scheduler (its counters at zero). Raises ValueError for another
        field or a bad value, RuntimeError if requests are unfinished."""
        if self.has_unfinished():
            raise RuntimeError("set_policies needs an idle engine (no requests)")
        for part, given in (("scheduler", scheduler), ("lora", lora)):
            bad = set(given or {}) - self.POLICY_FIELDS[part]
            if bad:
                raise ValueError(f"{part} fields {sorted(bad)} are not policies ({sorted(self.POLICY_FIELDS[part])})")
        sch = type(self.cfg.scheduler).model_validate({**self.cfg.scheduler.model_dump(), **(scheduler or {})})
        lo = type(self.cfg.lora).model_validate({**self.cfg.lora.model_dump(), **(lora or {})})
        pool = PagePool(
            num_pages=self.pool.num_pages,
            page_size=self.pool.page_size,
            adapter_limit=lo.static_adapter_pages,
            prefix_caching=self.pool.prefix_caching,
        )
        self.cfg = self.cfg.model_copy(update={"scheduler": sch, "lora": lo})
        self.pool = pool
        self.scheduler = Scheduler(sch, lo, pool, lambda n: self.adapters[n].num_pages)

    def pool_stats(self):
        return self.pool.stats()

    def reset_prefix_cache(self) -> int:
        """Forgets every cached prefix block (vLLM's reset_prefix_cache): idle pages are freed, held ones stay
        with their requests. Returns the blocks dropped."""
        return self.pool.drop_prefixes(everything=True)

    def is_idle_clean(self) -> bool:
        """True when no request holds pages: only cached adapters and prefix blocks remain (used by tests)."""
        s = self.pool.stats()
        return s.kv == 0 and s.adapter_pinned == 0 and not self.has_unfinished()
