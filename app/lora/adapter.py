"""PEFT LoRA adapters: read and validate a PEFT directory, then pack it for the paged pool.

In:  a directory with `adapter_config.json` + `adapter_model.safetensors` (never pickle).
Out: `LoRAWeights` (float32 A/B per target, all layers) and, per tensor-parallel rank,
     `PackedAdapter`: the adapter's virtual element buffer of every layer ([L, n_pages * page_elems],
     the layout of kernels/lora.py) plus its `AdapterLayout` (offsets and ranks per target). Every A and
     B^T block starts at a multiple of ALIGN = 64 elements.

Tensor parallelism (S-LoRA §6): column-parallel targets (q/k/v/gate/up) split A's rows (the rank,
padded to a multiple of the TP size with zero rows) and B's output rows; row-parallel targets (o/down)
split A's input columns and keep the whole B (each rank's partial x@A goes through all of B into the
base partial sum; see app/lora/layer.py).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COLUMN_PARALLEL = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
# Targets sharing one input, computed by one shrink/expand launch (and one fused base matmul).
LORA_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(ValueError):
    """An adapter that cannot be served; the message names the file and the reason."""


@dataclass
class LoRAWeights:
    name: str
    path: str
    rank: int
    alpha: float
    scale: float
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A [L, r, in], B [L, out, r])

    def nbytes(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.targets.values()) * 4


def module_shapes(args) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every LoRA target of the base model."""
    q_out = args.num_heads * args.head_dim
    kv_out = args.num_kv_heads * args.head_dim
    H, I = args.hidden_size, args.intermediate_size
    return {"q_proj": (H, q_out), "k_proj": (H, kv_out), "v_proj": (H, kv_out), "o_proj": (q_out, H),
            "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}


def load_peft_adapter(name: str, path: str | os.PathLike, args, max_rank: int) -> LoRAWeights:
    """Reads and validates a PEFT LoRA directory against the base model `args` (ModelArgs)."""
    d = Path(path)
    cfg_file = d / "adapter_config.json"
    st_file = d / "adapter_model.safetensors"
    if not d.is_dir():
        raise AdapterError(f"adapter {name!r}: {d} is not a directory")
    if not cfg_file.is_file():
        raise AdapterError(f"adapter {name!r}: {cfg_file} is missing")
    if not st_file.is_file():
        pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
        if pickles:
            raise AdapterError(f"adapter {name!r}: {d / pickles[0]} is a pickle file; only "
                               "adapter_model.safetensors is accepted (pickle files are never loaded)")
        raise AdapterError(f"adapter {name!r}: {st_file} is missing")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"adapter {name!r}: {cfg_file} is not valid JSON: {e}") from None

    def refuse(reason: str, file: Path = cfg_file):
        raise AdapterError(f"adapter {name!r}: {file}: {reason}")

    if cfg.get("peft_type", "LORA") != "LORA":
        refuse(f"peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("use_dora"):
        refuse("DoRA adapters (use_dora) are not supported")
    if cfg.get("modules_to_save"):
        refuse(f"modules_to_save {cfg['modules_to_save']} is not supported (it replaces base weights)")
    if cfg.get("bias", "none") != "none":
        refuse(f"bias={cfg['bias']!r} is not supported (only bias='none')")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            refuse(f"{key} (per-module ranks or alphas) is not supported")
    if cfg.get("layers_to_transform") is not None:
        refuse("layers_to_transform is not supported: LoRA must cover every layer")
    if cfg.get("fan_in_fan_out"):
        refuse("fan_in_fan_out is not supported")
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1:
        refuse(f"r={r!r} must be a positive integer")
    if r > max_rank:
        refuse(f"rank {r} is above the configured maximum max_lora_rank={max_rank}")
    alpha = float(cfg.get("lora_alpha", r))
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r

    shapes = module_shapes(args)
    found: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    try:
        with safe_open(str(st_file), framework="pt") as f:
            for key in f.keys():
                m = _KEY.search(key)
                if m is None:
                    refuse(f"tensor {key!r} is not a LoRA A/B weight of q/k/v/o/gate/up/down "
                           "(embedding, bias, DoRA or modules_to_save tensors are not supported)", st_file)
                layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
                if module not in shapes:
                    refuse(f"tensor {key!r} targets {module!r}; supported targets: {', '.join(TARGET_MODULES)}",
                           st_file)
                if layer >= args.num_layers:
                    refuse(f"tensor {key!r} is for layer {layer} but the base model has {args.num_layers}",
                           st_file)
                found.setdefault(module, {}).setdefault(ab, {})[layer] = f.get_tensor(key)
    except AdapterError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file must become a clear refusal
        raise AdapterError(f"adapter {name!r}: {st_file} could not be read: {e}") from None
    if not found:
        refuse("no LoRA weights found", st_file)

    targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in TARGET_MODULES:
        if module not in found:
            continue
        fin, fout = shapes[module]
        per = found[module]
        for ab in "AB":
            missing = sorted(set(range(args.num_layers)) - set(per.get(ab, {})))
            if missing:
                refuse(f"{module} lora_{ab} is missing for layers {missing[:8]}: LoRA must cover every layer",
                       st_file)
        for layer in range(args.num_layers):
            a, b = per["A"][layer], per["B"][layer]
            if tuple(a.shape) != (r, fin) or tuple(b.shape) != (fout, r):
                refuse(f"layer {layer} {module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit "
                       f"the base model (expected ({r}, {fin}) / ({fout}, {r}))", st_file)
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                refuse(f"layer {layer} {module}: weights contain NaN or Inf", st_file)
        A = torch.stack([per["A"][i].float() for i in range(args.num_layers)])
        B = torch.stack([per["B"][i].float() for i in range(args.num_layers)])
        targets[module] = (A, B)
    return LoRAWeights(name=name, path=str(d), rank=r, alpha=alpha, scale=scale, targets=targets)


@dataclass
class TargetLayout:
    rank_a: int   # rows of A on this TP rank
    rank_b: int   # rows of B^T (the full rank, padded to a multiple of the TP size)
    a_off: int
    b_off: int


@dataclass
class AdapterLayout:
    targets: dict[str, TargetLayout] = field(default_factory=dict)
    elems: int = 0           # virtual elements per layer
    num_pages: int = 0

    def group_rows(self, group: str) -> tuple[list[int], list[int], list[int], list[int]]:
        """(a_offsets, b_offsets, ranks_a, ranks_b) of a LoRA group, 0 rank for absent targets."""
        rows: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
        for module in LORA_GROUPS[group]:
            t = self.targets.get(module)
            vals = (t.a_off, t.b_off, t.rank_a, t.rank_b) if t else (0, 0, 0, 0)
            for row, v in zip(rows, vals):
                row.append(v)
        return rows


@dataclass
class PackedAdapter:
    """One TP rank's shard of an adapter, ready to be copied into `layout.num_pages` pool pages."""
    layout: AdapterLayout
    data: torch.Tensor       # [L, num_pages * page_elems], the pool's dtype (pinned on CUDA hosts)
    scale: float
    rank: int


def shard_target(module: str, A: torch.Tensor, B: torch.Tensor, tp_rank: int, tp_size: int):
    """S-LoRA TP partition of one target: returns (A_shard [L, ra, in'], Bt_shard [L, rb, out'])."""
    r = A.shape[1]
    Bt = B.transpose(1, 2)                      # [L, r, out]
    if tp_size == 1:
        return A, Bt
    out = Bt.shape[2]
    if out % tp_size:
        raise AdapterError(f"{module}: output size {out} is not divisible by tensor_parallel_size {tp_size}")
    ob = out // tp_size
    if module in COLUMN_PARALLEL:
        r_pad = -(-r // tp_size) * tp_size
        if r_pad != r:
            A = torch.cat([A, A.new_zeros(A.shape[0], r_pad - r, A.shape[2])], 1)
            Bt = torch.cat([Bt, Bt.new_zeros(Bt.shape[0], r_pad - r, Bt.shape[2])], 1)
        ra = r_pad // tp_size
        return A[:, tp_rank * ra:(tp_rank + 1) * ra], Bt[:, :, tp_rank * ob:(tp_rank + 1) * ob]
    fin = A.shape[2]
    if fin % tp_size:
        raise AdapterError(f"{module}: input size {fin} is not divisible by tensor_parallel_size {tp_size}")
    ib = fin // tp_size
    return A[:, :, tp_rank * ib:(tp_rank + 1) * ib], Bt


ALIGN = 64   # every A / B^T block starts at a multiple of 64 virtual elements (kernels may vectorise)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack_adapter(w: LoRAWeights, page_elems: int, dtype: torch.dtype, tp_rank: int = 0,
                 tp_size: int = 1, pin: bool = False) -> PackedAdapter:
    """Lays this TP rank's shard of every target into one virtual buffer per layer (kernels/lora.py)."""
    layout = AdapterLayout()
    pieces = []
    off = 0
    for module in TARGET_MODULES:
        if module not in w.targets:
            continue
        a, bt = shard_target(module, *w.targets[module], tp_rank, tp_size)
        a_off = off
        b_off = _align(a_off + a[0].numel())
        off = _align(b_off + bt[0].numel())
        layout.targets[module] = TargetLayout(rank_a=a.shape[1], rank_b=bt.shape[1], a_off=a_off, b_off=b_off)
        pieces += [(a_off, a.reshape(a.shape[0], -1)), (b_off, bt.reshape(bt.shape[0], -1))]
    layout.elems = off
    layout.num_pages = max(1, -(-off // page_elems))
    L = pieces[0][1].shape[0]
    data = torch.zeros(L, layout.num_pages * page_elems, dtype=dtype, pin_memory=pin)
    for start, t in pieces:
        data[:, start:start + t.shape[1]] = t.to(dtype)
    return PackedAdapter(layout=layout, data=data, scale=w.scale, rank=w.rank)
