"""The model runner of one (tensor-parallel) rank: owns the model shard, the pool tensor and this rank's
adapter shards; turns a `SchedulerOutput` into tensors, runs the forward pass and samples.

In:  SchedulerOutput (plain data). Out (rank 0): a ModelOutput: one sampled token per sequence with
`sample=True`, their logprobs where requested, and the prompt logprobs a sequence's `prompt_lp_targets` ask for.
`execute` returns it; `launch` (asynchronous scheduling, one rank) returns a StepHandle at once: the step
is queued on the device, its sampled tokens stay there (the next launched step's placeholders,
`ScheduledSeq.from_last_step`, are filled from them on the device) and are copied to pinned host memory
behind a CUDA event.
Per step: (1) copy newly admitted adapters into their pool pages, (2) build attention metadata
(page tables, slot mapping) and LoRA metadata (adapter slots, page tables, offsets, ranks, scales),
(3) forward, (4) logits of each sequence's last token (and of the prompt positions asked for), (5) sample.
"""

from __future__ import annotations

import gc
import random
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from app.config import EngineConfig
from app.lora.adapter import LoRAWeights, PackedAdapter, pack_adapter, pinned_copy
from app.lora.layer import LORA_GROUPS
from app.model.context import AttentionMeta, ForwardContext, LoRAGroupMeta, LoRAMeta, ParallelState, padded_table
from app.model.llama import LlamaForCausalLM, ModelArgs
from app.request import ModelOutput, TokenLogprobs
from app.sampling import FAILED, prompt_token_logprobs, sample, sample_on_device, token_logprobs_on_device
from app.scheduler import ScheduledSeq, SchedulerOutput
from app.tokenizer import Tokenizer
from kernels import get_backend

if TYPE_CHECKING:
    from app.structured import Constraints

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROMPT_LOGPROB_ROWS = 256  # prompt positions whose [rows, vocab] logits are computed at once


def resolve_dtype(cfg: EngineConfig, args: ModelArgs, device: str) -> torch.dtype:
    if cfg.dtype != "auto":
        return DTYPES[cfg.dtype]
    if device == "cpu":
        return torch.float32
    # the checkpoint's half-precision dtype on CUDA; float32 checkpoints are served in bfloat16
    return DTYPES[args.torch_dtype] if args.torch_dtype in ("float16", "bfloat16") else torch.bfloat16


class ModelRunner:
    def __init__(self, cfg: EngineConfig, tp: ParallelState | None = None, device: str | None = None):
        self.tp = tp or ParallelState()
        self.device = device or cfg.resolved_device()
        self.cfg = cfg = cfg.with_device_defaults(self.device)
        self.args = ModelArgs.from_dir(cfg.model)
        self.dtype = resolve_dtype(cfg, self.args, self.device)
        self.backend = get_backend(cfg.resolved_backend(), cfg.lora_kernel_config())
        self.model = LlamaForCausalLM(self.args, self.tp, self.dtype, self.device)
        if cfg.load_format == "dummy":
            self.model.init_dummy(cfg.seed + self.tp.rank)
        else:
            self.model.load(cfg.model)
        self.page_size = cfg.pool.page_size
        self.page_elems = 2 * self.page_size * self.model.kv_heads * self.args.head_dim
        self.num_pages = self._size_pool()
        self.pool = torch.zeros(
            self.args.num_layers, self.num_pages, self.page_elems, dtype=self.dtype, device=self.device
        )
        self.adapters: dict[str, PackedAdapter] = {}
        self._adapters_lock = threading.Lock()  # pin_adapters (any thread) against adds and removes
        self.adapter_pages: dict[str, list[int]] = {}
        self.generators: dict[str, torch.Generator] = {}
        self.history: dict[str, list[int]] = {}  # penalized / constrained requests' tokens (prompt + output)
        self.constraints: Constraints | None = None  # made for the first constrained request
        self._seed_rng = random.Random(cfg.seed)
        self.copy_stream = torch.cuda.Stream() if self.device == "cuda" else None
        # the decode graphs' LoRA shrinks (high priority: their few programs start as soon as the base matmul
        # leaves SMs free); eager steps run on one stream
        overlap = cfg.lora.overlap_shrink and self.device == "cuda"
        self.lora_stream = torch.cuda.Stream(priority=-1) if overlap else None
        self._prefetch_event: torch.cuda.Event | None = None
        # the last launched step's sampled tokens (on the device) and each request's row in them
        self._last_tokens: tuple[torch.Tensor, dict[str, int]] | None = None
        self.graphs = None
        if cfg.cuda_graphs and self.device == "cuda" and self.backend.name == "triton":
            from app.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self)

    def _size_pool(self) -> int:
        """Pages in this rank's pool. Under tensor parallelism every rank must hold the same page ids,
        so the ranks agree on the smallest of the sizes each computed from its own free memory."""
        page_bytes = self.args.num_layers * self.page_elems * torch.finfo(self.dtype).bits // 8
        if self.cfg.pool.num_pages is not None:
            return self.cfg.pool.num_pages
        if self.device == "cuda":
            gc.collect()  # engines dropped before this one still hold their pools until collected
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info()
            reserve = 1 << 30  # activations and logits of one step
            n = max(2, int((free - reserve) * self.cfg.pool.gpu_memory_fraction) // page_bytes)
        else:
            n = max(2, self.cfg.pool.cpu_pool_bytes // page_bytes)
        if self.tp.world_size > 1:
            t = torch.tensor([n], dtype=torch.int64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.tp.group)
            n = int(t.item())
        return n

    # ---- adapters (this rank's shards) -----------------------------------------------------------
    def add_adapter(self, name: str, weights: LoRAWeights) -> int:
        """Packs and adds this rank's shard; returns its page count (the same on every rank)."""
        return self.add_packed(name, self.pack_adapter(weights))

    def pack_adapter(self, weights: LoRAWeights, pin: bool = True) -> PackedAdapter:
        """This rank's shard, packed (any thread: reads only the runner's fixed page size, dtype and rank), in
        pinned host memory on a CUDA device unless `pin` is False (then `pin_adapters` can pin it later)."""
        return pack_adapter(
            weights, self.page_elems, self.dtype, self.tp.rank, self.tp.world_size, pin=pin and self.device == "cuda"
        )

    def add_packed(self, name: str, packed: PackedAdapter) -> int:
        """Adds a packed shard; returns its page count."""
        with self._adapters_lock:
            self.adapters[name] = packed
            self.adapter_pages.pop(name, None)
        return packed.layout.num_pages

    def remove_adapter(self, name: str) -> None:
        with self._adapters_lock:
            self.adapters.pop(name, None)
            self.adapter_pages.pop(name, None)

    def pin_adapters(self) -> int:
        """Moves the host copies of added adapters that are not in pinned memory into pinned memory (any
        thread, beside the steps: a copy replaces the shard only if it is still the one added). Page fills
        from pageable memory are correct but synchronous; pinning runs at ~1.3 GiB/s on an H200 host, so a
        server pins its startup adapters after it is ready. Returns how many were pinned (0 off CUDA)."""
        if self.device != "cuda":
            return 0
        with self._adapters_lock:
            todo = [(n, p) for n, p in self.adapters.items() if not p.data.is_pinned()]
        done = 0
        for name, packed in todo:
            pinned = pinned_copy(packed)
            with self._adapters_lock:
                if self.adapters.get(name) is packed:
                    self.adapters[name] = pinned
                    done += 1
        return done

    def fill_adapter_pages(self, name: str, pages: list[int]) -> None:
        """Copies adapter `name`'s host weights into pool `pages`, queued on the current stream."""
        data = self.adapters[name].data
        (idx,) = h2d_many([(pages, torch.long)], self.device)
        src = data.view(self.args.num_layers, len(pages), self.page_elems).to(self.device, non_blocking=True)
        self.pool.index_copy_(1, idx, src)
        self.adapter_pages[name] = pages

    def alive(self) -> bool:
        """An in-process runner is alive as long as its process is (a failed step raises from `execute`)."""
        return True

    # ---- one step --------------------------------------------------------------------------------
    def execute(self, out: SchedulerOutput) -> ModelOutput:
        """The sampled tokens (one per sequence with `sample`, in order; on tp-rank 0), their TokenLogprobs
        where requested and the prompt logprobs asked for (other ranks return an empty ModelOutput)."""
        return self._run(out, overlap=False).result()

    def launch(self, out: SchedulerOutput) -> StepHandle:
        """Queues the step on the device and returns without waiting for it (one rank: tp-rank 0 alone);
        `result()` of the handle is what `execute` returns. Steps with a penalized or constrained request
        are sampled on the host, so their handle is done when this returns."""
        return self._run(out, overlap=True)

    def _run(self, out: SchedulerOutput, overlap: bool) -> StepHandle:
        for rid in out.finished_ids:
            self.generators.pop(rid, None)
        for rid in out.finished_ids + out.preempted_ids:  # a preempted request keeps its generator: sampling
            self.history.pop(rid, None)  # after its recompute goes on from the same random state
            if self.constraints is not None:
                self.constraints.drop(rid)
        for s in out.seqs:  # the tokens so far of requests whose sampling looks at them (penalties, grammar)
            if s.params.needs_history:
                if s.from_last_step:
                    raise ValueError(f"request {s.request_id}: its history needs the last step's token on the host")
                h = self.history.setdefault(s.request_id, [])
                if len(h) < s.start_pos:  # it starts after cached prefix pages: the scheduler sent the rest
                    if len(s.history_ids) != s.start_pos:
                        raise ValueError(f"request {s.request_id}: {s.start_pos} earlier tokens are not known")
                    h[:] = s.history_ids
                del h[s.start_pos :]  # a recomputed request feeds its tokens again from 0
                h += s.token_ids
        self._load_adapters(out)
        last, self._last_tokens = self._last_tokens, None
        result = ModelOutput()
        if not out.seqs:
            return StepHandle(result)
        batch = self._host_batch(out)
        fill = self._placeholders(out, batch, last)
        with torch.inference_mode():
            graph = self.graphs.runnable(batch) if self.graphs and not batch.prompt_rows else None
            if graph is not None:
                logits = graph.replay(batch, fill)
            else:
                ctx, input_ids, positions, sample_rows = self._device_batch(batch)
                if fill is not None:
                    input_ids.index_copy_(0, *fill)
                hidden = self.model(input_ids, positions, ctx)
                if self.tp.rank != 0:
                    return StepHandle(result)
                self._prompt_logprobs(out, batch, hidden, result)
                if not batch.sample_rows:
                    return StepHandle(result)
                logits = self.model.logits(hidden.index_select(0, sample_rows))
            if self.tp.rank != 0:
                return StepHandle(result)
            sampled = [s for s in out.seqs if s.sample]
            gens = [self._generator(s.request_id, s.params.seed) if s.params.temperature > 0 else None for s in sampled]
            banned = [s.banned_ids for s in sampled]
            if overlap and not any(s.params.needs_history for s in sampled):
                return self._sample_on_device(sampled, logits, gens, banned, result)
            allowed = self._grammar_bitmask(sampled)  # host work while the device runs the forward pass
            seen = [(self.history[s.request_id], s.prompt_len) if s.params.penalized else None for s in sampled]
            # a constrained request's matcher consumes this token in the next step's `fill`, which runs while
            # the device computes that step (consuming here would hold the host after the sync)
            result.tokens, result.logprobs = sample(logits, [s.params for s in sampled], gens, seen, banned, allowed)
            return StepHandle(result)

    def _placeholders(
        self, out: SchedulerOutput, b: HostBatch, last: tuple[torch.Tensor, dict[str, int]] | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows of the batch's input ids, their tokens on the device) for the sequences whose token is the
        one they sampled in the last launched step; None when there are none."""
        rows = [b.q_indptr[i] for i, s in enumerate(out.seqs) if s.from_last_step]
        if not rows:
            return None
        if last is None:
            raise ValueError("a sequence takes the last step's token, but the last step left none on the device")
        tokens, where = last
        src = [where[s.request_id] for s in out.seqs if s.from_last_step]
        rows_d, src_d = h2d_many([(rows, torch.long), (src, torch.long)], self.device)
        return rows_d, tokens.index_select(0, src_d)

    def _sample_on_device(self, sampled, logits, gens, banned, result: ModelOutput) -> StepHandle:
        """Samples without waiting for the device; keeps the tokens for the next step's placeholders and
        starts their copy (and the logprobs') to pinned host memory."""
        tokens, ok = sample_on_device(logits, [s.params for s in sampled], gens, banned)
        self._last_tokens = (tokens, {s.request_id: i for i, s in enumerate(sampled)})
        ks = [s.params.logprobs for s in sampled]
        ints, floats = [tokens, ok.long()], []
        if any(k is not None for k in ks):
            vals, top_ids, top_vals = token_logprobs_on_device(logits, tokens, ks)
            ints.append(top_ids)
            floats = [vals, top_vals]
        return StepHandle(
            result, _to_host(torch.cat(ints)), _to_host(torch.cat(floats)) if floats else None, ks, self.device
        )

    def forward_logits(self, out: SchedulerOutput) -> torch.Tensor:
        """One step's forward pass without sampling: the logits [sequences with sample=True, vocab]
        (the step's adapter loads and KV writes happen as in `execute`; under TP every rank calls it
        together and all get the same logits, the lm_head being replicated). Tests and debugging."""
        self._load_adapters(out)
        batch = self._host_batch(out)
        with torch.inference_mode():
            ctx, input_ids, positions, sample_rows = self._device_batch(batch)
            hidden = self.model(input_ids, positions, ctx)
            return self.model.logits(hidden.index_select(0, sample_rows))

    def _grammar_bitmask(self, sampled: list[ScheduledSeq]) -> tuple[torch.Tensor, list[int]] | None:
        """The constrained sequences' allowed next tokens (app/structured.py): a bitmask filled on the host
        from each request's matcher, brought up to its output tokens so far, then copied to the device
        (one copy per step); None when no sequence is constrained."""
        rows = [i for i, s in enumerate(sampled) if s.params.structured is not None]
        if not rows:
            return None
        if self.constraints is None:
            from app.structured import Constraints, Grammars

            eos = set(self.args.eos_token_id)
            tok = Tokenizer(self.cfg.tokenizer or self.cfg.model)
            if tok.eos_token_id is not None:
                eos.add(tok.eos_token_id)
            self.constraints = Constraints(Grammars(tok.hf, self.args.vocab_size, sorted(eos)))
        bitmask = self.constraints.grammars.bitmask(len(rows))
        specs = [sampled[i] for i in rows]
        self.constraints.fill(
            [
                (s.request_id, so, self.history[s.request_id][s.prompt_len :])
                for s in specs
                if (so := s.params.structured) is not None  # all of them (rows)
            ],
            bitmask,
        )
        return bitmask.to(self.device), rows

    def _prompt_logprobs(self, out: SchedulerOutput, batch: HostBatch, hidden: torch.Tensor, result: ModelOutput):
        """Log-softmax at the prompt positions that sequences ask for (`prompt_lp_targets`), a bounded
        number of rows at a time (the logits of a long prompt would be [tokens, vocab])."""
        rows = iter(batch.prompt_rows)
        for s in out.seqs:
            if not s.prompt_lp_targets:
                continue
            lps = []
            seq_rows = [next(rows) for _ in s.prompt_lp_targets]
            for i in range(0, len(seq_rows), PROMPT_LOGPROB_ROWS):
                logits = self.model.logits(hidden[seq_rows[i : i + PROMPT_LOGPROB_ROWS]])
                lps += prompt_token_logprobs(
                    logits, s.prompt_lp_targets[i : i + PROMPT_LOGPROB_ROWS], s.params.prompt_logprobs
                )
            result.prompt_logprobs[s.request_id] = lps

    def _load_adapters(self, out: SchedulerOutput) -> None:
        """Adapters this step uses are copied on the compute stream; prefetched ones (for queued
        requests) on a side stream that the next step waits for, so their copy overlaps this step."""
        if self.copy_stream is not None and self._prefetch_event is not None:
            torch.cuda.current_stream().wait_event(self._prefetch_event)
            self._prefetch_event = None
        prefetch = set(out.prefetch)
        if prefetch and self.copy_stream is not None:
            # pages given to a prefetched adapter may have been read by work still queued on the
            # compute stream (an evicted adapter of the last step): copy only after that work
            self.copy_stream.wait_stream(torch.cuda.current_stream())
        for name, pages in out.adapter_loads:
            if name in prefetch and self.copy_stream is not None:
                with torch.cuda.stream(self.copy_stream):
                    self.fill_adapter_pages(name, pages)
            else:
                self.fill_adapter_pages(name, pages)
        if prefetch and self.copy_stream is not None:
            self._prefetch_event = torch.cuda.Event()
            self._prefetch_event.record(self.copy_stream)

    def _generator(self, rid: str, seed: int | None) -> torch.Generator:
        g = self.generators.get(rid)
        if g is None:
            g = torch.Generator(self.device)
            g.manual_seed(seed if seed is not None else self._seed_rng.getrandbits(63))
            self.generators[rid] = g
        return g

    def _host_batch(self, out: SchedulerOutput) -> HostBatch:
        """Everything the forward pass needs, as host lists (cheap to pad, copy once to the device)."""
        ps = self.page_size
        b = HostBatch()
        for s in out.seqs:
            n = len(s.token_ids)
            b.input_ids += s.token_ids
            p = range(s.start_pos, s.start_pos + n)
            b.positions += p
            if n == 1:
                b.slots.append(s.kv_pages[s.start_pos // ps] * ps + s.start_pos % ps)
            else:  # a prefill chunk: its tokens' slots at once
                pos = np.arange(s.start_pos, s.start_pos + n)
                b.slots += (np.asarray(s.kv_pages, dtype=np.int64)[pos // ps] * ps + pos % ps).tolist()
            b.q_indptr.append(b.q_indptr[-1] + n)
            b.seq_lens.append(s.start_pos + n)
            b.kv_pages.append(s.kv_pages)
            if s.sample:
                b.sample_rows.append(b.q_indptr[-1] - 1)
            if s.prompt_lp_targets:
                first = b.q_indptr[-2] + s.prompt_lp_start - s.start_pos
                b.prompt_rows += range(first, first + len(s.prompt_lp_targets))
        b.max_q_len = max(len(s.token_ids) for s in out.seqs)
        b.num_decode = next((i for i, s in enumerate(out.seqs) if len(s.token_ids) != 1), len(out.seqs))
        slots: dict[str, int] = {}
        for s in out.seqs:
            b.seg_slot.append(-1 if s.adapter is None else slots.setdefault(s.adapter, len(slots)))
        for name in slots:
            packed = self.adapters[name]
            b.lora_pages.append(self.adapter_pages[name])
            b.lora_scales.append(packed.scale)
            rows_by_group, max_rank, targeted = packed.layout.slot_rows
            b.lora_targeted |= targeted
            for g, rows in rows_by_group.items():
                dst = b.lora_groups.setdefault(g, ([], [], [], []))
                for k in range(4):
                    dst[k].append(rows[k])
            b.max_rank = max(b.max_rank, max_rank)
        return b

    def _device_batch(self, b: HostBatch):
        """(ForwardContext, input ids, positions, sample rows) on the device, in one host-to-device copy."""
        i32 = torch.int32
        groups = [g for g in LORA_GROUPS if g in b.lora_targeted] if b.lora_pages else []
        parts = [
            (b.q_indptr, i32), (b.seq_lens, i32), (padded_table(b.kv_pages), i32), (b.slots, torch.int64),
            (b.input_ids, torch.long), (b.positions, torch.long), (b.sample_rows, torch.long),
        ]  # fmt: skip
        if b.lora_pages:
            parts += [(padded_table(b.lora_pages), i32), (b.lora_scales, torch.float32), (b.seg_slot, i32)]
            parts += [(rows, i32) for g in groups for rows in b.lora_groups[g]]
        q_indptr, seq_lens, kv_table, slots, input_ids, positions, sample_rows, *rest = h2d_many(parts, self.device)
        attn = AttentionMeta(
            q_indptr=q_indptr,
            seq_lens=seq_lens,
            kv_page_table=kv_table,
            slot_mapping=slots,
            max_q_len=b.max_q_len,
            num_decode=b.num_decode,
        )
        lora = None
        if b.lora_pages:
            page_table, scales, seg_slot, *group_rows = rest
            lora = LoRAMeta(
                page_table=page_table,
                scales=scales,
                seg_indptr=q_indptr,
                seg_slot=seg_slot,
                max_seg_len=b.max_q_len,
                max_rank=b.max_rank,
                # only the groups some adapter of the step targets: apply_lora skips the others
                groups={g: LoRAGroupMeta(*group_rows[4 * i : 4 * i + 4]) for i, g in enumerate(groups)},
            )
            lora.plan = self.backend.lora_plan(q_indptr, lora.seg_slot, len(b.lora_pages), len(b.input_ids),
                                               b.max_q_len)  # fmt: skip
        ctx = ForwardContext(
            attn=attn, lora=lora, pool=self.pool, page_size=self.page_size, backend=self.backend, tp=self.tp
        )
        return ctx, input_ids, positions, sample_rows


@dataclass
class HostBatch:
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    q_indptr: list[int] = field(default_factory=lambda: [0])
    seq_lens: list[int] = field(default_factory=list)
    kv_pages: list[list[int]] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)
    prompt_rows: list[int] = field(default_factory=list)  # rows whose logits give prompt logprobs
    max_q_len: int = 0
    num_decode: int = 0  # leading sequences with one query token (the scheduler orders decodes first)
    seg_slot: list[int] = field(default_factory=list)
    lora_pages: list[list[int]] = field(default_factory=list)
    lora_scales: list[float] = field(default_factory=list)
    lora_groups: dict[str, tuple[list, list, list, list]] = field(default_factory=dict)  # a_off, b_off, ra, rb
    max_rank: int = 1
    lora_targeted: set[str] = field(default_factory=set)  # LoRA groups some adapter of the step targets


_NP_DTYPES = {torch.int32: np.int32, torch.int64: np.int64, torch.float32: np.float32}


def h2d_many(parts: list[tuple[object, torch.dtype]], device: str) -> list[torch.Tensor]:
    """Each (values, dtype) of `parts` (lists, nested lists of equal lengths or numpy arrays; int32, int64
    or float32) as a tensor of that dtype and shape on `device`, all in one host-to-device copy: one pinned
    buffer, each part at a 16-byte aligned offset (what Triton's pointer specialization expects), the
    results views of one device buffer. Queued on the current stream without waiting for it
    (`torch.tensor(values, device="cuda")` would wait, draining the queue asynchronous scheduling keeps
    full). A step's metadata is tens of small arrays; pinning and copying each cost ~80 us of host time on
    an H200 host (benchmarks/results/issue13/run2), this one copy a few."""
    arrays = [np.ascontiguousarray(np.asarray(v, dtype=_NP_DTYPES[dt])) for v, dt in parts]
    if torch.device(device).type == "cpu":
        return [torch.from_numpy(a) for a in arrays]
    offsets, total = [], 0
    for a in arrays:
        offsets.append(total)
        total += -(-a.nbytes // 16) * 16
    host = torch.empty(max(total, 16), dtype=torch.uint8, pin_memory=True)
    view = host.numpy()
    for a, o in zip(arrays, offsets):
        view[o : o + a.nbytes] = a.reshape(-1).view(np.uint8)
    dev = host.to(device, non_blocking=True)
    return [dev[o : o + a.nbytes].view(dt).view(a.shape) for a, o, (_, dt) in zip(arrays, offsets, parts)]


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A copy of t in host memory, queued on the current stream (pinned memory: it does not wait)."""
    if t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


class StepHandle:
    """A launched step's ModelOutput. Sampled on the device: the tokens, success flags and logprobs on
    their way to pinned host memory behind a CUDA event, read by `result()` (which waits for the event);
    else the ModelOutput itself."""

    def __init__(
        self,
        output: ModelOutput,
        ints: torch.Tensor | None = None,
        floats: torch.Tensor | None = None,
        ks: list[int | None] | None = None,
        device: str = "cpu",
    ):
        self.output, self._ints, self._floats, self._ks = output, ints, floats, ks
        self._event = None
        if ints is not None and device == "cuda":
            self._event = torch.cuda.Event()
            self._event.record()

    def result(self) -> ModelOutput:
        if self._ints is None:
            return self.output
        if self._event is not None:
            self._event.synchronize()
        ks = self._ks
        assert ks is not None  # given with ints
        n = len(ks)
        ints = self._ints.tolist()
        floats = self._floats.tolist() if self._floats is not None else []
        tokens, ok, top_ids = ints[:n], ints[n : 2 * n], iter(ints[2 * n :])
        m = sum(k is not None for k in ks)
        vals, top_vals = iter(floats[:m]), iter(floats[m:])
        logprobs: list[TokenLogprobs | None] = []
        for i, k in enumerate(ks):
            lp = None
            if k is not None:
                lp = TokenLogprobs(next(vals), [(next(top_ids), next(top_vals)) for _ in range(k)])
            if not ok[i]:
                tokens[i], lp = FAILED, None
            logprobs.append(lp)
        self.output.tokens, self.output.logprobs = tokens, logprobs
        self._ints = None
        return self.output
