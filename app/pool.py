"""The unified paged pool: one set of equal pages per device shared by KV cache and adapter weights.

This class is the bookkeeping (which page belongs to whom), kept by the scheduler; the page contents
live in each rank's pool tensor `[num_layers, num_pages, page_elems]` (app/runner.py), and every
tensor-parallel rank uses the same page ids. A page id is valid in every layer, so one allocation
serves all layers (S-LoRA). A page holds either K and V of `page_size` tokens of one sequence
(kernels/attention.py) or a run of one adapter's virtual weight buffer (kernels/lora.py). Any free page
serves either; there is no static split.

Invariants:
  * every page is exactly one of: free, KV of one request, weights of one resident adapter;
  * an adapter with pins > 0 (used by a running request) is never evicted;
  * unpinned resident adapters are a cache: kept while pages are free, evicted LRU on demand, so
    `free + evictable` is the one admission budget for both kinds.

`adapter_limit` (an ablation, LoRAConfig.static_adapter_pages) turns this into a static split instead:
adapters hold at most `adapter_limit` pages (evicting their own LRU cache to stay within it) and KV at most
the rest, so KV never evicts an adapter.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field


@dataclass
class ResidentAdapter:
    pages: list[int]
    pins: int = 0


@dataclass
class PoolStats:
    total: int
    free: int
    kv: int
    adapter: int
    adapter_pinned: int
    kv_fragmentation: float  # share of KV page slots allocated but holding no token
    loads: int = 0
    evictions: int = 0
    hits: int = 0


@dataclass
class PagePool:
    num_pages: int
    page_size: int
    adapter_limit: int | None = None  # static split: pages adapters may hold (None: unified)
    _free: list[int] = field(init=False)
    _kv: dict[str, list[int]] = field(init=False, default_factory=dict)
    _kv_tokens: dict[str, int] = field(init=False, default_factory=dict)
    _adapters: OrderedDict[str, ResidentAdapter] = field(init=False, default_factory=OrderedDict)
    loads: int = 0
    evictions: int = 0
    hits: int = 0
    _unpinned: int = 0  # pages of resident adapters with no pins (the evictable cache)
    _kv_total: int = 0  # pages held as KV
    _adapter_total: int = 0  # pages held by resident adapters

    def __post_init__(self):
        self._free = list(range(self.num_pages - 1, -1, -1))
        if self.adapter_limit is not None and not 0 < self.adapter_limit < self.num_pages:
            raise ValueError(f"adapter_limit {self.adapter_limit} must be in [1, num_pages={self.num_pages})")

    @property
    def kv_limit(self) -> int:
        """Pages KV may hold (all of them in a unified pool)."""
        return self.num_pages - (self.adapter_limit or 0)

    # ---- budget ----------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    def evictable(self, keep: AbstractSet[str] = frozenset()) -> int:
        """Pages of unpinned resident adapters not in `keep` (O(len(keep)): a running count)."""
        kept = sum(len(r.pages) for n in keep if (r := self._adapters.get(n)) is not None and r.pins == 0)
        return self._unpinned - kept

    def available(self, keep: AbstractSet[str] = frozenset()) -> int:
        """Pages that an allocation may take: free ones plus those of unpinned cached adapters."""
        return self.num_free + self.evictable(keep)

    def _take(self, n: int, keep: AbstractSet[str] = frozenset()) -> list[int] | None:
        if n > len(self._free) and n > self.available(keep):
            return None
        while len(self._free) < n:
            victim = next(name for name, r in self._adapters.items() if r.pins == 0 and name not in keep)
            self.evict(victim)
        return [self._free.pop() for _ in range(n)]

    # ---- KV --------------------------------------------------------------------------------------
    def kv_pages_needed(self, req_id: str, num_tokens: int) -> int:
        have = len(self._kv.get(req_id, ()))
        return max(0, -(-num_tokens // self.page_size) - have)

    def grow_kv(self, req_id: str, num_tokens: int, keep: AbstractSet[str] = frozenset()) -> bool:
        """Makes room for `num_tokens` cached tokens of a request; False (and nothing taken) if it can't."""
        need = self.kv_pages_needed(req_id, num_tokens)
        if self._kv_total + need > self.kv_limit:
            return False
        pages = self._take(need, keep) if need else []
        if pages is None:
            return False
        self._kv.setdefault(req_id, []).extend(pages)
        self._kv_total += len(pages)
        self._kv_tokens[req_id] = max(num_tokens, self._kv_tokens.get(req_id, 0))
        return True

    def kv_pages(self, req_id: str) -> list[int]:
        return self._kv.get(req_id, [])

    def free_kv(self, req_id: str) -> None:
        pages = self._kv.pop(req_id, [])
        self._kv_total -= len(pages)
        self._free.extend(reversed(pages))
        self._kv_tokens.pop(req_id, None)

    # ---- adapters --------------------------------------------------------------------------------
    def is_resident(self, name: str) -> bool:
        return name in self._adapters

    def is_pinned(self, name: str) -> bool:
        return name in self._adapters and self._adapters[name].pins > 0

    def adapter(self, name: str) -> ResidentAdapter:
        return self._adapters[name]

    def load_adapter(self, name: str, num_pages: int, keep: AbstractSet[str] = frozenset()) -> list[int] | None:
        """Gives an adapter `num_pages` pages; returns the pages its weights must be copied into ([] when
        it is already resident: a cache hit, moved to the MRU end), or None if it does not fit."""
        if name in self._adapters:
            self._adapters.move_to_end(name)
            self.hits += 1
            return []
        if self.adapter_limit is not None and not self._fit_adapter(num_pages, keep | {name}):
            return None
        pages = self._take(num_pages, keep | {name})
        if pages is None:
            return None
        self._adapters[name] = ResidentAdapter(pages=pages)
        self._unpinned += num_pages
        self._adapter_total += num_pages
        self.loads += 1
        return pages

    def _fit_adapter(self, n: int, keep: AbstractSet[str]) -> bool:
        """Static split: evicts LRU unpinned adapters until `n` more pages fit under adapter_limit; False (and
        nothing evicted) if they cannot."""
        limit = self.adapter_limit
        assert limit is not None  # only called with a static split
        if self._adapter_total + n - self.evictable(keep) > limit:
            return False
        while self._adapter_total + n > limit:
            self.evict(next(k for k, r in self._adapters.items() if r.pins == 0 and k not in keep))
        return True

    def pin(self, name: str) -> None:
        r = self._adapters[name]
        if r.pins == 0:
            self._unpinned -= len(r.pages)
        r.pins += 1
        self._adapters.move_to_end(name)

    def unpin(self, name: str) -> None:
        r = self._adapters[name]
        if r.pins <= 0:
            raise RuntimeError(f"adapter {name!r} unpinned more often than pinned")
        r.pins -= 1
        if r.pins == 0:
            self._unpinned += len(r.pages)

    def evict(self, name: str) -> None:
        r = self._adapters[name]
        if r.pins:
            raise RuntimeError(f"adapter {name!r} is in use by {r.pins} request(s) and cannot be evicted")
        del self._adapters[name]
        self._unpinned -= len(r.pages)
        self._adapter_total -= len(r.pages)
        self._free.extend(reversed(r.pages))
        self.evictions += 1

    def resident_adapters(self) -> list[str]:
        return list(self._adapters)

    # ---- reporting -------------------------------------------------------------------------------
    def stats(self) -> PoolStats:
        kv = sum(len(p) for p in self._kv.values())
        slots = kv * self.page_size
        used = sum(self._kv_tokens.values())
        adapter = sum(len(r.pages) for r in self._adapters.values())
        pinned = sum(len(r.pages) for r in self._adapters.values() if r.pins)
        return PoolStats(
            total=self.num_pages,
            free=self.num_free,
            kv=kv,
            adapter=adapter,
            adapter_pinned=pinned,
            kv_fragmentation=(1 - used / slots) if slots else 0.0,
            loads=self.loads,
            evictions=self.evictions,
            hits=self.hits,
        )

    def check(self) -> None:
        """Asserts the invariants (used by tests): every page owned exactly once."""
        owners = list(self._free)
        for p in self._kv.values():
            owners += p
        for r in self._adapters.values():
            owners += r.pages
        if sorted(owners) != list(range(self.num_pages)):
            raise AssertionError("pool pages are leaked or owned twice")
        if self._unpinned != sum(len(r.pages) for r in self._adapters.values() if r.pins == 0):
            raise AssertionError("the count of evictable adapter pages is off")
        if self._kv_total != sum(map(len, self._kv.values())) or self._adapter_total != sum(
            len(r.pages) for r in self._adapters.values()
        ):
            raise AssertionError("the counts of KV / adapter pages are off")
        if self.adapter_limit is not None and (
            self._kv_total > self.kv_limit or self._adapter_total > self.adapter_limit
        ):
            raise AssertionError("the static split is exceeded")
