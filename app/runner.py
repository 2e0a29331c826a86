"""The model runner of one (tensor-parallel) rank: owns the model shard, the pool tensor and this rank's
adapter shards; turns a `SchedulerOutput` into tensors, runs the forward pass and samples.

In:  SchedulerOutput (plain data). Out: one sampled token per sequence with `sample=True` (rank 0).
Per step: (1) copy newly admitted adapters into their pool pages, (2) build attention metadata
(page tables, slot mapping) and LoRA metadata (adapter slots, page tables, offsets, ranks, scales),
(3) forward, (4) logits of each sequence's last token, (5) sample.
"""

from __future__ import annotations

import random

import torch

from app.config import EngineConfig
from app.lora.adapter import LORA_GROUPS, LoRAWeights, PackedAdapter, pack_adapter
from app.model.context import AttentionMeta, ForwardContext, LoRAGroupMeta, LoRAMeta, ParallelState
from app.model.llama import LlamaForCausalLM, ModelArgs
from app.sampling import sample
from app.scheduler import SchedulerOutput
from kernels import get_backend

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(cfg: EngineConfig, args: ModelArgs, device: str) -> torch.dtype:
    if cfg.dtype != "auto":
        return DTYPES[cfg.dtype]
    if device == "cpu":
        return torch.float32
    return DTYPES.get(str(args.torch_dtype), torch.bfloat16) if args.torch_dtype != "float32" else torch.bfloat16


class ModelRunner:
    def __init__(self, cfg: EngineConfig, tp: ParallelState | None = None, device: str | None = None):
        self.cfg = cfg
        self.tp = tp or ParallelState()
        self.device = device or cfg.resolved_device()
        self.args = ModelArgs.from_dir(cfg.model)
        self.dtype = resolve_dtype(cfg, self.args, self.device)
        self.backend = get_backend(cfg.resolved_backend())
        self.model = LlamaForCausalLM(self.args, self.tp, self.dtype, self.device)
        self.model.load(cfg.model)
        self.page_size = cfg.pool.page_size
        self.page_elems = 2 * self.page_size * self.model.kv_heads * self.args.head_dim
        self.num_pages = self._size_pool()
        self.pool = torch.zeros(self.args.num_layers, self.num_pages, self.page_elems, dtype=self.dtype,
                                device=self.device)
        self.adapters: dict[str, PackedAdapter] = {}
        self.adapter_pages: dict[str, list[int]] = {}
        self.generators: dict[str, torch.Generator] = {}
        self._seed_rng = random.Random(cfg.seed)

    def _size_pool(self) -> int:
        page_bytes = self.args.num_layers * self.page_elems * torch.finfo(self.dtype).bits // 8
        if self.cfg.pool.num_pages is not None:
            return self.cfg.pool.num_pages
        if self.device == "cuda":
            free, _ = torch.cuda.mem_get_info()
            reserve = 1 << 30   # activations and logits of one step
            return max(2, int((free - reserve) * self.cfg.pool.gpu_memory_fraction) // page_bytes)
        return max(2, self.cfg.pool.cpu_pool_bytes // page_bytes)

    # ---- adapters (this rank's shards) -----------------------------------------------------------
    def add_adapter(self, name: str, weights: LoRAWeights) -> int:
        """Packs this rank's shard; returns its page count (the same on every rank)."""
        packed = pack_adapter(weights, self.page_elems, self.dtype, self.tp.rank, self.tp.world_size,
                              pin=self.device == "cuda")
        self.add_packed(name, packed)
        return packed.layout.num_pages

    def add_packed(self, name: str, packed: PackedAdapter) -> None:
        self.adapters[name] = packed
        self.adapter_pages.pop(name, None)

    def remove_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)
        self.adapter_pages.pop(name, None)

    def _fill(self, name: str, pages: list[int]) -> None:
        data = self.adapters[name].data
        idx = torch.tensor(pages, dtype=torch.long, device=self.device)
        src = data.view(self.args.num_layers, len(pages), self.page_elems).to(self.device, non_blocking=True)
        self.pool.index_copy_(1, idx, src)
        self.adapter_pages[name] = pages

    # ---- one step --------------------------------------------------------------------------------
    def execute(self, out: SchedulerOutput) -> list[int]:
        for rid in out.finished_ids + out.preempted_ids:
            self.generators.pop(rid, None)
        for name, pages in out.adapter_loads:
            self._fill(name, pages)
        if not out.seqs:
            return []
        ctx, input_ids, positions, sample_rows = self._prepare(out)
        with torch.inference_mode():
            hidden = self.model(input_ids, positions, ctx)
            if self.tp.rank != 0 or not sample_rows:
                return []
            logits = self.model.logits(hidden[sample_rows])
            params = [s.params for s in out.seqs if s.sample]
            gens = [self._generator(s.request_id, s.params.seed) if s.params.temperature > 0 else None
                    for s in out.seqs if s.sample]
            return sample(logits, params, gens)

    def _generator(self, rid: str, seed: int | None) -> torch.Generator:
        g = self.generators.get(rid)
        if g is None:
            g = torch.Generator(self.device)
            g.manual_seed(seed if seed is not None else self._seed_rng.getrandbits(63))
            self.generators[rid] = g
        return g

    def _prepare(self, out: SchedulerOutput):
        ps = self.page_size
        ids, pos, slots, qptr, lens, sample_rows = [], [], [], [0], [], []
        max_pages = max(len(s.kv_pages) for s in out.seqs)
        table = []
        for s in out.seqs:
            n = len(s.token_ids)
            ids += s.token_ids
            p = range(s.start_pos, s.start_pos + n)
            pos += p
            slots += [s.kv_pages[i // ps] * ps + i % ps for i in p]
            qptr.append(qptr[-1] + n)
            lens.append(s.start_pos + n)
            table.append(s.kv_pages + [0] * (max_pages - len(s.kv_pages)))
            if s.sample:
                sample_rows.append(qptr[-1] - 1)
        dev = self.device
        i32 = dict(dtype=torch.int32, device=dev)
        q_indptr = torch.tensor(qptr, **i32)
        attn = AttentionMeta(q_indptr=q_indptr, seq_lens=torch.tensor(lens, **i32),
                             kv_page_table=torch.tensor(table, **i32),
                             slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
                             max_q_len=max(len(s.token_ids) for s in out.seqs))
        ctx = ForwardContext(attn=attn, lora=self._lora_meta(out, q_indptr), pool=self.pool, page_size=ps,
                             backend=self.backend, tp=self.tp)
        return (ctx, torch.tensor(ids, dtype=torch.long, device=dev),
                torch.tensor(pos, dtype=torch.long, device=dev), sample_rows)

    def _lora_meta(self, out: SchedulerOutput, seg_indptr: torch.Tensor) -> LoRAMeta | None:
        slots: dict[str, int] = {}
        seg_slot = []
        for s in out.seqs:
            if s.adapter is None:
                seg_slot.append(-1)
            else:
                seg_slot.append(slots.setdefault(s.adapter, len(slots)))
        if not slots:
            return None
        names = list(slots)
        packed = [self.adapters[n] for n in names]
        max_pages = max(p.layout.num_pages for p in packed)
        i32 = dict(dtype=torch.int32, device=self.device)
        table = [self.adapter_pages[n] + [0] * (max_pages - len(self.adapter_pages[n])) for n in names]
        groups = {}
        max_rank = 1
        for g in LORA_GROUPS:
            rows = [p.layout.group_rows(g) for p in packed]
            a_off, b_off, ra, rb = ([r[k] for r in rows] for k in range(4))
            max_rank = max(max_rank, max(max(r) for r in rb))
            groups[g] = LoRAGroupMeta(a_offsets=torch.tensor(a_off, **i32), b_offsets=torch.tensor(b_off, **i32),
                                      ranks_a=torch.tensor(ra, **i32), ranks_b=torch.tensor(rb, **i32))
        return LoRAMeta(page_table=torch.tensor(table, **i32),
                        scales=torch.tensor([p.scale for p in packed], dtype=torch.float32, device=self.device),
                        seg_indptr=seg_indptr, seg_slot=torch.tensor(seg_slot, **i32),
                        max_seg_len=max(len(s.token_ids) for s in out.seqs), max_rank=max_rank, groups=groups)
