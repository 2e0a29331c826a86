"""Demo assets: a deterministic tiny Llama (random weights, a byte-level BPE tokenizer trained here) and
PEFT adapters of mixed ranks and targets, written as real files (config.json + model.safetensors,
tokenizer.json, adapter_config.json + adapter_model.safetensors). The service's default config uses them.

    python -m app.demo [DIR]      # writes DIR/model and DIR/adapters/<name>, prints DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# v2: the chat template shows tools; v3: it takes Qwen3's `enable_thinking` (a chat_template_kwargs variable)
DEFAULT_DIR = Path.home() / ".cache" / "sloray" / "demo-v3"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Serving thousands of concurrent LoRA adapters on one GPU with unified paging.",
    "A request names an adapter; the engine batches requests of different adapters together.",
    "Hello, world! How are you today? I am fine, thank you.",
    "def main():\n    print('hello')\n",
    "Ray Serve deploys the ingress and the tensor-parallel group of rank actors.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \"",
]
# name -> (rank, alpha, targets, use_rslora)
DEMO_ADAPTERS = {
    "demo-r1-qv": (1, 2.0, ["q_proj", "v_proj"], False),
    "demo-r4-attn": (4, 8.0, ["q_proj", "k_proj", "v_proj", "o_proj"], False),
    "demo-r8-mlp": (8, 16.0, ["gate_proj", "up_proj", "down_proj"], False),
    "demo-r16-all": (16, 16.0, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
    "demo-r32-rslora": (32, 8.0, ["q_proj", "v_proj", "down_proj"], True),
    "demo-r64-all": (64, 32.0, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
}
# `<|role|>content` lines; with `tools`, a Hermes-style tool section (the model calls a tool with
# <tool_call>{"name": ..., "arguments": {...}}</tool_call>; results come back in <tool_response> blocks);
# `enable_thinking: false` opens the answer with an empty <think></think> block, as Qwen3's template does.
# Jinja drops a newline right after a block tag in HF's templates (trim_blocks): those are {{ '\n' }}.
CHAT_TEMPLATE = (
    "{% if tools %}<|system|>"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions. Their signatures are within <tools></tools> XML tags:\n<tools>"
    "{% for t in tools %}{{ '\\n' }}{{ t | tojson }}{% endfor %}{{ '\\n' }}</tools>\n\n"
    "For each function call, return a json object with the function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call>\n{% endif %}"
    "{% for m in messages %}"
    "{% if tools and loop.first and m['role'] == 'system' %}"
    "{% elif m['role'] == 'assistant' and m.tool_calls is defined and m.tool_calls %}<|assistant|>"
    "{{ m['content'] or '' }}{% for c in m.tool_calls %}<tool_call>\n"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}\n</tool_call>"
    "{% endfor %}{{ '\\n' }}"
    "{% elif m['role'] == 'tool' %}<|tool|><tool_response>\n{{ m['content'] }}\n</tool_response>\n"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def write_tokenizer(out: Path, vocab_size: int = 512) -> int:
    """Trains a byte-level BPE on a fixed corpus (deterministic) and saves it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return tok.get_vocab_size()


def write_model(
    out: Path, vocab_size: int, seed: int = 0, num_kv_heads: int = 2, max_shard_size: str | None = None, **overrides
) -> None:
    """A tiny random Llama written by transformers itself (config.json + model.safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out), safe_serialization=True, **kw)


def write_peft_adapter(
    out: Path,
    model_dir: Path,
    rank: int,
    alpha: float,
    targets: list[str],
    use_rslora: bool = False,
    seed: int = 0,
    std: float = 0.15,
) -> None:
    """A PEFT LoRA directory with random (non-zero) A and B for every layer of the base model."""
    cfg = json.loads((model_dir / "config.json").read_text())
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    D = cfg.get("head_dim") or H // heads
    kv = cfg.get("num_key_value_heads", heads) * D
    dims = {
        "q_proj": (H, heads * D),
        "k_proj": (H, kv),
        "v_proj": (H, kv),
        "o_proj": (heads * D, H),
        "gate_proj": (H, I),
        "up_proj": (H, I),
        "down_proj": (I, H),
    }
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for t in targets:
            fin, fout = dims[t]
            part = "self_attn" if t in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{part}.{t}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fin, generator=g) * std
            tensors[f"{key}.lora_B.weight"] = torch.randn(fout, rank, generator=g) * std
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": str(model_dir),
                "r": rank,
                "lora_alpha": alpha,
                "lora_dropout": 0.0,
                "target_modules": targets,
                "bias": "none",
                "use_rslora": use_rslora,
                "use_dora": False,
                "modules_to_save": None,
                "fan_in_fan_out": False,
                "inference_mode": True,
            },
            indent=2,
        )
    )


def build_demo(root: str | Path | None = None) -> Path:
    """Writes the demo model and adapters under `root` once (a marker file makes it idempotent)."""
    root = Path(root or DEFAULT_DIR)
    marker = root / ".complete"
    if marker.exists():
        return root
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(model_dir)
    write_model(model_dir, vocab)
    for i, (name, (rank, alpha, targets, rs)) in enumerate(DEMO_ADAPTERS.items()):
        write_peft_adapter(root / "adapters" / name, model_dir, rank, alpha, targets, rs, seed=100 + i)
    marker.write_text("ok\n")
    return root


if __name__ == "__main__":
    print(build_demo(sys.argv[1] if len(sys.argv) > 1 else None))
