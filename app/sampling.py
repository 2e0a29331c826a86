"""Token sampling: greedy, temperature, top-k, top-p, each request with its own torch.Generator so
that a seeded request gives the same tokens whatever else is in the batch."""

from __future__ import annotations

import torch

from app.request import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """logits: [n, vocab] float32, one row per request that emits a token this step."""
    greedy = logits.argmax(-1)
    out = greedy.tolist()
    for i, p in enumerate(params):
        if p.temperature == 0:
            continue
        row = logits[i] / p.temperature
        if p.top_k > 0 and p.top_k < row.shape[-1]:
            kth = torch.topk(row, p.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(row, descending=True)
            probs = torch.softmax(sorted_logits, -1)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            drop = probs.cumsum(-1) - probs >= p.top_p
            row = row.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.softmax(row, -1)
        out[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
    return out
