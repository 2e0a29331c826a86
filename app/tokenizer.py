"""Tokenizer wrapper (a Hugging Face fast tokenizer read from local files) and incremental
detokenization of a growing list of output tokens."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any


class Tokenizer:
    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.eos_token_id = self.hf.eos_token_id
        # The longest token's string: a byte-level token's string has one character per byte and a
        # SentencePiece token's one per character, so no token stands for more text characters than this.
        self.max_chars_per_token = max(1, *(len(t) for t in self.hf.get_vocab()))

    def surely_longer_than(self, text_chars: int, max_tokens: int) -> bool:
        """True when a text of `text_chars` characters must encode to more than `max_tokens` tokens, so that
        it can be refused without tokenizing it (twice the bound: normalizers may merge a few characters)."""
        return text_chars > 2 * max_tokens * self.max_chars_per_token

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def word_token_ids(self, words: list[str]) -> list[list[int]]:
        """vLLM's bad_words as token sequences: each word's tokens as it starts a text, and after a space
        when that gives as many tokens with another first one (the word inside a text)."""
        seqs = []
        for word in words:
            alone = self.encode(word.lstrip(), add_special_tokens=False)
            spaced = self.encode(" " + word.lstrip(), add_special_tokens=False)
            seqs += [alone] + ([spaced] if len(spaced) == len(alone) and spaced[0] != alone[0] else [])
        return [s for s in seqs if s]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self.hf.decode(ids, skip_special_tokens=skip_special_tokens)
        assert isinstance(text, str)  # one sequence of ids decodes to one string
        return text

    @property
    def chat_template(self) -> str | None:
        t = getattr(self.hf, "chat_template", None)
        return t if isinstance(t, str) else None

    def apply_chat_template(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        add_special_tokens: bool = False,
        template_kwargs: dict[str, Any] | None = None,
        continue_final_message: bool = False,
    ) -> list[int]:
        """Token ids of a chat, with the tokenizer's template (which receives `tools`, when given) or a plain
        `role: content` fallback (which shows no tools). `add_special_tokens`: the tokenizer's own special
        tokens on top of those the template writes (vLLM's /tokenize option; the fallback always has them).
        `template_kwargs`: extra variables of the template (vLLM's `chat_template_kwargs`, e.g. Qwen3's
        `enable_thinking`; the fallback has none); a name that is an argument of transformers'
        `apply_chat_template` raises ValueError. `continue_final_message`: the chat ends inside its final
        message, as transformers renders it (the model continues that message; not with
        add_generation_prompt)."""
        if self.chat_template:
            extra = dict(template_kwargs or {})
            taken = set(extra) & (set(inspect.signature(self.hf.apply_chat_template).parameters) | {"messages"})
            if taken:
                raise ValueError(f"template variables {sorted(taken)} are arguments of apply_chat_template")
            kw: dict[str, Any] = {
                **extra,
                "tools": list(tools) if tools else None,
                "add_generation_prompt": add_generation_prompt,
                "continue_final_message": continue_final_message,
            }
            if add_special_tokens:
                return self.hf.encode(self.hf.apply_chat_template(messages, tokenize=False, **kw))
            # a list of ids, or a BatchEncoding holding them (transformers >= 5)
            out: Any = self.hf.apply_chat_template(messages, tokenize=True, **kw)
            return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + (
            "assistant:" if add_generation_prompt else ""
        )
        return self.encode(text[:-1] if continue_final_message else text)


class IncrementalDetokenizer:
    """Text of output tokens as they arrive (vLLM's method): decode only a window from `prefix` on,
    so that the cost per token stays constant, and hold back text that ends in an incomplete UTF-8
    sequence until the next token completes it."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.text = ""
        self.prefix = 0  # window start: one token of context before the unread ones
        self.read = 0  # tokens already turned into text

    def add(self, ids: list[int]) -> str:
        """`ids`: all output tokens so far. Returns the text they add."""
        prefix_text = self.tok.decode(ids[self.prefix : self.read], self.skip_special_tokens)
        new_text = self.tok.decode(ids[self.prefix :], self.skip_special_tokens)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        delta = new_text[len(prefix_text) :]
        self.text += delta
        self.prefix, self.read = self.read, len(ids)
        return delta
