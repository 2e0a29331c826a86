"""CUDA graphs, so that kernel-launch and Python overhead do not dominate a step. Under tensor parallelism every
rank captures and replays the same graphs (the same batches reach every rank), NCCL collectives included.

Decode-only steps (`DecodeGraphs`, one token per sequence): one graph per batch-size bucket (1, 2, 4, ..., up
to max_num_seqs) and kind, captured the first time it is needed: with LoRA (every group's kernels, for steps
that hold an adapter) and without (steps of the base model alone run no LoRA kernel: in a 32-layer graph those
are 256 launches that do nothing). Every per-step input lives in a static buffer that the graph reads: token
ids, positions, KV slot mapping, KV page table (width: max_model_len / page_size), and the LoRA metadata
(`StaticLoRA`: adapter page tables, offsets, ranks, scales for up to max_loras_per_batch adapters; the shrink
output has max_lora_rank columns). A step copies its batch into the buffers (padding rows: no KV write, no
adapter, a 1-token context) and replays; the tokens that asynchronous scheduling leaves on the device
(`fill`) are copied into the token buffer there. Batches that do not fit (prefill, more sequences, a longer
context or a larger adapter than the buffers hold) run eagerly.

Steps with a prefill chunk (`MixedGraphs`, piecewise as in vLLM): everything but attention is captured, in
num_layers + 1 pieces per token-count bucket and kind (embedding .. layer 0's K/V append; layer i's output
projection, MLP and layer i+1's q/k/v, RoPE and K/V append; the last layer's rest and the final norm);
attention, whose work depends on every sequence's context, runs eagerly between the pieces on the step's
own metadata. The pieces pass their activations through static buffers (q, attention output, the residual
stream). The step's tokens are padded to the bucket (padding tokens: no KV write, no adapter); steps with
more tokens than the largest bucket, or asking for prompt logprobs, run eagerly.
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


def mixed_buckets(max_tokens: int) -> list[int]:
    """Token counts that get piecewise graphs: multiples of 32 up to 128, of 64 up to 512, of 128 above, up
    to max_tokens (itself the last bucket); [] when max_tokens is 0. Padding adds at most 1/4 above 128."""
    if max_tokens <= 0:
        return []
    steps = [*range(32, 129, 32), *range(192, 513, 64), *range(640, max_tokens + 1, 128)]
    return [t for t in steps if t < max_tokens] + [max_tokens]


def _bucket(n: int, buckets: list[int]) -> int:
    return next(b for b in buckets if b >= n)


class StaticLoRA:
    """A graph's adapter inputs: page tables, scales and every LoRA group's offsets and ranks for up to
    max_loras_per_batch adapters of rank <= max_lora_rank, in static buffers."""

    def __init__(self, runner):
        cfg, dev = runner.cfg, runner.device
        self.max_loras = cfg.lora.max_loras_per_batch
        self.max_rank = cfg.lora.max_lora_rank
        per_rank = sum(i + o for i, o in module_shapes(runner.args).values())
        self.width = -(-self.max_rank * per_rank // runner.page_elems)
        M, i32 = self.max_loras, dict(dtype=torch.int32, device=dev)
        self.table = torch.zeros(M, self.width, **i32)
        self.scales = torch.zeros(M, dtype=torch.float32, device=dev)
        self.groups = {
            g: LoRAGroupMeta(*(torch.zeros(M, len(t), **i32) for _ in range(4))) for g, t in LORA_GROUPS.items()
        }

    def fits(self, b) -> bool:
        if len(b.lora_pages) > self.max_loras:
            return False
        return not b.lora_pages or (max(map(len, b.lora_pages)) <= self.width and b.max_rank <= self.max_rank)

    def parts(self, b) -> tuple[list, list[torch.Tensor]]:
        """(h2d_many parts, their destination buffers) of batch b's adapters (none without one)."""
        if not b.lora_pages:
            return [], []
        S, i32 = len(b.lora_pages), torch.int32
        parts = [(padded_table(b.lora_pages, self.width), i32), (b.lora_scales, torch.float32)]
        dsts = [self.table[:S], self.scales[:S]]
        for name, meta in self.groups.items():
            for rows, dst in zip(b.lora_groups[name], (meta.a_offsets, meta.b_offsets, meta.ranks_a, meta.ranks_b)):
                parts.append((rows, i32))
                dsts.append(dst[:S])
        return parts, dsts

    def meta(self, seg_indptr: torch.Tensor, seg_slot: torch.Tensor, max_seg_len: int) -> LoRAMeta:
        return LoRAMeta(
            page_table=self.table,
            scales=self.scales,
            seg_indptr=seg_indptr,
            seg_slot=seg_slot,
            max_seg_len=max_seg_len,
            max_rank=self.max_rank,
            groups=self.groups,
        )


def _copy_all(parts: list, dsts: list[torch.Tensor], device: str) -> None:
    for dst, src in zip(dsts, h2d_many(parts, device)):  # one host-to-device copy
        dst.copy_(src.view(dst.shape), non_blocking=True)


class DecodeGraphs:
    def __init__(self, runner):
        self.r = runner
        cfg, args = runner.cfg, runner.args
        self.buckets = decode_buckets(cfg.scheduler.max_num_seqs)
        max_len = args.max_model_len(cfg.scheduler.max_model_len)
        self.kv_width = -(-max_len // runner.page_size)
        self.lora = StaticLoRA(runner)
        B, dev = self.buckets[-1], runner.device
        i32 = dict(dtype=torch.int32, device=dev)
        self.input_ids = torch.zeros(B, dtype=torch.long, device=dev)
        self.positions = torch.zeros(B, dtype=torch.long, device=dev)
        self.slots = torch.full((B,), -1, dtype=torch.int64, device=dev)
        self.q_indptr = torch.arange(B + 1, **i32)
        self.seq_lens = torch.ones(B, **i32)
        self.kv_table = torch.zeros(B, self.kv_width, **i32)
        self.seg_slot = torch.full((B,), -1, **i32)
        self.graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # (bucket, LoRA)
        self.mempool = None

    def runnable(self, b) -> DecodeGraphs | None:
        n = len(b.seq_lens)
        if b.max_q_len != 1 or n > self.buckets[-1] or len(b.sample_rows) != n:
            return None
        if max(len(p) for p in b.kv_pages) > self.kv_width or not self.lora.fits(b):
            return None
        return self

    def _forward(self, bs: int, ctx: ForwardContext) -> torch.Tensor:
        """The captured work: the decode plan (recomputed from seg_slot at every replay), the model, logits."""
        r, lora = self.r, ctx.lora
        if lora is not None:
            lora.plan = r.backend.lora_plan(lora.seg_indptr, lora.seg_slot, self.lora.max_loras, bs, 1)
        return r.model.logits(r.model(self.input_ids[:bs], self.positions[:bs], ctx))

    def _ctx(self, bs: int, with_lora: bool) -> ForwardContext:
        r = self.r
        q_indptr = self.q_indptr[: bs + 1]
        attn = AttentionMeta(
            q_indptr=q_indptr,
            seq_lens=self.seq_lens[:bs],
            kv_page_table=self.kv_table[:bs],
            slot_mapping=self.slots[:bs],
            max_q_len=1,
        )
        lora = self.lora.meta(q_indptr, self.seg_slot[:bs], 1) if with_lora else None
        return ForwardContext(attn=attn, lora=lora, pool=r.pool, page_size=r.page_size, backend=r.backend, tp=r.tp)

    def _capture(self, bs: int, with_lora: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        self._fill_padding(0, self.buckets[-1])
        ctx = self._ctx(bs, with_lora)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up: Triton compiles and autotunes outside the capture
            for _ in range(2):
                self._forward(bs, ctx)
        torch.cuda.current_stream().wait_stream(s)
        if self.mempool is None:
            self.mempool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        # thread_local: the server's other threads (adapters packed into pinned memory, pinned later) may
        # call CUDA APIs that a global-mode capture would refuse while this one runs
        with torch.cuda.graph(g, pool=self.mempool, capture_error_mode="thread_local"):
            logits = self._forward(bs, ctx)
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
        key = (bs, bool(b.lora_pages))
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        g, logits = self.graphs[key]
        i32 = torch.int32
        parts = [
            (b.input_ids, torch.long), (b.positions, torch.long), (b.slots, torch.int64), (b.seq_lens, i32),
            (padded_table(b.kv_pages, self.kv_width), i32), (b.seg_slot, i32),
        ]  # fmt: skip
        dsts = [self.input_ids[:n], self.positions[:n], self.slots[:n], self.seq_lens[:n], self.kv_table[:n],
                self.seg_slot[:n]]  # fmt: skip
        lora_parts, lora_dsts = self.lora.parts(b)
        _copy_all(parts + lora_parts, dsts + lora_dsts, self.r.device)
        if fill is not None:
            self.input_ids.index_copy_(0, *fill)
        if n < bs:
            self._fill_padding(n, bs)
        g.replay()
        return logits[:n]


class MixedGraphs:
    """Piecewise graphs of steps with a prefill chunk (module docstring). `record=False` runs the pieces
    eagerly from the same static buffers instead of capturing them (the CPU tests of this class's padding
    and buffer handling; graphs need CUDA)."""

    def __init__(self, runner, max_tokens: int, record: bool = True):
        self.r = runner
        cfg, args, m = runner.cfg, runner.args, runner.model
        self.buckets = mixed_buckets(max_tokens)
        self.max_seqs = cfg.scheduler.max_num_seqs
        self.record = record
        self.lora = StaticLoRA(runner)
        T, S, dev = self.buckets[-1], self.max_seqs, runner.device
        i32 = dict(dtype=torch.int32, device=dev)
        self.input_ids = torch.zeros(T, dtype=torch.long, device=dev)
        self.positions = torch.zeros(T, dtype=torch.long, device=dev)
        self.slots = torch.full((T,), -1, dtype=torch.int64, device=dev)
        self.seg_indptr = torch.zeros(S + 1, **i32)
        self.seg_slot = torch.full((S,), -1, **i32)
        act = dict(dtype=runner.dtype, device=dev)
        self.h = torch.zeros(T, args.hidden_size, **act)  # the residual stream
        self.q = torch.zeros(T, m.heads, args.head_dim, **act)  # a piece's q, attention's input
        self.o = torch.zeros(T, m.heads, args.head_dim, **act)  # attention's output, the next piece's input
        self.cos = torch.zeros(T, args.head_dim // 2, dtype=torch.float32, device=dev)
        self.sin = torch.zeros_like(self.cos)
        # (bucket, LoRA) -> (the pieces' replays, the last piece's output, the context the pieces read)
        self.graphs: dict[tuple[int, bool], tuple[list, torch.Tensor | None, ForwardContext]] = {}
        self.mempool = torch.cuda.graph_pool_handle() if record else None

    def runnable(self, b) -> MixedGraphs | None:
        if not self.buckets or b.prompt_rows or len(b.input_ids) > self.buckets[-1]:
            return None
        return self if len(b.seq_lens) <= self.max_seqs and self.lora.fits(b) else None

    def _ctx(self, tb: int, with_lora: bool) -> ForwardContext:
        """What the pieces read: the static buffers (attention runs outside them, on the step's metadata)."""
        r = self.r
        attn = AttentionMeta(
            q_indptr=self.seg_indptr,
            seq_lens=self.seg_indptr[1:],
            kv_page_table=self.seg_indptr[None, :],
            slot_mapping=self.slots[:tb],
            max_q_len=tb,
        )  # only slot_mapping is read inside the pieces
        lora = self.lora.meta(self.seg_indptr, self.seg_slot, tb) if with_lora else None
        return ForwardContext(attn=attn, lora=lora, pool=r.pool, page_size=r.page_size, backend=r.backend, tp=r.tp)

    def _piece(self, k: int, tb: int, ctx: ForwardContext) -> torch.Tensor | None:
        """Piece k of a tb-token step: (k = 0) the step's LoRA plan, RoPE angles, embedding and first norm,
        else layer k-1 after attention; then (k < num_layers) layer k up to attention, its q into self.q.
        Returns the final hidden states from the last piece."""
        m, L = self.r.model, self.r.args.num_layers
        h = self.h[:tb]
        if k == 0:
            if ctx.lora is not None:
                ctx.lora.plan = self.r.backend.lora_plan(self.seg_indptr, self.seg_slot, self.lora.max_loras, tb, tb)
            cos, sin = m.rope_cos_sin(self.positions[:tb])
            self.cos[:tb].copy_(cos)
            self.sin[:tb].copy_(sin)
            h.copy_(m.embed(self.input_ids[:tb]))
            x = ctx.backend.rms_norm(h, m.w["0.in_norm"], m.args.rms_norm_eps)
        else:
            x = m.post_attention(k - 1, h, self.o[:tb], ctx)
        if k == L:
            return x
        self.q[:tb].copy_(m.pre_attention(k, x, self.cos[:tb], self.sin[:tb], ctx))
        return None

    def _capture(self, tb: int, with_lora: bool) -> tuple[list, torch.Tensor | None, ForwardContext]:
        ctx = self._ctx(tb, with_lora)
        L = self.r.args.num_layers
        if not self.record:
            pieces = [lambda k=k: self._piece(k, tb, ctx) for k in range(L + 1)]
            return pieces, None, ctx
        self._fill_padding(0, self.buckets[-1])
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up: Triton compiles outside the capture
            for _ in range(2):
                for k in range(L + 1):
                    self._piece(k, tb, ctx)
        graphs, out = [], None
        # capture_begin / capture_end rather than torch.cuda.graph, which collects garbage and empties the
        # allocator's cache before every capture (hundreds of pieces); thread_local as in DecodeGraphs
        with torch.cuda.stream(s):
            for k in range(L + 1):
                g = torch.cuda.CUDAGraph()
                g.capture_begin(pool=self.mempool, capture_error_mode="thread_local")
                try:
                    out = self._piece(k, tb, ctx)
                finally:
                    g.capture_end()
                graphs.append(g.replay)
        torch.cuda.current_stream().wait_stream(s)
        return graphs, out, ctx

    def _fill_padding(self, lo: int, hi: int) -> None:
        self.input_ids[lo:hi] = 0
        self.positions[lo:hi] = 0
        self.slots[lo:hi] = -1

    def replay(self, b, fill: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs batch b through its bucket's pieces with eager attention between them. Returns (final hidden
        states [T, H], the sample rows on the device). `fill` as in DecodeGraphs.replay."""
        r, T, n = self.r, len(b.input_ids), len(b.seq_lens)
        tb = _bucket(T, self.buckets)
        key = (tb, bool(b.lora_pages))
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        pieces, out, _ = self.graphs[key]
        i32, pad = torch.int32, tb - T
        parts = [
            (b.q_indptr, i32), (b.seq_lens, i32), (padded_table(b.kv_pages), i32), (b.sample_rows, torch.long),
            (b.input_ids + [0] * pad, torch.long), (b.positions + [0] * pad, torch.long),
            (b.slots + [-1] * pad, torch.int64),
        ]  # fmt: skip
        q_indptr, seq_lens, kv_table, sample_rows, *_ = dev = h2d_many(parts, r.device)
        for dst, src in zip((self.input_ids, self.positions, self.slots), dev[4:]):
            dst[:tb].copy_(src, non_blocking=True)
        if b.lora_pages:  # segments past the batch's: empty, no adapter
            seg = [(b.q_indptr + [T] * (self.max_seqs - n), i32), (b.seg_slot + [-1] * (self.max_seqs - n), i32)]
            lora_parts, lora_dsts = self.lora.parts(b)
            _copy_all(seg + lora_parts, [self.seg_indptr, self.seg_slot, *lora_dsts], r.device)
        if fill is not None:
            self.input_ids.index_copy_(0, *fill)
        attn = AttentionMeta(
            q_indptr=q_indptr,
            seq_lens=seq_lens,
            kv_page_table=kv_table,
            slot_mapping=self.slots[:T],
            max_q_len=b.max_q_len,
            num_decode=b.num_decode,
        )
        actx = ForwardContext(attn=attn, lora=None, pool=r.pool, page_size=r.page_size, backend=r.backend, tp=r.tp)
        hidden = pieces[0]()
        for i in range(r.args.num_layers):
            r.model.attention(i, self.q[:T], self.o[:T], actx)
            hidden = pieces[i + 1]()
        hidden = out if self.record else hidden
        assert hidden is not None  # the last piece's output
        return hidden[:T], sample_rows
