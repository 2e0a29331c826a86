"""What one forward pass needs besides token ids: attention and LoRA batch metadata, the pool, the
kernel backend and the tensor-parallel state. Built by `app/runner.py` once per step."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from kernels import KernelBackend


@dataclass
class ParallelState:
    """Tensor-parallel rank of this process. `group` is None when world_size == 1."""

    rank: int = 0
    world_size: int = 1
    group: object | None = None

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(t, group=self.group)
        return t

    def shard(self, n: int, what: str) -> int:
        if n % self.world_size:
            raise ValueError(f"{what} = {n} is not divisible by tensor_parallel_size = {self.world_size}")
        return n // self.world_size


@dataclass
class AttentionMeta:
    q_indptr: torch.Tensor  # [S+1] int32: query tokens of sequence s are q_indptr[s]:q_indptr[s+1]
    seq_lens: torch.Tensor  # [S]   int32: cached tokens incl. this step's, per sequence
    kv_page_table: torch.Tensor  # [S, max_pages] int32: KV page ids per sequence
    slot_mapping: torch.Tensor  # [T]   int64: page * page_size + row where token t's K/V go
    max_q_len: int  # host copy of max(q_indptr diff): picks decode vs prefill kernels
    num_decode: int = 0  # leading sequences with one query token each (decode kernel in a mixed step)


@dataclass
class LoRAGroupMeta:
    a_offsets: torch.Tensor  # [S_a, G] int32: virtual element offset of A_g in the adapter's buffer
    b_offsets: torch.Tensor  # [S_a, G] int32: offset of B_g^T
    ranks_a: torch.Tensor  # [S_a, G] int32: rows of A_g on this rank (0 = target absent)
    ranks_b: torch.Tensor  # [S_a, G] int32: rows of B_g^T (the full, TP-padded rank)


@dataclass
class LoRAMeta:
    # groups: the LoRA groups (app/lora/layer.py) some adapter of the step targets (a CUDA graph: all)
    page_table: torch.Tensor  # [S_a, max_pages] int32: pool pages of each adapter slot
    scales: torch.Tensor  # [S_a] float32: alpha / r (or alpha / sqrt(r) for rsLoRA)
    seg_indptr: torch.Tensor  # [S+1] int32: token segments (one per sequence)
    seg_slot: torch.Tensor  # [S]   int32: adapter slot of each segment, -1 = base model
    max_seg_len: int
    max_rank: int  # columns of the shrink output buffer
    plan: object | None = None  # the step's tokens grouped by adapter into tiles (backend.lora_plan)
    groups: dict[str, LoRAGroupMeta] = field(default_factory=dict)


@dataclass
class ForwardContext:
    attn: AttentionMeta
    lora: LoRAMeta | None
    pool: torch.Tensor  # [num_layers, num_pages, page_elems]
    page_size: int
    backend: KernelBackend
    tp: ParallelState
    # a CUDA stream for the LoRA shrinks beside the base matmuls (the decode graphs with
    # LoRAConfig.overlap_shrink); None: one stream
    lora_stream: torch.cuda.Stream | None = None


def padded_table(rows: list[list[int]], width: int | None = None) -> np.ndarray:
    """int32 [len(rows), width] with each row's ids first, zeros after (page tables), built without a Python
    loop over the ids (a decode step's tables hold thousands)."""
    lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = int(lens.max(initial=0)) if width is None else width
    out = np.zeros((len(rows), width), dtype=np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lens.sum()))
    out[np.arange(width)[None, :] < lens[:, None]] = flat
    return out
