"""CUDA graphs for decode-only steps (one token per sequence), so that kernel-launch and Python overhead do
not dominate small batches. Under tensor parallelism every rank captures and replays the same graphs (the
same batches reach every rank), NCCL collectives included.

One graph per batch-size bucket (1, 2, 4, ..., up to max_num_seqs), set of LoRA groups (app/lora/layer.py)
that the step's adapters target, and adapter-slot bound of the step's LoRA plan, captured the first time it
is needed: a graph runs the LoRA kernels of its groups only (steps of the base model alone run none; a step
whose adapters all target q/k/v/o skips the MLP groups' launches, which would do nothing: 128 launches in a
32-layer graph). Engine.warmup captures the graphs of every group (its adapters target all modules) and of
none, Engine.warmup_adapter_graphs those of the groups of each adapter registered at startup; other sets
(adapters loaded later, a step mixing adapters of different sets) on first use.

The LoRA kernels launch programs for every tile the plan may hold (kernels/lora_plan.py), a bound that grows
with the adapter slots the plan is built for. So a bucket and group set has one graph per slot bound of
`plan_slot_bounds` (EngineConfig.cuda_graph_slot_bounds below the bucket, by default 16, and
max_loras_per_batch), all captured together, and a step replays the smallest that holds its adapters: a
256-token step of one adapter launches programs for 31 tiles, not 256 (the programs of empty tiles took a
third of that step's LoRA time on an H100, benchmarks/results/session-2026-12-06d/). Each graph keeps its
own logits ([bucket, vocab] float32), so a bound costs that much memory per bucket above it.

Every per-step input lives in a static buffer that the graph reads: token ids, positions, KV slot mapping,
KV page table (width: max_model_len / page_size), and the LoRA metadata (adapter page tables, offsets,
ranks, scales for up to max_loras_per_batch adapters; the shrink output has max_lora_rank columns). A step
copies its batch into the buffers (padding rows: no KV write, no adapter, a 1-token context) and replays;
the tokens that asynchronous scheduling leaves on the device (`fill`) are copied into the token buffer
there. Batches that do not fit (prefill, more sequences, a longer context or a larger adapter than the
buffers hold) run eagerly.
"""

from __future__ import annotations

import torch

from app.lora.adapter import module_shapes
from app.lora.layer import LORA_GROUPS
from app.model.context import AttentionMeta, ForwardContext, LoRAGroupMeta, LoRAMeta, padded_table
from app.runner import h2d_many


def decode_buckets(max_num_seqs: int) -> list[int]:
    """Batch sizes that get a graph: powers of two below max_num_seqs (at most 512), then that maximum."""
    max_bs = min(max_num_seqs, 512)
    return [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b < max_bs] + [max_bs]


def _bucket(n: int, buckets: list[int]) -> int:
    return next(b for b in buckets if b >= n)


def plan_slot_bounds(bs: int, max_loras: int, bounds: tuple[int, ...]) -> list[int]:
    """The adapter-slot bounds that a decode graph of batch size `bs` is captured for, ascending, the last
    max_loras: those of `bounds` below both bs and max_loras (a plan for n slots over bs tokens bounds its tiles
    by min(bs, (bs + n (M - 1)) / M), below bs only while n < bs)."""
    return sorted({n for n in bounds if n < min(bs, max_loras)}) + [max_loras]


def plan_slot_bound(bs: int, n_adapters: int, max_loras: int, bounds: tuple[int, ...]) -> int:
    """The smallest slot bound of `plan_slot_bounds(bs, max_loras, bounds)` that holds a step's `n_adapters`."""
    return next(n for n in plan_slot_bounds(bs, max_loras, bounds) if n >= n_adapters)


class DecodeGraphs:
    def __init__(self, runner):
        self.r = runner
        cfg, args = runner.cfg, runner.args
        self.buckets = decode_buckets(cfg.scheduler.max_num_seqs)
        max_len = args.max_model_len(cfg.scheduler.max_model_len)
        self.kv_width = -(-max_len // runner.page_size)
        self.max_loras = cfg.lora.max_loras_per_batch
        self.slot_bounds = cfg.cuda_graph_slot_bounds
        self.max_rank = cfg.lora.max_lora_rank
        per_rank = sum(i + o for i, o in module_shapes(args).values())
        self.lora_width = -(-self.max_rank * per_rank // runner.page_elems)
        B, M, dev = self.buckets[-1], self.max_loras, runner.device
        i32 = dict(dtype=torch.int32, device=dev)
        self.input_ids = torch.zeros(B, dtype=torch.long, device=dev)
        self.positions = torch.zeros(B, dtype=torch.long, device=dev)
        self.slots = torch.full((B,), -1, dtype=torch.int64, device=dev)
        self.q_indptr = torch.arange(B + 1, **i32)
        self.seq_lens = torch.ones(B, **i32)
        self.kv_table = torch.zeros(B, self.kv_width, **i32)
        self.seg_slot = torch.full((B,), -1, **i32)
        self.lora_table = torch.zeros(M, self.lora_width, **i32)
        self.scales = torch.zeros(M, dtype=torch.float32, device=dev)
        self.groups = {
            g: LoRAGroupMeta(*(torch.zeros(M, len(t), **i32) for _ in range(4))) for g, t in LORA_GROUPS.items()
        }
        # (bucket, the LoRA groups it runs, its plan's slot bound: max_loras without groups) -> (graph, its logits)
        self.graphs: dict[tuple[int, tuple[str, ...], int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.mempool = None

    def runnable(self, b) -> DecodeGraphs | None:
        n = len(b.seq_lens)
        if b.max_q_len != 1 or n > self.buckets[-1] or len(b.sample_rows) != n:
            return None
        if max(len(p) for p in b.kv_pages) > self.kv_width or len(b.lora_pages) > self.max_loras:
            return None
        if b.lora_pages and (max(len(p) for p in b.lora_pages) > self.lora_width or b.max_rank > self.max_rank):
            return None
        return self

    def _forward(self, bs: int, ctx: ForwardContext, slots: int) -> torch.Tensor:
        """The captured work: the decode plan for `slots` adapter slots (recomputed from seg_slot at every
        replay), the model, logits."""
        r, lora = self.r, ctx.lora
        if lora is not None:
            lora.plan = r.backend.lora_plan(lora.seg_indptr, lora.seg_slot, slots, bs, 1)
        return r.model.logits(r.model(self.input_ids[:bs], self.positions[:bs], ctx))

    def _ctx(self, bs: int, groups: tuple[str, ...]) -> ForwardContext:
        r = self.r
        q_indptr = self.q_indptr[: bs + 1]
        attn = AttentionMeta(
            q_indptr=q_indptr,
            seq_lens=self.seq_lens[:bs],
            kv_page_table=self.kv_table[:bs],
            slot_mapping=self.slots[:bs],
            max_q_len=1,
        )
        lora = LoRAMeta(
            page_table=self.lora_table,
            scales=self.scales,
            seg_indptr=q_indptr,
            seg_slot=self.seg_slot[:bs],
            max_seg_len=1,
            max_rank=self.max_rank,
            groups={g: self.groups[g] for g in groups},
        )
        return ForwardContext(
            attn=attn,
            lora=lora if groups else None,
            pool=r.pool,
            page_size=r.page_size,
            backend=r.backend,
            tp=r.tp,
            lora_stream=r.lora_stream,
        )

    def _capture(self, bs: int, groups: tuple[str, ...], slots: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        self._fill_padding(0, self.buckets[-1])
        ctx = self._ctx(bs, groups)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up: Triton compiles and autotunes outside the capture
            for _ in range(2):
                self._forward(bs, ctx, slots)
        torch.cuda.current_stream().wait_stream(s)
        if self.mempool is None:
            self.mempool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        # thread_local: the server's other threads (adapters packed into pinned memory, pinned later) may
        # call CUDA APIs that a global-mode capture would refuse while this one runs
        with torch.cuda.graph(g, pool=self.mempool, capture_error_mode="thread_local"):
            logits = self._forward(bs, ctx, slots)
        return g, logits

    def _fill_padding(self, lo: int, hi: int) -> None:
        self.input_ids[lo:hi] = 0
        self.positions[lo:hi] = 0
        self.slots[lo:hi] = -1
        self.seq_lens[lo:hi] = 1
        self.kv_table[lo:hi] = 0
        self.seg_slot[lo:hi] = -1

    def replay(self, b, fill: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Copies the batch into the static buffers, replays the bucket's graph; returns logits [n, V].
        `fill`: (rows, token ids) on the device that replace those rows' placeholder input ids."""
        n = len(b.seq_lens)
        bs = _bucket(n, self.buckets)
        groups = tuple(g for g in LORA_GROUPS if g in b.lora_targeted) if b.lora_pages else ()
        M, bounds = self.max_loras, self.slot_bounds
        key = (bs, groups, plan_slot_bound(bs, len(b.lora_pages), M, bounds) if groups else M)
        if key not in self.graphs:  # every slot bound of the bucket and groups at once (warm-up meets one)
            for slots in plan_slot_bounds(bs, M, bounds) if groups else [M]:
                self.graphs[(bs, groups, slots)] = self._capture(bs, groups, slots)
        g, logits = self.graphs[key]
        i32 = torch.int32
        parts = [
            (b.input_ids, torch.long), (b.positions, torch.long), (b.slots, torch.int64), (b.seq_lens, i32),
            (padded_table(b.kv_pages, self.kv_width), i32), (b.seg_slot, i32),
        ]  # fmt: skip
        dsts = [self.input_ids[:n], self.positions[:n], self.slots[:n], self.seq_lens[:n], self.kv_table[:n],
                self.seg_slot[:n]]  # fmt: skip
        if b.lora_pages:
            S = len(b.lora_pages)
            parts += [(padded_table(b.lora_pages, self.lora_width), i32), (b.lora_scales, torch.float32)]
            dsts += [self.lora_table[:S], self.scales[:S]]
            for name, meta in self.groups.items():
                for rows, dst in zip(b.lora_groups[name], (meta.a_offsets, meta.b_offsets, meta.ranks_a, meta.ranks_b)):
                    parts.append((rows, i32))
                    dsts.append(dst[:S])
        for dst, src in zip(dsts, h2d_many(parts, self.r.device)):  # one host-to-device copy
            dst.copy_(src.view(dst.shape), non_blocking=True)
        if fill is not None:
            self.input_ids.index_copy_(0, *fill)
        if n < bs:
            self._fill_padding(n, bs)
        g.replay()
        return logits[:n]
