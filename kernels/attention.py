"""Paged attention and KV-cache writes over the unified pool.

KV page layout (one layer's slice `pool`: [num_pages, page_elems], page_elems = 2 * page_size * Hkv * D):
    pool[p].view(2, page_size, Hkv, D): [0] = K, [1] = V of `page_size` consecutive tokens.
Token position `i` of sequence s lives in page `kv_page_table[s, i // page_size]`, row `i % page_size`.

A batch is a list of sequences; sequence s has `seq_lens[s]` tokens in the cache (including its new
ones, already appended) and contributes the query tokens `[q_indptr[s], q_indptr[s+1])`, which are its
*last* q_len positions. Prefill (q_len = seq_len), chunked prefill (cached context + new chunk) and decode
(q_len = 1) mix freely in one batch.

paged_attention:
    out[t, h] = softmax_j( q[t, h] . K[s, j, h // (Hq / Hkv)] * scale ) @ V[s, j, h // (Hq / Hkv)]
    over j <= pos(t) = seq_lens[s] - q_len_s + (t - q_indptr[s])   (causal, grouped-query)
kv_append:
    K[slot // page_size, slot % page_size] = k[t], same for V, with slot = slot_mapping[t] (-1 = skip)

This file holds the torch references; the Triton kernels implement the same signatures.
"""

from __future__ import annotations

import torch


def kv_view(pool: torch.Tensor, page_size: int, num_kv_heads: int) -> torch.Tensor:
    """[num_pages, page_elems] -> [num_pages, 2, page_size, Hkv, D] (a view, no copy)."""
    num_pages, page_elems = pool.shape
    head_dim = page_elems // (2 * page_size * num_kv_heads)
    if head_dim * 2 * page_size * num_kv_heads != page_elems:
        raise ValueError("page_elems is not 2 * page_size * num_kv_heads * head_dim")
    return pool.view(num_pages, 2, page_size, num_kv_heads, head_dim)


def kv_append_ref(pool: torch.Tensor, page_size: int, k: torch.Tensor, v: torch.Tensor,
                  slot_mapping: torch.Tensor) -> None:
    """k, v: [T, Hkv, D]; slot_mapping: [T] int (page * page_size + row; -1 = skip)."""
    if k.shape != v.shape or k.dim() != 3 or slot_mapping.shape[0] != k.shape[0]:
        raise ValueError("k, v must be [T, Hkv, D] and slot_mapping [T]")
    kv = kv_view(pool, page_size, k.shape[1])
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    pages, rows = slots // page_size, slots % page_size
    kv[pages, 0, rows] = k[keep].to(pool.dtype)
    kv[pages, 1, rows] = v[keep].to(pool.dtype)


def paged_attention_ref(q: torch.Tensor, pool: torch.Tensor, page_size: int, num_kv_heads: int,
                        kv_page_table: torch.Tensor, seq_lens: torch.Tensor, q_indptr: torch.Tensor,
                        scale: float, out: torch.Tensor, max_q_len: int | None = None) -> torch.Tensor:
    """q, out: [T, Hq, D]; kv_page_table: [S, max_pages]; seq_lens: [S]; q_indptr: [S+1]."""
    if q.dim() != 3 or out.shape != q.shape:
        raise ValueError("q and out must be [T, Hq, D]")
    T, Hq, D = q.shape
    if Hq % num_kv_heads:
        raise ValueError(f"{Hq} query heads are not a multiple of {num_kv_heads} KV heads")
    kv = kv_view(pool, page_size, num_kv_heads)
    group = Hq // num_kv_heads
    lens = seq_lens.tolist()
    ptr = q_indptr.tolist()
    for s, L in enumerate(lens):
        lo, hi = ptr[s], ptr[s + 1]
        n_q = hi - lo
        if n_q == 0:
            continue
        n_pages = (L + page_size - 1) // page_size
        pages = kv_page_table[s, :n_pages].long()
        k = kv[pages, 0].reshape(-1, num_kv_heads, D)[:L].float()   # [L, Hkv, D]
        vv = kv[pages, 1].reshape(-1, num_kv_heads, D)[:L].float()
        k = k.repeat_interleave(group, dim=1)                        # [L, Hq, D]
        vv = vv.repeat_interleave(group, dim=1)
        qs = q[lo:hi].float()                                        # [n_q, Hq, D]
        scores = torch.einsum("qhd,khd->hqk", qs, k) * scale
        pos = torch.arange(L - n_q, L, device=q.device)[:, None]
        mask = torch.arange(L, device=q.device)[None, :] > pos      # [n_q, L]
        scores.masked_fill_(mask[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[lo:hi] = torch.einsum("hqk,khd->qhd", probs, vv).to(out.dtype)
    return out
