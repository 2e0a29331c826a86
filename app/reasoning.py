"""Reasoning outputs (vLLM's `--reasoning-parser`): a chat answer's `<think>...</think>` part is returned
apart from its content, as the message's `reasoning` (and `reasoning_content`, its older name).

Parsers (the ingress setting `reasoning_parser`):
  qwen3        Qwen3: the answer is reasoning when it starts with `<think>` or when the prompt left a
               `<think>` block open (templates of thinking-only models write it); otherwise it is all
               content (thinking switched off: `chat_template_kwargs: {"enable_thinking": false}`).
  deepseek_r1  DeepSeek-R1 and QwQ: the answer is reasoning until `</think>` (a leading `<think>` is
               dropped), whatever the prompt.
Reasoning ends at the first `</think>`; the rest is content. Newlines right after either tag are dropped.
An answer cut before `</think>` is all reasoning (content None).

The split works on text, as it streams: `ReasoningSplitter.feed(delta)` returns the (reasoning, content) text
that is certain so far, holding back a tail that may be the start of a tag; `flush()` returns the rest at
the end. The non-streamed answer goes through the same splitter (`split_reasoning`), so both agree. A
tokenizer that counts `<think>` as a special token drops it from the text: then nothing is split.
"""

from __future__ import annotations

REASONING_PARSERS = ("qwen3", "deepseek_r1")
START, END = "<think>", "</think>"


def opens_reasoning(prompt_tail: str) -> bool:
    """Whether a prompt's last text leaves a `<think>` block open (the answer starts inside it)."""
    t = prompt_tail.rstrip()
    return t.rfind(START) > t.rfind(END)


def _held(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (it may become the tag)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """One answer's split, fed its text as it streams (module docstring)."""

    def __init__(self, parser: str, prompt_tail: str = ""):
        if parser not in REASONING_PARSERS:
            raise ValueError(f"unknown reasoning parser {parser!r} (known: {', '.join(REASONING_PARSERS)})")
        inside = parser == "deepseek_r1" or opens_reasoning(prompt_tail)
        # "start": not yet known whether the answer opens with <think> (qwen3, no open block in the prompt)
        self.state = "reasoning" if inside else "start"
        self.optional_start = True  # a leading <think> is the tag, not reasoning text
        self.trim = inside  # drop newlines at the start of the current part
        self.buf = ""

    def feed(self, delta: str) -> tuple[str, str]:
        """(reasoning, content) text that `delta` makes certain."""
        self.buf += delta
        reasoning, content = [], []
        while self.buf:
            if self.trim:
                self.buf = self.buf.lstrip("\n")
                if not self.buf:
                    break
                self.trim = False
            if self.state == "start" or (self.state == "reasoning" and self.optional_start):
                if self.buf.startswith(START):
                    self.buf, self.state = self.buf[len(START) :], "reasoning"
                    self.optional_start, self.trim = False, True
                    continue
                if START.startswith(self.buf):
                    break  # maybe <think>: wait for more
                self.optional_start = False
                if self.state == "start":
                    self.state = "content"
                continue
            if self.state == "reasoning":
                i = self.buf.find(END)
                if i >= 0:
                    reasoning.append(self.buf[:i])
                    self.buf, self.state, self.trim = self.buf[i + len(END) :], "content", True
                    continue
                keep = _held(self.buf, END)
                reasoning.append(self.buf[: len(self.buf) - keep])
                self.buf = self.buf[len(self.buf) - keep :]
                break
            content.append(self.buf)
            self.buf = ""
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """The held-back rest at the end of the answer: reasoning inside an unclosed block, else content."""
        rest, self.buf = self.buf, ""
        return (rest, "") if self.state == "reasoning" else ("", rest)


def split_reasoning(parser: str, text: str, prompt_tail: str = "") -> tuple[str | None, str | None]:
    """(reasoning, content) of a whole answer; an empty part is None."""
    s = ReasoningSplitter(parser, prompt_tail)
    r1, c1 = s.feed(text)
    r2, c2 = s.flush()
    return (r1 + r2) or None, (c1 + c2) or None
