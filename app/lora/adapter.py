"""PEFT LoRA adapters: read and validate a PEFT directory, then pack it for the paged pool.

In:  a directory with `adapter_config.json` + `adapter_model.safetensors` (never pickle).
Out: `LoRAWeights` (float32 A/B per target, all layers) and, per tensor-parallel rank,
     `PackedAdapter`: the adapter's virtual element buffer of every layer ([L, n_pages * page_elems],
     the layout of kernels/lora.py) plus its `AdapterLayout` (offsets and ranks per target). Every A and
     B^T block starts at a multiple of ALIGN = 64 elements.

Budgets (an adapter comes from a user at run time): adapter_config.json of at most 1 MiB; a weights file no
larger than the largest valid adapter of this base model at `max_rank` can be (in float64); at most one A and
one B per target and layer, tensor names of at most 256 characters; at most 4096 rank / alpha patterns of at
most 512 characters each, matched with the `regex` module under a per-match time limit (a pattern such as
`(a|aa)+c` is refused, not run for minutes); and `timeout_s` for the whole read. Reading runs in any thread
(it touches no engine state): the service reads and packs an adapter beside its step loop.

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
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import NoReturn

import regex
import torch
from safetensors import safe_open

from app.lora.layer import LORA_GROUPS

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# a fused model's (Phi-3's) modules: one LoRA over the fused output is the parts' LoRAs with the same A and
# B's rows split (x @ A^T @ B^T = [x @ A^T @ B_q^T, x @ A^T @ B_k^T, ...]), as the pool holds them
FUSED_TARGETS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
COLUMN_PARALLEL = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
# Config keys whose LoRA is not x @ A^T @ B^T * scale on q/k/v/o/gate/up/down (refused when set).
_UNSUPPORTED = (
    ("use_dora", "DoRA (weight-decomposed LoRA)"),
    ("modules_to_save", "modules_to_save (it replaces base weights)"),
    ("lora_bias", "a bias on lora_B"),
    ("use_qalora", "QALoRA"),
    ("alora_invocation_tokens", "activated LoRA (aLoRA)"),
    ("layer_replication", "layer replication"),
    ("target_parameters", "LoRA on parameters (target_parameters)"),
    ("trainable_token_indices", "trainable tokens"),
    ("use_bdlora", "block-diagonal LoRA"),
    ("arrow_config", "Arrow routing"),
    ("kasa_config", "KaSA"),
    ("monteclora_config", "MonteCLoRA"),
)
OTHER_TOWERS = ("vision_tower.", "multi_modal_projector.", "audio_tower.")  # of image-text checkpoints
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
# An adapter's name is an OpenAI `model` id, a log field and a metric label: ASCII letters, digits and
# . _ : - (not first), at most 128 characters, no "..".
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_PATH_CHARS = 4096
MAX_CONFIG_BYTES = 1 << 20
MAX_KEY_CHARS = 256  # a tensor name
MAX_PATTERNS = 4096  # entries of rank_pattern / alpha_pattern, each
MAX_PATTERN_CHARS = 512
PATTERN_MATCH_TIMEOUT_S = 0.1  # one rank / alpha pattern against one module name


class AdapterError(ValueError):
    """An adapter that cannot be served; the message names the file and the reason."""


class AdapterExists(AdapterError):
    """An adapter of that name is registered already."""


def check_adapter_name(name: str) -> str:
    """Returns `name`, or raises AdapterError when it is not a valid adapter name (ADAPTER_NAME)."""
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name) or ".." in name:
        shown = repr(name[:64]) + ("..." if isinstance(name, str) and len(name) > 64 else "")
        raise AdapterError(
            f"invalid adapter name {shown}: use 1 to 128 ASCII letters, digits and '.', '_', ':', '-' "
            "(starting with a letter or digit, no '..')"
        )
    return name


def check_adapter_path(path: str) -> str:
    """Returns `path`, or raises AdapterError for a path no file system would take (NUL, control chars)."""
    if len(path) > MAX_PATH_CHARS:
        raise AdapterError(f"adapter path is longer than {MAX_PATH_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise AdapterError("adapter path contains NUL or control characters")
    return path


def confine_path(path: str | os.PathLike, roots: list[str]) -> Path:
    """The real path of `path` (symlinks and `..` resolved) if it lies under one of `roots`; raises
    AdapterError otherwise (and when no root is configured). Callers read the returned path, not `path`."""
    if not roots:
        raise AdapterError("run-time adapter loading is disabled: no allowed_adapter_roots are configured")
    real = Path(os.path.realpath(check_adapter_path(os.fspath(path))))
    for root in roots:
        r = Path(os.path.realpath(root))
        if real == r or r in real.parents:
            return real
    raise AdapterError(f"adapter path {os.fspath(path)!r} is outside the allowed adapter roots")


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
    return {
        "q_proj": (H, q_out),
        "k_proj": (H, kv_out),
        "v_proj": (H, kv_out),
        "o_proj": (q_out, H),
        "gate_proj": (H, I),
        "up_proj": (H, I),
        "down_proj": (I, H),
    }


def checkpoint_modules(args) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every LoRA target as the base model's checkpoint (and PEFT) names it:
    `module_shapes`, or for a fused model (ModelArgs.fused_proj) qkv_proj, o_proj, gate_up_proj, down_proj."""
    shapes = module_shapes(args)
    if not getattr(args, "fused_proj", False):
        return shapes
    out = {f: (shapes[parts[0]][0], sum(shapes[p][1] for p in parts)) for f, parts in FUSED_TARGETS.items()}
    return {**out, "o_proj": shapes["o_proj"], "down_proj": shapes["down_proj"]}


def max_adapter_bytes(args, max_rank: int) -> int:
    """The largest valid weights file for this base model: every target of every layer at `max_rank`, in
    float64 (PEFT saves float32 or narrower), plus 1 MiB for the safetensors header."""
    elems = sum(max_rank * (fin + fout) for fin, fout in module_shapes(args).values())
    return args.num_layers * elems * 8 + (1 << 20)


def load_peft_adapter(
    name: str,
    path: str | os.PathLike,
    args,
    max_rank: int,
    roots: list[str] | None = None,
    timeout_s: float | None = None,
) -> LoRAWeights:
    """Reads and validates a PEFT LoRA directory against the base model `args` (ModelArgs). With `roots`
    (run-time loads), the directory and every file read from it must resolve (symlinks followed) to a path
    under one of them, and the resolved paths are what is read. Budgets: see the module docstring."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    d = Path(path) if roots is None else confine_path(path, roots)
    cfg_file = d / "adapter_config.json"
    st_file = d / "adapter_model.safetensors"
    if not d.is_dir():
        raise AdapterError(f"adapter {name!r}: {d} is not a directory")
    if not cfg_file.is_file():
        raise AdapterError(f"adapter {name!r}: {cfg_file} is missing")
    if not st_file.is_file():
        pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
        if pickles:
            raise AdapterError(
                f"adapter {name!r}: {d / pickles[0]} is a pickle file; only "
                "adapter_model.safetensors is accepted (pickle files are never loaded)"
            )
        raise AdapterError(f"adapter {name!r}: {st_file} is missing")
    if roots is not None:
        try:
            cfg_file, st_file = confine_path(cfg_file, roots), confine_path(st_file, roots)
        except AdapterError as e:
            raise AdapterError(f"adapter {name!r}: {e} (a symbolic link out of them?)") from None

    def refuse(reason: str, file: Path = cfg_file) -> NoReturn:
        raise AdapterError(f"adapter {name!r}: {file}: {reason}")

    def check_time() -> None:
        if deadline is not None and time.monotonic() > deadline:
            refuse(f"reading the adapter took longer than its time budget of {timeout_s} s", st_file)

    if cfg_file.stat().st_size > MAX_CONFIG_BYTES:
        refuse(f"the file is larger than {MAX_CONFIG_BYTES} bytes")
    limit = max_adapter_bytes(args, max_rank)
    if st_file.stat().st_size > limit:
        refuse(
            f"the file has {st_file.stat().st_size} bytes, more than any adapter of this base model at "
            f"max_lora_rank={max_rank} can have ({limit})",
            st_file,
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise AdapterError(f"adapter {name!r}: {cfg_file} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        refuse("the file must hold a JSON object")

    if cfg.get("peft_type", "LORA") != "LORA":
        refuse(f"peft_type {cfg.get('peft_type')!r} is not LORA")
    for key, what in _UNSUPPORTED:
        if cfg.get(key):
            refuse(f"{key}={cfg[key]!r}: {what} is not supported")
    if cfg.get("bias", "none") != "none":
        refuse(f"bias={cfg['bias']!r} is not supported (only bias='none')")
    if cfg.get("fan_in_fan_out"):
        refuse("fan_in_fan_out is not supported")
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1:
        refuse(f"r={r!r} must be a positive integer")
    alpha = cfg.get("lora_alpha", r)
    rank_pattern: dict[str, int] = cfg.get("rank_pattern") or {}
    alpha_pattern: dict[str, float] = cfg.get("alpha_pattern") or {}
    if not isinstance(rank_pattern, dict) or not isinstance(alpha_pattern, dict):
        refuse("rank_pattern and alpha_pattern must be objects (module pattern -> value)")
    for v in (alpha, *alpha_pattern.values()):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            refuse(f"lora_alpha {v!r} must be a finite number")
    if len(rank_pattern) > MAX_PATTERNS or len(alpha_pattern) > MAX_PATTERNS:
        refuse(f"rank_pattern and alpha_pattern may have at most {MAX_PATTERNS} entries each")
    for p in (*rank_pattern, *alpha_pattern):
        if len(p) > MAX_PATTERN_CHARS:
            refuse(f"pattern {p[:64]!r}... is longer than {MAX_PATTERN_CHARS} characters")
        try:
            regex.compile(p)
        except regex.error as e:
            refuse(f"pattern {p!r} is not a valid regular expression ({e})")
    for v in rank_pattern.values():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            refuse(f"rank_pattern value {v!r} must be a positive integer")
    rslora = bool(cfg.get("use_rslora"))

    def lora_scale(rank: int, a: float) -> float:
        return a / math.sqrt(rank) if rslora else a / rank

    shapes = checkpoint_modules(args)
    found: dict[str, dict[int, dict[str, tuple[str, torch.Tensor]]]] = {}  # module -> layer -> A/B
    try:
        with safe_open(str(st_file), framework="pt") as f:
            # an image-text model's adapter may also adapt its other towers (PEFT matches q_proj there too):
            # text prompts never run them, so their tensors are not read
            towers = OTHER_TOWERS if getattr(args, "multimodal", False) else ()
            keys = [k for k in f.keys() if not any(t in k for t in towers)]  # noqa: SIM118
            if len(keys) > 2 * len(TARGET_MODULES) * args.num_layers:
                refuse(f"{len(keys)} tensors: more than a LoRA A and B for every target of every layer", st_file)
            for key in keys:
                check_time()
                if len(key) > MAX_KEY_CHARS:
                    refuse(f"tensor name {key[:64]!r}... is longer than {MAX_KEY_CHARS} characters", st_file)
                m = _KEY.search(key)
                if m is None:
                    refuse(
                        f"tensor {key!r} is not a LoRA A/B weight of q/k/v/o/gate/up/down "
                        "(embedding, bias, DoRA or modules_to_save tensors are not supported)",
                        st_file,
                    )
                layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
                if module not in shapes:
                    refuse(f"tensor {key!r} targets {module!r}; supported targets: {', '.join(shapes)}", st_file)
                if layer >= args.num_layers:
                    refuse(f"tensor {key!r} is for layer {layer} but the base model has {args.num_layers}", st_file)
                found.setdefault(module, {}).setdefault(layer, {})[ab] = (key, f.get_tensor(key))
    except AdapterError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt file must become a clear refusal
        raise AdapterError(f"adapter {name!r}: {st_file} could not be read: {e}") from None
    if not found:
        refuse("no LoRA weights found", st_file)

    # Every (module, layer) may have its own rank and alpha (rank_pattern / alpha_pattern, matched as
    # PEFT does) and a layer may have no LoRA at all (layers_to_transform, a regex target_modules). The
    # pool keeps one rank per target: a target's A/B are padded with zero rows/columns to its largest
    # rank, absent layers are zero, and a (module, layer) scale other than the adapter's is folded into
    # its B. x @ A^T @ B^T * scale is unchanged by all three.
    scale = lora_scale(r, alpha) or 1.0
    try:
        expected = _expected_layers(cfg, args.num_layers)
    except ValueError as e:
        refuse(str(e))
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in shapes:
        if module not in found:
            continue
        fin, fout = shapes[module]
        missing = sorted(expected - set(found[module]))
        if missing:
            refuse(
                f"{module} is missing for layers {missing[:8]} (the config's target_modules and "
                "layers_to_transform say it covers them)",
                st_file,
            )
        blocks = {}
        for layer, ab in sorted(found[module].items()):
            if set(ab) != {"A", "B"}:
                refuse(f"layer {layer} {module}: lora_{'B' if 'A' in ab else 'A'} is missing", st_file)
            (key, a), (_, b) = ab["A"], ab["B"]
            peft_key = _peft_module_key(key)
            try:
                rk = _pattern_key(rank_pattern, peft_key, deadline)
                ak = _pattern_key(alpha_pattern, peft_key, deadline)
                lr = r if rk is None else rank_pattern[rk]
                la = alpha if ak is None else alpha_pattern[ak]
            except TimeoutError as e:
                refuse(str(e))
            check_time()
            if tuple(a.shape) != (lr, fin) or tuple(b.shape) != (fout, lr):
                refuse(
                    f"layer {layer} {module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit "
                    f"the base model and config (expected ({lr}, {fin}) / ({fout}, {lr}))",
                    st_file,
                )
            blocks[layer] = (a, b, lora_scale(lr, la) / scale)
        mr = max(a.shape[0] for a, _, _ in blocks.values())
        A = torch.zeros(args.num_layers, mr, fin)
        B = torch.zeros(args.num_layers, fout, mr)
        for layer, (a, b, k) in blocks.items():
            A[layer, : a.shape[0]] = a
            B[layer, :, : a.shape[0]] = b
            if k != 1.0:
                B[layer, :, : a.shape[0]] *= k
        if not (_all_finite(A) and _all_finite(B)):  # one pass per target; then find the layer
            layer = next(i for i, (a, b, _) in sorted(blocks.items()) if not (_all_finite(a) and _all_finite(b)))
            refuse(f"layer {layer} {module}: weights contain NaN or Inf", st_file)
        if module in FUSED_TARGETS:
            parts = FUSED_TARGETS[module]
            rows = B.split([module_shapes(args)[p][1] for p in parts], dim=1)
            targets.update({p: (A, b.contiguous()) for p, b in zip(parts, rows)})
        else:
            targets[module] = (A, B)
    rank = max(A.shape[1] for A, _ in targets.values())
    if rank > max_rank:
        refuse(f"rank {rank} is above the configured maximum max_lora_rank={max_rank}")
    return LoRAWeights(name=name, path=str(d), rank=rank, alpha=float(alpha), scale=scale, targets=targets)


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in `t`. A NaN or Inf makes the sum non-finite, so a finite sum (one reduction, no
    boolean copy) proves it; a non-finite sum (or a finite overflow) is settled element by element."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _peft_module_key(tensor_key: str) -> str:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> the module's name in the base
    model ('model.layers.0.self_attn.q_proj'), which PEFT matches rank_pattern / alpha_pattern against."""
    key = tensor_key.rsplit(".lora_", 1)[0]
    return key.removeprefix("base_model.model.")


def _expected_layers(cfg: dict, num_layers: int) -> set[int]:
    """Layers every target in the file must cover: layers_to_transform when set; all layers when
    target_modules is a list of names; none to check when it is a regex (it may pick any layers)."""
    lt = cfg.get("layers_to_transform")
    if lt is not None:
        layers = {lt} if isinstance(lt, int) else set(lt)
        if not all(isinstance(i, int) and 0 <= i < num_layers for i in layers):
            raise ValueError(
                f"layers_to_transform {lt!r} names layers the base model ({num_layers} layers) does not have"
            )
        return layers
    return set(range(num_layers)) if isinstance(cfg.get("target_modules"), list) else set()


def _pattern_key(patterns: dict, module_key: str, deadline: float | None = None) -> str | None:
    """The first pattern naming this module, as PEFT matches it: the pattern is a regex that must match
    a dotted suffix of the module's name. Matched by the `regex` module, each match within
    PATTERN_MATCH_TIMEOUT_S (and the deadline): TimeoutError names a pattern that takes longer."""
    for p in patterns:
        left = (
            PATTERN_MATCH_TIMEOUT_S if deadline is None else min(PATTERN_MATCH_TIMEOUT_S, deadline - time.monotonic())
        )
        try:
            if regex.match(rf"(.*\.)?({p})$", module_key, timeout=max(left, 1e-3)):
                return p
        except TimeoutError:
            raise TimeoutError(
                f"pattern {p!r} takes too long to match the module name {module_key!r} (a regular expression "
                "that backtracks catastrophically?)"
            ) from None
    return None


@dataclass
class TargetLayout:
    rank_a: int  # rows of A on this TP rank
    rank_b: int  # rows of B^T (the full rank, padded to a multiple of the TP size)
    a_off: int
    b_off: int


@dataclass
class AdapterLayout:
    targets: dict[str, TargetLayout] = field(default_factory=dict)
    elems: int = 0  # virtual elements per layer
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

    @cached_property
    def slot_rows(self) -> tuple[dict[str, tuple[list[int], list[int], list[int], list[int]]], int, frozenset[str]]:
        """group_rows of every LoRA group, the largest rank of B^T and the groups the adapter targets,
        computed once (the layout is complete once packed): what each step that holds the adapter copies
        into its LoRA metadata. B^T's rank is the full one on every TP rank, so all ranks agree on them."""
        rows = {g: self.group_rows(g) for g in LORA_GROUPS}
        targeted = frozenset(g for g, r in rows.items() if max(r[3]) > 0)
        return rows, max(max(r[3]) for r in rows.values()), targeted


@dataclass
class PackedAdapter:
    """One TP rank's shard of an adapter, ready to be copied into `layout.num_pages` pool pages."""

    layout: AdapterLayout
    data: torch.Tensor  # [L, num_pages * page_elems], the pool's dtype (pinned on CUDA hosts)
    scale: float
    rank: int


def pinned_copy(packed: PackedAdapter) -> PackedAdapter:
    """The same shard with its data copied into pinned host memory (page fills from it are asynchronous)."""
    pinned = torch.empty(packed.data.shape, dtype=packed.data.dtype, pin_memory=True)
    pinned.copy_(packed.data)
    return replace(packed, data=pinned)


def shard_target(module: str, A: torch.Tensor, B: torch.Tensor, tp_rank: int, tp_size: int):
    """S-LoRA TP partition of one target: returns (A_shard [L, ra, in'], Bt_shard [L, rb, out'])."""
    r = A.shape[1]
    Bt = B.transpose(1, 2)  # [L, r, out]
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
        return A[:, tp_rank * ra : (tp_rank + 1) * ra], Bt[:, :, tp_rank * ob : (tp_rank + 1) * ob]
    fin = A.shape[2]
    if fin % tp_size:
        raise AdapterError(f"{module}: input size {fin} is not divisible by tensor_parallel_size {tp_size}")
    ib = fin // tp_size
    return A[:, :, tp_rank * ib : (tp_rank + 1) * ib], Bt


ALIGN = 64  # every A / B^T block starts at a multiple of 64 virtual elements (kernels may vectorise)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack_adapter(
    w: LoRAWeights, page_elems: int, dtype: torch.dtype, tp_rank: int = 0, tp_size: int = 1, pin: bool = False
) -> PackedAdapter:
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
        pieces += [(a_off, a), (b_off, bt)]
    layout.elems = off
    layout.num_pages = max(1, -(-off // page_elems))
    L = pieces[0][1].shape[0]
    data = torch.empty(L, layout.num_pages * page_elems, dtype=dtype, pin_memory=pin)
    end = 0
    for start, t in pieces:  # strided copies with the dtype conversion: no intermediate copy of a transposed B
        data[:, end:start].zero_()
        n = t[0].numel()
        data[:, start : start + n].view(t.shape).copy_(t)
        end = start + n
    data[:, end:].zero_()
    return PackedAdapter(layout=layout, data=data, scale=w.scale, rank=w.rank)
