"""Reasoning outputs (app/reasoning.py): the split of a whole answer for each parser and prompt, and the
streamed split equal to it however the text is cut into deltas."""

from __future__ import annotations

import random

import pytest

from app.reasoning import ReasoningSplitter, opens_reasoning, split_reasoning

QWEN3_PROMPT = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
OPEN = QWEN3_PROMPT + "<think>\n"  # a thinking-only model's template opens the block
CLOSED = QWEN3_PROMPT + "<think>\n\n</think>\n\n"  # enable_thinking: false

CASES = [
    # (parser, prompt tail, answer, reasoning, content)
    ("qwen3", QWEN3_PROMPT, "<think>\nLet me see.\n</think>\n\nIt is 4.", "Let me see.\n", "It is 4."),
    ("qwen3", QWEN3_PROMPT, "It is 4.", None, "It is 4."),
    ("qwen3", CLOSED, "It is 4.", None, "It is 4."),
    ("qwen3", OPEN, "Let me see.\n</think>\n\nIt is 4.", "Let me see.\n", "It is 4."),
    ("qwen3", QWEN3_PROMPT, "<think>\nstill thinking when max_tokens cut", "still thinking when max_tokens cut", None),
    ("qwen3", QWEN3_PROMPT, "<think>a</think>", "a", None),
    ("qwen3", QWEN3_PROMPT, "<thi", None, "<thi"),  # not the tag: content
    ("qwen3", QWEN3_PROMPT, "x <think>y</think> z", None, "x <think>y</think> z"),  # a tag mid-answer is text
    ("qwen3", QWEN3_PROMPT, "<think>a < b and c </ d</think>ok", "a < b and c </ d", "ok"),
    ("deepseek_r1", "<｜Assistant｜><think>\n", "Hmm.\n</think>\n\nAnswer", "Hmm.\n", "Answer"),
    ("deepseek_r1", "<｜Assistant｜>", "<think>Hmm.</think>Answer", "Hmm.", "Answer"),
    ("deepseek_r1", "<｜Assistant｜>", "no end tag at all", "no end tag at all", None),
    ("deepseek_r1", "", "</think>only content", None, "only content"),
    ("qwen3", QWEN3_PROMPT, "", None, None),
]


@pytest.mark.parametrize("parser, tail, text, reasoning, content", CASES)
def test_split_whole_and_streamed(parser, tail, text, reasoning, content):
    assert split_reasoning(parser, text, tail) == (reasoning, content)
    rng = random.Random(len(text))
    for trial in range(30):  # random cuts, single characters included: the streamed parts add up to the whole
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 6)))) if len(text) > 1 else []
        if trial == 0:
            cuts = list(range(1, len(text)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        s = ReasoningSplitter(parser, tail)
        got = [s.feed(p) for p in pieces] + [s.flush()]
        assert ("".join(r for r, _ in got) or None, "".join(c for _, c in got) or None) == (reasoning, content)


def test_nothing_held_back_that_cannot_be_a_tag():
    """A streamed answer's reasoning goes out as it comes, holding back only what may start `</think>`."""
    s = ReasoningSplitter("qwen3", QWEN3_PROMPT)
    assert s.feed("<thi") == ("", "")  # may be <think>
    assert s.feed("nk>\nStep one") == ("Step one", "")
    assert s.feed(". </th") == (". ", "")
    assert s.feed("ing>") == ("</thing>", "")  # not the end tag after all
    assert s.feed("</think>\n") == ("", "")
    assert s.feed("\nDone") == ("", "Done")
    assert s.flush() == ("", "")


def test_opens_reasoning_and_unknown_parser():
    assert opens_reasoning(OPEN) and not opens_reasoning(CLOSED) and not opens_reasoning(QWEN3_PROMPT)
    with pytest.raises(ValueError, match="unknown reasoning parser"):
        ReasoningSplitter("granite")
