"""The model runner of one (tensor-parallel) rank: owns the model shard, the pool tensor and this rank's
adapter shards; turns a `SchedulerOutput` into tensors, runs the forward pass and samples.

In:  SchedulerOutput (plain data). Out (rank 0): a ModelOutput: one sampled token per sequence with
`sample=True`, their logprobs where requested, and the prompt logprobs a sequence's `prompt_lp_targets` ask for.
Per step: (1) copy newly admitted adapters into their pool pages, (2) build attention metadata
(page tables, slot mapping) and LoRA metadata (adapter slots, page tables, offsets, ranks, scales),
(3) forward, (4) logits of each sequence's last token (and of the prompt positions asked for), (5) sample.
"""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from app.config import EngineConfig
from app.lora.adapter import LoRAWeights, PackedAdapter, pack_adapter
from app.lora.layer import LORA_GROUPS
from app.model.context import AttentionMeta, ForwardContext, LoRAGroupMeta, LoRAMeta, ParallelState, padded_table
from app.model.llama import LlamaForCausalLM, ModelArgs
from app.request import ModelOutput
from app.sampling import prompt_token_logprobs, sample
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
        self.adapter_pages: dict[str, list[int]] = {}
        self.generators: dict[str, torch.Generator] = {}
        self.history: dict[str, list[int]] = {}  # penalized / constrained requests' tokens (prompt + output)
        self.constraints: Constraints | None = None  # made for the first constrained request
        self._seed_rng = random.Random(cfg.seed)
        self.copy_stream = torch.cuda.Stream() if self.device == "cuda" else None
        self._prefetch_event: torch.cuda.Event | None = None
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

    def pack_adapter(self, weights: LoRAWeights) -> PackedAdapter:
        """This rank's shard, packed (any thread: reads only the runner's fixed page size, dtype and rank)."""
        return pack_adapter(
            weights, self.page_elems, self.dtype, self.tp.rank, self.tp.world_size, pin=self.device == "cuda"
        )

    def add_packed(self, name: str, packed: PackedAdapter) -> int:
        """Adds a packed shard; returns its page count."""
        self.adapters[name] = packed
        self.adapter_pages.pop(name, None)
        return packed.layout.num_pages

    def remove_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)
        self.adapter_pages.pop(name, None)

    def _fill(self, name: str, pages: list[int]) -> None:
        data = self.adapters[name].data
        idx = torch.tensor(pages, dtype=torch.long, device=self.device)
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
        for rid in out.finished_ids:
            self.generators.pop(rid, None)
        for rid in out.finished_ids + out.preempted_ids:  # a preempted request keeps its generator: sampling
            self.history.pop(rid, None)  # after its recompute goes on from the same random state
            if self.constraints is not None:
                self.constraints.drop(rid)
        for s in out.seqs:  # the tokens so far of requests whose sampling looks at them (penalties, grammar)
            if s.params.needs_history:
                h = self.history.setdefault(s.request_id, [])
                del h[s.start_pos :]  # a recomputed request feeds its tokens again from 0
                h += s.token_ids
        self._load_adapters(out)
        if not out.seqs:
            return ModelOutput()
        batch = self._host_batch(out)
        result = ModelOutput()
        with torch.inference_mode():
            graph = self.graphs.runnable(batch) if self.graphs and not batch.prompt_rows else None
            if graph is not None:
                logits = graph.replay(batch)
            else:
                ctx, input_ids, positions = self._device_batch(batch)
                hidden = self.model(input_ids, positions, ctx)
                if self.tp.rank != 0:
                    return result
                self._prompt_logprobs(out, batch, hidden, result)
                if not batch.sample_rows:
                    return result
                logits = self.model.logits(hidden[batch.sample_rows])
            if self.tp.rank != 0:
                return result
            sampled = [s for s in out.seqs if s.sample]
            allowed = self._grammar_bitmask(sampled)  # host work while the device runs the forward pass
            gens = [self._generator(s.request_id, s.params.seed) if s.params.temperature > 0 else None for s in sampled]
            seen = [(self.history[s.request_id], s.prompt_len) if s.params.penalized else None for s in sampled]
            banned = [s.banned_ids for s in sampled]
            result.tokens, result.logprobs = sample(logits, [s.params for s in sampled], gens, seen, banned, allowed)
            for s, tok in zip(sampled, result.tokens):
                if s.params.structured is not None:
                    assert self.constraints is not None  # made by _grammar_bitmask above
                    self.constraints.accept(s.request_id, tok)
            return result

    def forward_logits(self, out: SchedulerOutput) -> torch.Tensor:
        """One step's forward pass without sampling: the logits [sequences with sample=True, vocab]
        (the step's adapter loads and KV writes happen as in `execute`; under TP every rank calls it
        together and all get the same logits, the lm_head being replicated). Tests and debugging."""
        self._load_adapters(out)
        batch = self._host_batch(out)
        with torch.inference_mode():
            ctx, input_ids, positions = self._device_batch(batch)
            hidden = self.model(input_ids, positions, ctx)
            return self.model.logits(hidden[batch.sample_rows])

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
                    self._fill(name, pages)
            else:
                self._fill(name, pages)
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
        slots: dict[str, int] = {}
        for s in out.seqs:
            b.seg_slot.append(-1 if s.adapter is None else slots.setdefault(s.adapter, len(slots)))
        for name in slots:
            packed = self.adapters[name]
            b.lora_pages.append(self.adapter_pages[name])
            b.lora_scales.append(packed.scale)
            for g in LORA_GROUPS:
                rows = packed.layout.group_rows(g)
                for k in range(4):
                    b.lora_groups.setdefault(g, ([], [], [], []))[k].append(rows[k])
                b.max_rank = max(b.max_rank, max(rows[3]))
        return b

    def _device_batch(self, b: HostBatch):
        dev = self.device
        i32: dict[str, Any] = dict(dtype=torch.int32, device=dev)
        q_indptr = torch.tensor(b.q_indptr, **i32)
        attn = AttentionMeta(
            q_indptr=q_indptr,
            seq_lens=torch.tensor(b.seq_lens, **i32),
            kv_page_table=torch.from_numpy(padded_table(b.kv_pages)).to(dev),
            slot_mapping=torch.tensor(b.slots, dtype=torch.int64, device=dev),
            max_q_len=b.max_q_len,
        )
        lora = None
        if b.lora_pages:
            groups = {g: LoRAGroupMeta(*(torch.tensor(rows, **i32) for rows in b.lora_groups[g])) for g in LORA_GROUPS}
            lora = LoRAMeta(
                page_table=torch.from_numpy(padded_table(b.lora_pages)).to(dev),
                scales=torch.tensor(b.lora_scales, dtype=torch.float32, device=dev),
                seg_indptr=q_indptr,
                seg_slot=torch.tensor(b.seg_slot, **i32),
                max_seg_len=b.max_q_len,
                max_rank=b.max_rank,
                groups=groups,
            )
            lora.plan = self.backend.lora_plan(q_indptr, lora.seg_slot, len(b.lora_pages), len(b.input_ids),
                                               b.max_q_len)  # fmt: skip
        ctx = ForwardContext(
            attn=attn, lora=lora, pool=self.pool, page_size=self.page_size, backend=self.backend, tp=self.tp
        )
        return (
            ctx,
            torch.tensor(b.input_ids, dtype=torch.long, device=dev),
            torch.tensor(b.positions, dtype=torch.long, device=dev),
        )


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
    seg_slot: list[int] = field(default_factory=list)
    lora_pages: list[list[int]] = field(default_factory=list)
    lora_scales: list[float] = field(default_factory=list)
    lora_groups: dict[str, tuple[list, list, list, list]] = field(default_factory=dict)  # a_off, b_off, ra, rb
    max_rank: int = 1
