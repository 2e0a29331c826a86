"""Token sampling: penalties, logit bias, bad words and allowed tokens, banned tokens (min_tokens), then greedy,
temperature, min-p, top-k, top-p, each request with its own torch.Generator so that a seeded request gives the
same tokens whatever else is in the batch. Log-probabilities (of sampled tokens and of prompt tokens) are those
of the raw model distribution, as vLLM's default; they travel over the tensor-parallel reply as int64 words."""

from __future__ import annotations

import logging
import math
import struct

import torch

from app.request import SamplingParams, TokenLogprobs
from app.structured import apply_token_bitmask

logger = logging.getLogger(__name__)

FAILED = -1  # the token of a request whose sampling raised; the engine fails that request alone


def apply_penalties(row: torch.Tensor, p: SamplingParams, tokens: list[int], prompt_len: int) -> torch.Tensor:
    """One request's logits [vocab] after its penalties and bias (see SamplingParams), as vLLM:
    repetition over prompt + output tokens, frequency / presence over output tokens, logit_bias, then the
    bad words' tokens the output leads to and the tokens outside allowed_token_ids set to -inf."""
    row = row.clone()
    if p.repetition_penalty != 1 and tokens:
        ids = torch.tensor(sorted(set(tokens)), dtype=torch.long, device=row.device)
        seen = row[ids]
        row[ids] = torch.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
    out = tokens[prompt_len:]
    if out and (p.frequency_penalty or p.presence_penalty):
        counts = torch.bincount(torch.tensor(out, dtype=torch.long, device=row.device), minlength=row.shape[-1])[
            : row.shape[-1]
        ].to(row.dtype)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), dtype=torch.long, device=row.device)
        row[ids] += torch.tensor(list(p.logit_bias.values()), dtype=row.dtype, device=row.device)
    banned: list[int] = []
    if p.bad_words_ids:
        single, ends, longest = p.bad_words_index
        banned = single + [t for k in range(1, min(longest, len(out)) + 1) for t in ends.get(tuple(out[-k:]), ())]
    if banned:
        row[torch.tensor(banned, dtype=torch.long, device=row.device)] = float("-inf")
    if p.allowed_token_ids is not None:
        keep = torch.zeros(row.shape[-1], dtype=torch.bool, device=row.device)
        keep[torch.tensor(p.allowed_token_ids, dtype=torch.long, device=row.device)] = True
        row = row.masked_fill(~keep, float("-inf"))
    return row


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    seen: list[tuple[list[int], int] | None] | None = None,
    banned: list[list[int]] | None = None,
    allowed: tuple[torch.Tensor, list[int]] | None = None,
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits: [n, vocab] float32, one row per request that emits a token this step; seen[i]: request i's
    (prompt + output tokens so far, prompt length) when its params are `penalized`, else None; banned[i]:
    token ids request i must not get this step (min_tokens), if any; allowed: a grammar token bitmask (on
    logits' device) and the rows it applies to (app/structured.py), if any. Rows with neither are sampled
    from their logits as they are, so a request's tokens do not depend on the others in its batch.
    Returns the tokens and, for requests with `logprobs` set, their TokenLogprobs (else None). A request
    whose sampling raises gets the token FAILED (and no logprobs): the others are sampled as usual."""
    raw = logits
    if allowed is not None or (banned and any(banned)):
        logits = logits.clone()
    if allowed is not None:
        apply_token_bitmask(logits, *allowed)
    if banned and any(banned):
        constrained = set(allowed[1]) if allowed is not None else set()
        for i, b in enumerate(banned):
            if b and i in constrained:  # a grammar that allows nothing but EOS wins over min_tokens
                row = logits[i].index_fill(0, torch.tensor(b, device=logits.device), float("-inf"))
                if bool(torch.isfinite(row).any()):
                    logits[i] = row
        rows = [i for i, b in enumerate(banned) if i not in constrained for _ in b]
        cols = [t for i, b in enumerate(banned) if i not in constrained for t in b]
        logits[rows, cols] = float("-inf")
    tokens = _sample(logits, params, generators, seen or [None] * len(params))
    return tokens, [
        None if p.logprobs is None or tokens[i] == FAILED else token_logprobs(raw[i], tokens[i], p.logprobs)
        for i, p in enumerate(params)
    ]


def prompt_token_logprobs(logits: torch.Tensor, targets: list[int], k: int | None) -> list[TokenLogprobs]:
    """logits: [m, vocab] of m prompt positions; targets: the prompt token after each. Their log-softmax
    values, ranks (1 = most likely) and the k most likely (id, value) at each position."""
    lp = torch.log_softmax(logits.float(), -1)
    tgt = torch.tensor(targets, dtype=torch.long, device=lp.device)
    picked = lp.gather(1, tgt[:, None])
    vals, ranks = picked[:, 0].tolist(), ((lp > picked).sum(-1) + 1).tolist()
    if k:
        top = torch.topk(lp, k, dim=-1)
        ids, tv = top.indices.tolist(), top.values.tolist()
    else:
        ids = tv = [[]] * len(targets)
    return [TokenLogprobs(v, list(zip(i, t)), r) for v, r, i, t in zip(vals, ranks, ids, tv)]


def token_logprobs(row: torch.Tensor, token: int, k: int) -> TokenLogprobs:
    """log-softmax of the raw logits row: the token's value and the k largest (id, value), best first."""
    lp = torch.log_softmax(row.float(), -1)
    top = torch.topk(lp, k) if k else None
    return TokenLogprobs(float(lp[token]), [] if top is None else list(zip(top.indices.tolist(), top.values.tolist())))


def logprob_words(params: list[SamplingParams]) -> int:
    """int64 words that `pack_logprobs` gives for these sampled requests' TokenLogprobs."""
    return sum(1 + 2 * p.logprobs for p in params if p.logprobs is not None)


def pack_logprobs(lps: list[TokenLogprobs | None]) -> list[int]:
    """TokenLogprobs as int64 words (float64 bit patterns), for the tensor-parallel reply channel."""
    words = []
    for lp in lps:
        if lp is not None:
            words.append(_bits(lp.logprob))
            for tok, v in lp.top:
                words += [tok, _bits(v)]
    return words


def prompt_logprob_words(counts: list[tuple[int, int]]) -> int:
    """int64 words of `pack_prompt_logprobs` for (positions, k) of each sequence."""
    return sum(n * (2 + 2 * k) for n, k in counts)


def pack_prompt_logprobs(lps: list[TokenLogprobs]) -> list[int]:
    """Prompt-token TokenLogprobs (with their rank) as int64 words: value, rank, then (id, value) pairs."""
    words: list[int] = []
    for lp in lps:
        assert lp.rank is not None  # prompt_token_logprobs gives every prompt token its rank
        words += [_bits(lp.logprob), lp.rank]
        for tok, v in lp.top:
            words += [tok, _bits(v)]
    return words


def unpack_prompt_logprobs(words: list[int], counts: list[tuple[int, int]]) -> list[list[TokenLogprobs]]:
    out, i = [], 0
    for n, k in counts:
        seq = []
        for _ in range(n):
            top = [(words[i + 2 + 2 * j], _val(words[i + 3 + 2 * j])) for j in range(k)]
            seq.append(TokenLogprobs(_val(words[i]), top, words[i + 1]))
            i += 2 + 2 * k
        out.append(seq)
    return out


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _val(w: int) -> float:
    return struct.unpack("<d", struct.pack("<q", w))[0]


def unpack_logprobs(words: list[int], params: list[SamplingParams]) -> list[TokenLogprobs | None]:
    out: list[TokenLogprobs | None] = []
    i = 0
    for p in params:
        if p.logprobs is None:
            out.append(None)
            continue
        k = p.logprobs
        out.append(
            TokenLogprobs(_val(words[i]), [(words[i + 1 + 2 * j], _val(words[i + 2 + 2 * j])) for j in range(k)])
        )
        i += 1 + 2 * k
    return out


def _sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    seen: list[tuple[list[int], int] | None],
) -> list[int]:
    out = logits.argmax(-1).tolist()
    for i, p in enumerate(params):
        if p.temperature == 0 and not p.penalized:
            continue
        try:
            out[i] = _sample_row(logits[i], p, generators[i], seen[i])
        except Exception:  # noqa: BLE001 - this request fails alone (the engine reports it); the batch goes on
            logger.exception("sampling failed for one request (%s); it is failed alone", p)
            out[i] = FAILED
    return out


def _sample_row(
    row: torch.Tensor, p: SamplingParams, generator: torch.Generator | None, seen: tuple[list[int], int] | None
) -> int:
    if p.penalized:
        assert seen is not None  # the runner passes (history, prompt_len) for every penalized request
        row = apply_penalties(row, p, *seen)
    if p.temperature == 0:
        best, token = row.max(-1)
        best_v, token_v = torch.stack((best.double(), token.double())).tolist()  # one read back to the host
        if best_v == float("-inf"):  # allowed_token_ids, bad words, min_tokens and a grammar left nothing
            raise ValueError("no token is left to sample: every one is masked")
        return int(token_v)
    probs = _probs(row, p)
    # a non-finite row (the model's own logits) must not reach multinomial: on CUDA that is a device assert
    if not bool(torch.isfinite(probs).all()):
        raise ValueError("the logits of this request are not finite")
    return int(_draw(probs, generator).item())


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token id [1] from `probs` (finite, >= 0): torch.multinomial(probs, 1)'s own algorithm for one
    sample (an exponential race, argmax of probs / q with q ~ Exp(1)), the same draws from the same
    generator state, without multinomial's check that reads the probabilities back to the host."""
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / q, -1, keepdim=True)


def _probs(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The distribution a request with temperature > 0 samples from: temperature, then min-p, top-k, top-p
    (vLLM's order)."""
    # the largest logit becomes 0 before the division, so no temperature overflows it (others go to -inf)
    row = (row - row.max()) / p.temperature
    if p.min_p > 0:  # prob / max prob = exp(row) with the largest row 0: drop the rows below log(min_p)
        row = row.masked_fill(row < math.log(p.min_p), float("-inf"))
    if 0 < p.top_k < row.shape[-1]:
        kth = torch.topk(row, p.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        # keep the smallest prefix whose mass reaches top_p; the most likely token always stays
        drop = probs.cumsum(-1) - probs >= p.top_p
        drop[0] = False
        row = row.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.softmax(row, -1)


def sample_on_device(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    banned: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample` for requests that are neither penalized nor constrained, reading nothing back to the host
    (asynchronous scheduling): the tokens [n] (int64, on logits' device) and whether each row's sampling
    succeeded [n] (bool; a row whose distribution is not finite gets False, where `sample` gives FAILED).
    The same operations as `sample`, so the same tokens from the same generator states."""
    if any(p.penalized or p.structured is not None for p in params):
        raise ValueError("sample_on_device takes no penalized or constrained requests")
    if banned and any(banned):
        logits = logits.clone()
        idx = torch.tensor([[i for i, b in enumerate(banned) for _ in b], [t for b in banned for t in b]])
        if logits.is_cuda:  # through pinned memory: a pageable copy would wait for the stream
            idx = idx.pin_memory().to(logits.device, non_blocking=True)
        logits[idx[0], idx[1]] = float("-inf")
    tokens = logits.argmax(-1)
    ok = torch.ones(len(params), dtype=torch.bool, device=logits.device)
    for i, p in enumerate(params):
        if p.temperature == 0:
            continue
        probs = _probs(logits[i], p)
        finite = torch.isfinite(probs).all()
        # a non-finite distribution is not drawn from: 1s instead
        tokens[i : i + 1] = _draw(torch.where(finite, probs, 1.0), generators[i])
        ok[i] = finite
    return tokens, ok


def token_logprobs_on_device(
    raw: torch.Tensor, tokens: torch.Tensor, ks: list[int | None]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`token_logprobs` of the rows i with ks[i] set, on the device: the tokens' log-probabilities [m]
    (float32), then the ks[i] most likely ids [sum k] (int64) and their values [sum k], row after row."""
    vals, top_ids, top_vals = [], [], []
    for i, k in enumerate(ks):
        if k is None:
            continue
        lp = torch.log_softmax(raw[i].float(), -1)
        vals.append(lp.gather(0, tokens[i : i + 1]))
        if k:
            top = torch.topk(lp, k)
            top_ids.append(top.indices)
            top_vals.append(top.values)

    def cat(xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return torch.cat(xs) if xs else torch.empty(0, dtype=dtype, device=raw.device)

    return cat(vals, torch.float32), cat(top_ids, torch.int64), cat(top_vals, torch.float32)
