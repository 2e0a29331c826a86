"""Llama-family decoder (Llama 2/3, Mistral, Qwen2/3, Phi-3, Gemma 2/3, Granite 3, SmolLM3, OLMo 2/3) over a paged pool.

In:  a Hugging Face model directory (config.json, safetensors single or sharded).
     forward(input_ids [T], positions [T], ctx: ForwardContext) with all sequences' tokens flattened.
Out: hidden states [T, H]; `logits(hidden)` -> [n, vocab] float32.

Tensor parallelism as in Megatron: q/k/v and gate/up column-parallel (fused into one matmul each),
o and down row-parallel with one all-reduce after each; embeddings and lm_head replicated.
Every linear layer calls the LoRA step (app/lora/layer.py) on its output before any reduction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from app.lora.layer import lora_finish, lora_start
from app.model.context import ForwardContext, ParallelState

SUPPORTED_ARCHS = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "granite",
    "smollm3",
    "olmo2",
    "olmo3",
}
# image-text models served for text: their language model's config and weights (other towers are not read)
MULTIMODAL = {"gemma3": "gemma3_text"}
GEMMA = ("gemma2", "gemma3_text")


@dataclass
class ModelArgs:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    torch_dtype: str | None
    eos_token_id: list[int]
    qk_norm: bool = False  # Qwen3: an RMS norm over each q and k head (weights [head_dim]) before RoPE
    rotary_dim: int = 0  # the leading dims of each head that RoPE rotates (partial_rotary_factor); 0: all
    fused_proj: bool = False  # Phi-3: checkpoint and adapters hold qkv_proj and gate_up_proj (fused)
    rope_max_len: int | None = None  # LongRoPE: served up to original_max_position_embeddings (short factors)
    # Gemma 2 / 3: norms x (1 + w) around attention and MLP (sandwich), embeddings x sqrt(hidden), gated GELU,
    # per-layer sliding windows (0: full attention), Gemma 3's local RoPE base on those layers, query scale
    # query_pre_attn_scalar^-0.5, Gemma 2's soft-capped attention scores and logits (0: none)
    gemma: bool = False
    layer_windows: tuple[int, ...] = ()
    local_rope_theta: float | None = None
    attn_scale: float | None = None
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    multimodal: bool = False  # an image-text checkpoint (its language model's weights under language_model.)
    # Granite 3: embeddings x embedding_multiplier, attention and MLP outputs x residual_multiplier before the
    # residual add, query scale attention_multiplier, logits / logits_scaling (1: none)
    embedding_multiplier: float = 1.0
    rope_layers: tuple[bool, ...] = ()  # SmolLM3: False for a layer without positions (NoPE); (): every layer
    # OLMo 2: no norm before attention or the MLP, one after each (before the residual add), and q / k
    # normalised over their whole projection (all heads: a sum over the TP ranks)
    olmo: bool = False
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelArgs:
        """The model's config.json; the end-of-sequence ids also from generation_config.json when there is one
        (chat models end a turn with a token of their own there: Phi-3's <|end|>, Gemma 2's <end_of_turn>),
        as vLLM stops at them."""
        f = Path(path) / "config.json"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: model must be a Hugging Face model directory")
        args = cls.from_hf(json.loads(f.read_text()))
        gen = Path(path) / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            more = [eos] if isinstance(eos, int) else [t for t in eos or [] if isinstance(t, int)]
            args = replace(args, eos_token_id=list(dict.fromkeys([*args.eos_token_id, *more])))
        return args

    @classmethod
    def from_hf(cls, c: dict) -> ModelArgs:
        mt = c.get("model_type", "llama")
        if mt not in SUPPORTED_ARCHS:
            raise ValueError(f"model_type {mt!r} is not supported (supported: {sorted(SUPPORTED_ARCHS)})")
        if mt in MULTIMODAL:  # the text model inside (Gemma 3 4B and larger): served for text prompts
            top = {k: c[k] for k in ("eos_token_id", "tie_word_embeddings", "torch_dtype", "dtype") if k in c}
            return replace(cls.from_hf({"model_type": MULTIMODAL[mt], **top, **c["text_config"]}), multimodal=True)
        if c.get("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention (an embedding model's) is not supported")
        gemma = mt in GEMMA
        act = (c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh") if gemma else c.get(
            "hidden_act", "silu")  # fmt: skip
        if act != ("gelu_pytorch_tanh" if gemma else "silu"):
            raise ValueError(f"hidden_act {act!r} is not supported (silu; gelu_pytorch_tanh for Gemma)")
        heads = c["num_attention_heads"]
        rope_cfg = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
        local_theta = c.get("rope_local_base_freq") if mt == "gemma3_text" else None
        per_type = "full_attention" in rope_cfg or "sliding_attention" in rope_cfg
        if per_type:  # per layer type (Gemma 3, OLMo 3): the sliding layers' own base, unscaled
            local = dict(rope_cfg.get("sliding_attention") or {})
            if local.get("rope_type", "default") != "default":
                raise ValueError(f"rope scaling {local.get('rope_type')!r} of the sliding layers is not supported")
            local_theta = local.get("rope_theta", local_theta)
            rope_cfg = dict(rope_cfg.get("full_attention") or {})
        theta = rope_cfg.pop("rope_theta", c.get("rope_theta", 10000.0))
        partial = float(rope_cfg.pop("partial_rotary_factor", None) or c.get("partial_rotary_factor") or 1.0)
        kind = rope_cfg.get("rope_type", rope_cfg.get("type", "default"))
        rope = None if kind == "default" else rope_cfg
        rope_max_len = None
        if kind in ("longrope", "yarn"):
            original = rope_cfg.get("original_max_position_embeddings") or c.get("original_max_position_embeddings")
            if not original:
                raise ValueError(f"{kind} scaling needs original_max_position_embeddings")
            rope = {**rope_cfg, "original_max_position_embeddings": original,
                    "max_position_embeddings": c.get("max_position_embeddings", 4096)}  # fmt: skip
            if kind == "longrope":  # its short factors hold up to the pretraining length (long ones: not served)
                rope_max_len = int(original)
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        windows = _layer_windows(c, mt)
        eos = c.get("eos_token_id")
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        attn_bias = bool(c.get("attention_bias", False))
        return cls(
            model_type=mt,
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_layers=c["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=c.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=rope,
            max_position_embeddings=c.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            qkv_bias=attn_bias or mt == "qwen2",
            o_bias=attn_bias,
            mlp_bias=bool(c.get("mlp_bias", False)),
            torch_dtype=c.get("torch_dtype") or c.get("dtype"),
            eos_token_id=eos,
            gemma=gemma,
            layer_windows=windows,
            local_rope_theta=float(local_theta or 10000.0) if per_type or mt == "gemma3_text" else None,
            attn_scale=(
                float(c.get("query_pre_attn_scalar") or head_dim) ** -0.5
                if gemma
                else float(c["attention_multiplier"])
                if mt == "granite"
                else None
            ),  # fmt: skip
            embedding_multiplier=float(c.get("embedding_multiplier", 1.0)) if mt == "granite" else 1.0,
            residual_multiplier=float(c.get("residual_multiplier", 1.0)) if mt == "granite" else 1.0,
            logits_scaling=float(c.get("logits_scaling", 1.0)) if mt == "granite" else 1.0,
            rope_layers=_rope_layers(c) if mt == "smollm3" else (),
            olmo=mt in ("olmo2", "olmo3"),
            attn_softcap=float(c.get("attn_logit_softcapping") or 0.0) if gemma else 0.0,
            final_softcap=float(c.get("final_logit_softcapping") or 0.0) if gemma else 0.0,
            qk_norm=mt in ("qwen3", "gemma3_text"),
            rotary_dim=int(head_dim * partial) if partial != 1.0 else 0,
            fused_proj=mt == "phi3",
            rope_max_len=rope_max_len,
        )

    @property
    def max_len(self) -> int:
        """Longest context served exactly: max_position_embeddings, or a LongRoPE model's pretraining length
        (its short factors). Sliding windows are the attention kernels' (`layer_windows`), at any length."""
        return min(x for x in (self.max_position_embeddings, self.rope_max_len) if x)

    @property
    def rope_dim(self) -> int:
        """Dims of each head that RoPE rotates."""
        return self.rotary_dim or self.head_dim

    def max_model_len(self, requested: int | None = None) -> int:
        """The context limit (prompt + output tokens) served for this model: `requested`
        (`scheduler.max_model_len`; None = no request) capped at `max_len`. The engine, the CUDA graphs
        and the ingress all take it from here."""
        return min(requested or self.max_len, self.max_len)


def _layer_windows(c: dict, mt: str) -> tuple[int, ...]:
    """Each layer's sliding window (0: full attention), as transformers reads the config: `layer_types`
    with `sliding_window`; without layer_types, Gemma 2 alternates (sliding first), Gemma 3 has one full
    layer in `sliding_window_pattern` (6), Mistral and Phi-3 slide on every layer when `sliding_window` is
    set, Qwen2 / Qwen3 from layer `max_window_layers` on when `use_sliding_window` is; Llama never slides."""
    n, w = c["num_hidden_layers"], int(c.get("sliding_window") or 0)
    if mt == "llama" or not w or (mt in ("qwen2", "qwen3", "smollm3") and not c.get("use_sliding_window")):
        return (0,) * n
    types = c.get("layer_types")
    if not types:
        if mt == "gemma2":
            types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
        elif mt == "gemma3_text":
            k = c.get("sliding_window_pattern", 6)
            types = ["sliding_attention" if (i + 1) % k else "full_attention" for i in range(n)]
        elif mt == "olmo3":
            types = ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n)]
        elif mt == "smollm3":  # the NoPE layers slide
            types = ["full_attention" if r else "sliding_attention" for r in _rope_layers(c)]
        elif mt in ("qwen2", "qwen3"):
            m = c.get("max_window_layers", 28)
            types = ["sliding_attention" if i >= m else "full_attention" for i in range(n)]
        else:
            types = ["sliding_attention"] * n
    if len(types) != n:
        raise ValueError(f"layer_types has {len(types)} entries for {n} layers")
    return tuple(w if t == "sliding_attention" else 0 for t in types)


def _rope_layers(c: dict) -> tuple[bool, ...]:
    """SmolLM3's layers with RoPE: `no_rope_layers` (1: RoPE), by default all but every
    `no_rope_layer_interval`-th (4)."""
    n = c["num_hidden_layers"]
    flags = c.get("no_rope_layers") or [int((i + 1) % c.get("no_rope_layer_interval", 4) != 0) for i in range(n)]
    if len(flags) != n:
        raise ValueError(f"no_rope_layers has {len(flags)} entries for {n} layers")
    return tuple(bool(f) for f in flags)


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies of the rotated dims, with linear, Llama-3, LongRoPE (short factors) or YaRN scaling
    when the config asks for it."""
    d = args.rope_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    rs = args.rope_scaling
    if rs is None:
        return inv.float()
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return (inv / rs["factor"]).float()
    if kind == "longrope":
        short = torch.tensor(rs["short_factor"], dtype=torch.float64)
        if short.shape != inv.shape:
            raise ValueError(f"longrope short_factor has {short.numel()} values, the rotated dims need {inv.numel()}")
        return (inv / short).float()
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return torch.where(medium, smoothed, scaled).float()
    if kind == "yarn":
        return _yarn_inv_freq(args.rope_theta, d, rs)
    raise ValueError(f"rope scaling {kind!r} is not supported (default, linear, llama3, longrope, yarn)")


def _yarn_factor(rs: dict) -> float:
    return rs.get("factor") or rs["max_position_embeddings"] / rs["original_max_position_embeddings"]


def _yarn_inv_freq(base: float, d: int, rs: dict) -> torch.Tensor:
    """YaRN (Qwen's and DeepSeek's long contexts): per frequency, a blend of the extrapolated and the
    interpolated (/ factor) inverse frequency by a linear ramp between the correction dims of beta_fast and
    beta_slow rotations over the pretraining length; in float32, as transformers computes it."""
    factor, original = _yarn_factor(rs), rs["original_max_position_embeddings"]
    fast, slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def dim_of(rotations: float) -> float:
        return (d * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    lo, hi = dim_of(fast), dim_of(slow)
    if rs.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    if lo == hi:
        hi += 0.001
    pos = base ** (torch.arange(0, d, 2).to(dtype=torch.float) / d)
    extra = 1 - torch.clamp((torch.arange(d // 2, dtype=torch.float32) - lo) / (hi - lo), 0, 1)
    return (1.0 / (factor * pos)) * (1 - extra) + (1.0 / pos) * extra


def rope_attention_factor(args: ModelArgs) -> float:
    """The factor on cos and sin (LongRoPE's and YaRN's attention factor; 1 otherwise), as transformers
    computes it."""
    rs = args.rope_scaling
    kind = None if rs is None else rs.get("rope_type", rs.get("type"))
    if rs is None or kind not in ("longrope", "yarn"):
        return 1.0
    if rs.get("attention_factor") is not None:
        return float(rs["attention_factor"])
    if kind == "yarn":

        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        f = _yarn_factor(rs)
        m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")
        return float(mscale(f, m) / mscale(f, m_all)) if m and m_all else mscale(f)
    original = rs["original_max_position_embeddings"]
    factor = rs.get("factor") or rs["max_position_embeddings"] / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


class LlamaForCausalLM(torch.nn.Module):
    def __init__(self, args: ModelArgs, tp: ParallelState, dtype: torch.dtype, device: str):
        super().__init__()
        self.args, self.tp = args, tp
        self.dtype, self.device = dtype, device
        self.heads = tp.shard(args.num_heads, "num_attention_heads")
        self.kv_heads = tp.shard(args.num_kv_heads, "num_key_value_heads")
        self.inter = tp.shard(args.intermediate_size, "intermediate_size")
        self.q_size = self.heads * args.head_dim
        self.kv_size = self.kv_heads * args.head_dim
        self.inv_freq = rope_inv_freq(args).to(device)
        self.rope_scale = rope_attention_factor(args)
        local = args.local_rope_theta
        self.local_inv_freq = (
            None if local is None else rope_inv_freq(replace(args, rope_theta=local, rope_scaling=None))
        )
        self.windows = list(args.layer_windows) or [0] * args.num_layers
        # Gemma's embedding factor, made here: no tensor is made while a CUDA graph captures the forward
        self.embed_scale = torch.tensor(args.hidden_size**0.5, dtype=dtype, device=device)
        self.w: dict[str, torch.Tensor] = {}

    # ---- weights -------------------------------------------------------------------------------
    def load(self, path: str | Path) -> None:
        """Reads this rank's shard of every weight from safetensors (single file or sharded)."""
        path = Path(path)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (path / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"no model.safetensors or model.safetensors.index.json in {path} (pickle checkpoints are not loaded)"
            )
        handles = {}
        key_file = {}
        for fn in files:
            h = safe_open(str(path / fn), framework="pt")
            handles[fn] = h
            for k in h.keys():  # noqa: SIM118 - a safetensors handle is not iterable
                key_file[k] = fn

        def get(name: str) -> torch.Tensor:
            if name not in key_file:
                raise KeyError(f"weight {name} not found in {path}")
            return handles[key_file[name]].get_tensor(name)

        def shard_rows(t: torch.Tensor) -> torch.Tensor:  # this rank's part of the output rows
            n = t.shape[0] // self.tp.world_size
            return t[self.tp.rank * n : (self.tp.rank + 1) * n]

        def col(name: str) -> torch.Tensor:  # split the output rows
            return shard_rows(get(name))

        def row(name: str) -> torch.Tensor:  # split the input columns
            t = get(name)
            n = t.shape[1] // self.tp.world_size
            return t[:, self.tp.rank * n : (self.tp.rank + 1) * n]

        a = self.args

        def norm(name: str) -> torch.Tensor:  # Gemma's norms scale by 1 + w (in float32 there)
            t = get(name)
            return t.float() + 1.0 if a.gemma else t

        # the language model's weights: model.* (a text checkpoint) or, in an image-text one, under language_model
        pre = next((x for x in ("model.", "language_model.model.", "model.language_model.")
                    if x + "embed_tokens.weight" in key_file), "model.")  # fmt: skip
        w = {"embed": get(pre + "embed_tokens.weight"), "norm": norm(pre + "norm.weight")}
        head = next((x for x in ("lm_head.weight", "language_model.lm_head.weight") if x in key_file), None)
        w["lm_head"] = w["embed"] if a.tie_word_embeddings or head is None else get(head)
        for i in range(a.num_layers):
            p = f"{pre}layers.{i}."
            if a.olmo:  # post-norms only; q / k norms over the whole projection, this rank's part of each
                w[f"{i}.attn_out_norm"] = get(p + "post_attention_layernorm.weight")
                w[f"{i}.mlp_out_norm"] = get(p + "post_feedforward_layernorm.weight")
                w[f"{i}.q_norm_all"] = col(p + "self_attn.q_norm.weight")
                w[f"{i}.k_norm_all"] = col(p + "self_attn.k_norm.weight")
            else:
                w[f"{i}.in_norm"] = norm(p + "input_layernorm.weight")
            if a.olmo:
                pass  # its norms are above
            elif a.gemma:  # sandwich: attention's and the MLP's outputs are normalised before the residual add
                w[f"{i}.attn_out_norm"] = norm(p + "post_attention_layernorm.weight")
                w[f"{i}.post_norm"] = norm(p + "pre_feedforward_layernorm.weight")
                w[f"{i}.mlp_out_norm"] = norm(p + "post_feedforward_layernorm.weight")
            else:
                w[f"{i}.post_norm"] = get(p + "post_attention_layernorm.weight")
            if a.fused_proj:  # [q; k; v] rows in one tensor: each part split over the TP ranks by itself
                qkv_w = get(p + "self_attn.qkv_proj.weight")
                qs, ks = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
                w[f"{i}.qkv"] = torch.cat([shard_rows(t) for t in qkv_w.split([qs, ks, ks])])
            else:
                w[f"{i}.qkv"] = torch.cat([col(p + f"self_attn.{m}_proj.weight") for m in "qkv"])
            if a.qk_norm:  # per head: the same weights on every rank
                w[f"{i}.q_norm"] = norm(p + "self_attn.q_norm.weight")
                w[f"{i}.k_norm"] = norm(p + "self_attn.k_norm.weight")
            if a.qkv_bias:
                w[f"{i}.qkv_b"] = torch.cat([col(p + f"self_attn.{m}_proj.bias") for m in "qkv"])
            w[f"{i}.o"] = row(p + "self_attn.o_proj.weight")
            if a.o_bias:  # added once, after the all-reduce
                w[f"{i}.o_b"] = get(p + "self_attn.o_proj.bias")
            if a.fused_proj:  # [gate; up]
                gate_up = get(p + "mlp.gate_up_proj.weight")
                w[f"{i}.gate_up"] = torch.cat([shard_rows(t) for t in gate_up.chunk(2)])
            else:
                w[f"{i}.gate_up"] = torch.cat([col(p + "mlp.gate_proj.weight"), col(p + "mlp.up_proj.weight")])
            w[f"{i}.down"] = row(p + "mlp.down_proj.weight")
            if a.mlp_bias:
                w[f"{i}.gate_up_b"] = torch.cat([col(p + "mlp.gate_proj.bias"), col(p + "mlp.up_proj.bias")])
                w[f"{i}.down_b"] = get(p + "mlp.down_proj.bias")
        self.w = {k: v.to(device=self.device, dtype=self.dtype).contiguous() for k, v in w.items()}

    def init_dummy(self, seed: int) -> None:
        """Random weights of this rank's shard shapes (normal, std 0.02; norms 1, biases 0), made on the
        device: what `load` would give for a random checkpoint, without reading one (benchmarks)."""
        a, H = self.args, self.args.hidden_size
        g = torch.Generator(device=self.device).manual_seed(seed)

        def rnd(*shape):
            return (torch.randn(*shape, generator=g, device=self.device) * 0.02).to(self.dtype)

        def ones(n):
            return torch.ones(n, dtype=self.dtype, device=self.device)

        w = {"embed": rnd(a.vocab_size, H), "norm": ones(H)}
        w["lm_head"] = w["embed"] if a.tie_word_embeddings else rnd(a.vocab_size, H)
        qkv = self.q_size + 2 * self.kv_size
        for i in range(a.num_layers):
            w[f"{i}.in_norm"], w[f"{i}.post_norm"] = ones(H), ones(H)
            if a.gemma or a.olmo:
                w[f"{i}.attn_out_norm"], w[f"{i}.mlp_out_norm"] = ones(H), ones(H)
            if a.olmo:
                w[f"{i}.q_norm_all"], w[f"{i}.k_norm_all"] = ones(self.q_size), ones(self.kv_size)
            w[f"{i}.qkv"] = rnd(qkv, H)
            if a.qk_norm:
                w[f"{i}.q_norm"], w[f"{i}.k_norm"] = ones(a.head_dim), ones(a.head_dim)
            w[f"{i}.o"] = rnd(H, self.q_size)
            w[f"{i}.gate_up"] = rnd(2 * self.inter, H)
            w[f"{i}.down"] = rnd(H, self.inter)
            if a.qkv_bias:
                w[f"{i}.qkv_b"] = torch.zeros(qkv, dtype=self.dtype, device=self.device)
            if a.o_bias:
                w[f"{i}.o_b"] = torch.zeros(H, dtype=self.dtype, device=self.device)
            if a.mlp_bias:
                w[f"{i}.gate_up_b"] = torch.zeros(2 * self.inter, dtype=self.dtype, device=self.device)
                w[f"{i}.down_b"] = torch.zeros(H, dtype=self.dtype, device=self.device)
        self.w = w

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        a, w, be = self.args, self.w, ctx.backend
        D, eps = a.head_dim, a.rms_norm_eps
        freqs = positions.float()[:, None] * self.inv_freq[None]
        cos, sin = freqs.cos(), freqs.sin()
        if self.rope_scale != 1.0:
            cos, sin = cos * self.rope_scale, sin * self.rope_scale
        rot = {False: (cos, sin)}  # by "is a sliding layer with its own RoPE base" (Gemma 3)
        if self.local_inv_freq is not None:
            lf = positions.float()[:, None] * self.local_inv_freq[None]
            rot[True] = (lf.cos(), lf.sin())
        h = F.embedding(input_ids, w["embed"])  # the residual stream, updated in place by add_rms_norm
        if a.gemma:  # x sqrt(hidden), the factor rounded to the weights' dtype first, as transformers does
            h = h * self.embed_scale
        elif a.embedding_multiplier != 1.0:
            h = h * a.embedding_multiplier
        rm = a.residual_multiplier
        x = h if a.olmo else be.rms_norm(h, w["0.in_norm"], eps)
        attn = ctx.attn
        for i in range(a.num_layers):
            lora = lora_start(ctx, i, "qkv", x)  # the shrink first: it may overlap the base matmul
            qkv = F.linear(x, w[f"{i}.qkv"], w.get(f"{i}.qkv_b"))
            lora_finish(ctx, i, lora, qkv, [self.q_size, self.kv_size, self.kv_size])
            if a.olmo:
                self._whole_qk_norm(i, qkv)
            # q and k in place: Qwen3's head norms (after the LoRA delta, as PEFT's q_proj output), then RoPE
            if not a.rope_layers or a.rope_layers[i]:  # a NoPE layer (SmolLM3) uses q and k as they are
                c, s = rot[self.windows[i] > 0 and self.local_inv_freq is not None]
                be.rope(
                    qkv, c, s, self.heads, self.kv_heads, D, w.get(f"{i}.q_norm"), w.get(f"{i}.k_norm"), eps,
                    rotary_dim=a.rope_dim,
                )  # fmt: skip
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], -1)
            q = q.view(-1, self.heads, D)
            k = k.view(-1, self.kv_heads, D)
            v = v.view(-1, self.kv_heads, D)
            pool = ctx.pool[i]
            be.kv_append(pool, ctx.page_size, k, v, attn.slot_mapping)
            o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            be.paged_attention(
                q, pool, ctx.page_size, self.kv_heads, attn.kv_page_table, attn.seq_lens, attn.q_indptr,
                a.attn_scale or D**-0.5, o, max_q_len=attn.max_q_len, num_decode=attn.num_decode,
                window=self.windows[i], softcap=a.attn_softcap,
            )  # fmt: skip
            y = self._row_parallel(ctx, i, "o", o.view(-1, self.q_size))
            if a.gemma or a.olmo:
                y = be.rms_norm(y, w[f"{i}.attn_out_norm"], eps)
            if a.olmo:  # noqa: SIM108 - the MLP reads the residual stream itself
                x = h.add_(y)
            else:
                x = be.add_rms_norm(h, y if rm == 1.0 else y * rm, w[f"{i}.post_norm"], eps)
            lora = lora_start(ctx, i, "gate_up", x)
            gu = F.linear(x, w[f"{i}.gate_up"], w.get(f"{i}.gate_up_b"))
            lora_finish(ctx, i, lora, gu, [self.inter, self.inter])
            y = self._row_parallel(ctx, i, "down", be.gelu_mul(gu) if a.gemma else be.silu_mul(gu))
            if a.gemma or a.olmo:
                y = be.rms_norm(y, w[f"{i}.mlp_out_norm"], eps)
            if a.olmo:  # the next attention reads the residual stream itself; the last layer's is normalised
                x = h.add_(y) if i + 1 < a.num_layers else be.add_rms_norm(h, y, w["norm"], eps)
            else:
                nxt = w[f"{i + 1}.in_norm"] if i + 1 < a.num_layers else w["norm"]
                x = be.add_rms_norm(h, y if rm == 1.0 else y * rm, nxt, eps)
        return x

    def _whole_qk_norm(self, i: int, qkv: torch.Tensor) -> None:
        """OLMo 2's q and k norms, in place: each over its whole projection (all heads), its sum of squares
        summed over the TP ranks, in float32 as transformers' Olmo2RMSNorm."""
        a, w = self.args, self.w
        q, k = qkv[:, : self.q_size].float(), qkv[:, self.q_size : self.q_size + self.kv_size].float()
        ss = torch.stack([q.pow(2).sum(-1), k.pow(2).sum(-1)], -1)
        self.tp.all_reduce(ss)
        rq = torch.rsqrt(ss[:, :1] / (a.num_heads * a.head_dim) + a.rms_norm_eps)
        rk = torch.rsqrt(ss[:, 1:] / (a.num_kv_heads * a.head_dim) + a.rms_norm_eps)
        qkv[:, : self.q_size] = (w[f"{i}.q_norm_all"] * (q * rq)).to(qkv.dtype)
        qkv[:, self.q_size : self.q_size + self.kv_size] = (w[f"{i}.k_norm_all"] * (k * rk)).to(qkv.dtype)

    def _row_parallel(self, ctx: ForwardContext, i: int, name: str, x: torch.Tensor) -> torch.Tensor:
        """o / down: this rank's partial x @ W^T plus its LoRA partial, summed over the TP group by one
        all-reduce, then the bias (added once, after the reduction)."""
        lora = lora_start(ctx, i, name, x)
        y = F.linear(x, self.w[f"{i}.{name}"])
        lora_finish(ctx, i, lora, y, [self.args.hidden_size])
        self.tp.all_reduce(y)
        bias = self.w.get(f"{i}.{name}_b")
        return y if bias is None else y + bias

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.linear(hidden, self.w["lm_head"])
        out = (out if self.args.logits_scaling == 1.0 else out / self.args.logits_scaling).float()  # Granite's
        cap = self.args.final_softcap
        return cap * torch.tanh(out / cap) if cap else out  # Gemma 2's soft-capped logits
