"""Test assets made in the test: tiny random models written by transformers, adapters written by PEFT,
and the reference greedy decoding of Hugging Face transformers + PEFT."""

from __future__ import annotations

from pathlib import Path

import torch

from app.demo import write_model, write_tokenizer
from app.request import SamplingParams

# (prompt, adapter) pairs of the embedded demo (app/demo.py) that the Serve tests send and compare offline
DEMO_PROMPTS = [
    ("Hello, world!", "demo-r4-attn"),
    ("The quick brown fox", "demo-r16-all"),
    ("Serving thousands of", None),
    ("def main():", "demo-r32-rslora"),
]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> (rank, alpha, targets, use_rslora): ranks {1, 4, 8, 16, 64}, different target sets
ADAPTERS = {
    "a-r1-q": (1, 1.0, ["q_proj"], False),
    "a-r4-qv": (4, 8.0, ["q_proj", "v_proj"], False),
    "a-r8-attn": (8, 16.0, ["q_proj", "k_proj", "v_proj", "o_proj"], False),
    "a-r16-mlp": (16, 16.0, ["gate_proj", "up_proj", "down_proj"], False),
    "a-r64-all": (64, 64.0, ALL, False),
    "a-r4-down": (4, 4.0, ["down_proj"], True),
    "a-r16-ko-up": (16, 8.0, ["k_proj", "o_proj", "up_proj"], True),
    "a-r8-all": (8, 32.0, ALL, False),
}


def make_model(root: Path, kind: str) -> Path:
    """kind: 'gqa' (4 heads, 2 KV heads, Llama-3 rope scaling), 'mha' (4/4, sharded safetensors with an
    index), 'qwen2' (q/k/v bias, tied embeddings, GQA), 'mistral' (GQA, sliding window config), 'qwen3' (q/k
    head norms, head_dim 32 with hidden 64 and 4 heads, YaRN, tied embeddings, GQA), 'phi3' (fused qkv_proj and
    gate_up_proj, LongRoPE short factors with their attention factor, partial rotary 0.5, GQA, tied embeddings),
    'gemma2' / 'gemma3' (sandwich norms x (1 + w), gated GELU, sliding-window layers of 12 tokens beside full
    ones, Gemma 2's soft caps, Gemma 3's q/k norms and per-layer RoPE), 'gemma3-mm' (that Gemma 3 inside an
    image-text checkpoint with a tiny vision tower, as Gemma 3 4B and larger are), 'granite' (Granite 3's
    embedding, residual and attention multipliers and logits scaling), 'smollm3' (every second layer without
    RoPE), 'olmo2' (norms after attention and the MLP only, q / k norms over all heads), 'olmo3' (that, with 12-token
    sliding layers beside a full one with YaRN)."""
    d = root / f"model-{kind}"
    if (d / "config.json").exists():
        return d
    d.mkdir(parents=True)
    vocab = write_tokenizer(d)
    if kind == "gqa":
        write_model(
            d,
            vocab,
            seed=1,
            num_kv_heads=2,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        )
    elif kind == "mha":
        write_model(d, vocab, seed=2, num_kv_heads=4, max_shard_size="100KB")
        assert (d / "model.safetensors.index.json").exists()
    elif kind == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(3)
        cfg = Qwen2Config(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            initializer_range=0.1,
            eos_token_id=1,
            tie_word_embeddings=True,
        )
        Qwen2ForCausalLM(cfg).save_pretrained(str(d), safe_serialization=True)
    elif kind == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        torch.manual_seed(4)
        cfg = MistralConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            max_position_embeddings=512,
            sliding_window=16,  # shorter than most test prompts: the window masks cut
            initializer_range=0.1,
            eos_token_id=1,
            head_dim=32,
        )
        MistralForCausalLM(cfg).save_pretrained(str(d), safe_serialization=True)
    elif kind == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        torch.manual_seed(5)
        cfg = Qwen3Config(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,  # not hidden / heads, as Qwen3's own checkpoints
            max_position_embeddings=512,
            # YaRN, as Qwen3's long-context settings (a short pretraining length: the ramp cuts inside the dims)
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 128,
                "rope_theta": 10000.0,
            },  # fmt: skip
            initializer_range=0.1,
            eos_token_id=1,
            tie_word_embeddings=True,
        )
        model = Qwen3ForCausalLM(cfg)
        with torch.no_grad():  # norms of random weights (HF initialises them to 1), so the test sees them
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
        model.save_pretrained(str(d), safe_serialization=True)
    elif kind == "phi3":
        from transformers import Phi3Config, Phi3ForCausalLM

        torch.manual_seed(6)
        half = 8  # rotated dims / 2: 16 of each head's 32 (partial_rotary_factor 0.5, as Phi-4-mini's 0.75)
        cfg = Phi3Config(
            vocab_size=vocab,
            hidden_size=128,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            original_max_position_embeddings=256,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0 + 0.25 * i for i in range(half)],
                "long_factor": [4.0 + i for i in range(half)],
                "original_max_position_embeddings": 256,
            },
            initializer_range=0.1,
            eos_token_id=1,
            pad_token_id=0,
            bos_token_id=2,
            tie_word_embeddings=True,
            sliding_window=None,
        )
        Phi3ForCausalLM(cfg).save_pretrained(str(d), safe_serialization=True)
    elif kind == "smollm3":
        from transformers import SmolLM3Config, SmolLM3ForCausalLM

        torch.manual_seed(9)
        cfg = SmolLM3Config(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, eos_token_id=1,
            pad_token_id=0, bos_token_id=2, no_rope_layer_interval=2, tie_word_embeddings=True,
        )  # fmt: skip
        SmolLM3ForCausalLM(cfg).save_pretrained(str(d), safe_serialization=True)
    elif kind in ("olmo2", "olmo3"):
        from transformers import Olmo2Config, Olmo2ForCausalLM, Olmo3Config, Olmo3ForCausalLM

        torch.manual_seed(10)
        common = dict(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, eos_token_id=1,
            pad_token_id=0, bos_token_id=2,
        )  # fmt: skip
        if kind == "olmo2":
            model = Olmo2ForCausalLM(Olmo2Config(**common, num_hidden_layers=2))
        else:  # three sliding layers of 12 tokens to one full layer with YaRN
            model = Olmo3ForCausalLM(Olmo3Config(
                **common, num_hidden_layers=4, sliding_window=12,
                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                 "full_attention": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                    "original_max_position_embeddings": 128}},
            ))  # fmt: skip
        with torch.no_grad():  # random norm weights (they start at 1), so the test sees them
            for n, t in model.named_parameters():
                if "norm" in n:
                    t.uniform_(0.5, 1.5)
        model.save_pretrained(str(d), safe_serialization=True)
    elif kind == "granite":
        from transformers import GraniteConfig, GraniteForCausalLM

        torch.manual_seed(8)
        cfg = GraniteConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, eos_token_id=1,
            tie_word_embeddings=True, embedding_multiplier=6.0, residual_multiplier=0.3, attention_multiplier=0.09,
            logits_scaling=4.0,
        )  # fmt: skip
        GraniteForCausalLM(cfg).save_pretrained(str(d), safe_serialization=True)
    elif kind in ("gemma2", "gemma3", "gemma3-mm"):
        from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

        torch.manual_seed(7)
        common = dict(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=512,
            sliding_window=12,  # shorter than most test prompts: the sliding layers' masks cut
            initializer_range=0.1,
            eos_token_id=1,
            pad_token_id=0,
            bos_token_id=2,
        )
        if kind == "gemma2":  # sliding and full layers alternate; soft-capped scores and logits
            cfg = Gemma2Config(**common, num_hidden_layers=2, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                               final_logit_softcapping=3.0)  # fmt: skip
            model = Gemma2ForCausalLM(cfg)
        else:  # q/k norms, a local RoPE base on the sliding layers, linear scaling on the full ones
            cfg = Gemma3TextConfig(
                **common, num_hidden_layers=3, query_pre_attn_scalar=32,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}},
            )  # fmt: skip
            model = Gemma3ForCausalLM(cfg)
            if kind == "gemma3-mm":  # Gemma 3 4B and larger: an image-text checkpoint around the text model
                from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

                vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=16, patch_size=8)  # fmt: skip
                mm = Gemma3Config(text_config=cfg.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                                  image_token_index=vocab - 1, boi_token_index=vocab - 3, eoi_token_index=vocab - 2,
                                  eos_token_id=1, tie_word_embeddings=True)  # fmt: skip
                model = Gemma3ForConditionalGeneration(mm)
        with torch.no_grad():  # Gemma's norms scale by 1 + w and start at w = 0: random w, so the test sees them
            for n, t in model.named_parameters():
                if "norm" in n:
                    t.uniform_(-0.5, 0.5)
        model.save_pretrained(str(d), safe_serialization=True)
    else:
        raise ValueError(kind)
    return d


# a fused model's (Phi-3's) PEFT module names for the per-projection targets of the specs
FUSED_NAMES = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
               "up_proj": "gate_up_proj"}  # fmt: skip


def peft_targets(model_dir: Path, targets: list[str]) -> list[str]:
    """`targets` as the model's modules are named (q/k/v -> qkv_proj, gate/up -> gate_up_proj for Phi-3)."""
    import json

    if json.loads((model_dir / "config.json").read_text()).get("model_type") != "phi3":
        return targets
    return sorted({FUSED_NAMES.get(t, t) for t in targets})


def make_peft_adapters(root: Path, model_dir: Path, specs: dict = ADAPTERS) -> dict[str, Path]:
    """Writes each adapter with PEFT itself (random non-zero A and B). A spec is (rank, alpha, targets,
    use_rslora) with an optional fifth item: more LoraConfig arguments (rank_pattern, ...)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for i, (name, (r, alpha, targets, rs, *more)) in enumerate(specs.items()):
        d = root / f"{model_dir.name}-adapters" / name
        out[name] = d
        if (d / "adapter_config.json").exists():
            continue
        base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        torch.manual_seed(1000 + i)
        cfg = LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=peft_targets(model_dir, targets),
            use_rslora=rs,
            init_lora_weights=False,
            lora_dropout=0.0,
            **(more[0] if more else {}),
        )
        m = get_peft_model(base, cfg)
        with torch.no_grad():  # keep the adapters' effect moderate so that greedy tokens stay meaningful
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.mul_(0.5)
        m.save_pretrained(str(d))
    return out


class HFReference:
    """Greedy decoding with transformers + PEFT, one request at a time (the ground truth)."""

    def __init__(self, model_dir: Path, adapters: dict[str, Path]):
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        # eager: transformers' own attention, soft caps included (transformers 5.17 picks SDPA for Gemma 2,
        # which leaves the attention soft cap out: 0.16 apart in a log-probability, session-2026-12-05 run 44)
        base = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, attn_implementation="eager"
        ).eval()
        names = list(adapters)
        self.model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0]).eval()
        for n in names[1:]:
            self.model.load_adapter(str(adapters[n]), adapter_name=n)

    @torch.no_grad()
    def greedy(self, ids: list[int], adapter: str | None, max_tokens: int) -> list[int]:
        x = torch.tensor([ids])
        if adapter is None:
            with self.model.disable_adapter():
                return self._loop(x, max_tokens)
        self.model.set_adapter(adapter)
        return self._loop(x, max_tokens)

    @torch.no_grad()
    def logprobs(self, ids: list[int], adapter: str | None) -> torch.Tensor:
        """log_softmax of the logits at every position of `ids` (float32 [len(ids), vocab])."""
        x = torch.tensor([ids])
        if adapter is None:
            with self.model.disable_adapter():
                return torch.log_softmax(self.model(input_ids=x).logits[0].float(), -1)
        self.model.set_adapter(adapter)
        return torch.log_softmax(self.model(input_ids=x).logits[0].float(), -1)

    def _loop(self, x: torch.Tensor, n: int) -> list[int]:
        out = []
        past = None
        inp = x
        for _ in range(n):
            r = self.model(input_ids=inp, past_key_values=past, use_cache=True)
            past = r.past_key_values
            t = int(r.logits[0, -1].argmax())
            out.append(t)
            inp = torch.tensor([[t]])
        return out


def greedy(n: int = 8, **kw) -> SamplingParams:
    """Greedy sampling of exactly n tokens (EOS ignored)."""
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def llm_with_kv_room(demo: Path, adapters: dict[str, str], kv_pages: int, **kw):
    """An offline LLM of the demo model (float32 on the CPU, pages of 4 tokens) with `adapters`, whose pool
    holds exactly them plus `kv_pages` pages of KV cache: small enough for tests that preempt. `kw`: more
    LLM options (scheduler, ...)."""
    from app import LLM

    base = {"model": str(demo / "model"), "adapters": adapters, "device": "cpu", "dtype": "float32"}
    probe = LLM(**base, pool={"page_size": 4})
    pages = sum(a.num_pages for a in probe.engine.adapters.values()) + kv_pages
    return LLM(**base, pool={"page_size": 4, "num_pages": pages}, **kw)
