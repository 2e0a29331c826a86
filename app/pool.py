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

Prefix caching (`prefix_caching`, PoolConfig.enable_prefix_caching): a full KV page whose tokens are known
may be registered under its *block key*, `(parent, tokens)`: `parent` is the registration id of the block
before it (block 0: the root `(ROOT, adapter)`, since an adapter changes every layer's K/V, or
`(ROOT, adapter, salt)` for a request's `cache_salt`), `tokens` the page's `page_size` token ids, compared
exactly (no hash collisions). A later request with the same adapter, salt and leading blocks attaches those
pages (`match_prefix`, `attach_prefix`) instead of computing them; a KV page is then held by several
requests (a reference count) and is never written again (only full pages are registered, and a request
writes only past its attached prefix). When the last holder frees a registered page it stays in the cache,
unheld: evictable like an unpinned adapter, idle KV pages first (LRU, each block after the block before it),
so `free + evictable` stays the one admission budget.
Registration ids are never reused, so a block whose parent was evicted can no longer be reached (it ages
out). `drop_prefixes` unregisters an adapter's blocks (it was unloaded: a new adapter of that name must not
match them) or all of them (a failed step may have left pages half-written).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

ROOT = "sloray-prefix-root"  # the first element of every chain's root key (adapter names are never this)


def _root(adapter: str | None, salt: str | None) -> tuple:
    """The key block 0 of a chain hangs from: per adapter, and per cache_salt when there is one."""
    return (ROOT, adapter) if salt is None else (ROOT, adapter, salt)


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
    kv_cached: int = 0  # registered prefix pages no request holds (evictable; counted in neither free nor kv)


@dataclass
class PagePool:
    num_pages: int
    page_size: int
    adapter_limit: int | None = None  # static split: pages adapters may hold (None: unified)
    prefix_caching: bool = False
    _free: list[int] = field(init=False)
    _kv: dict[str, list[int]] = field(init=False, default_factory=dict)
    _refs: dict[int, int] = field(init=False, default_factory=dict)  # held KV page -> requests holding it
    # prefix cache: block key -> page, registered page -> (key, registration id, adapter), unheld registered
    # pages (LRU first), request -> (blocks of its pages looked at for registration, parent of the next one)
    _blocks: dict[tuple, int] = field(init=False, default_factory=dict)
    _entries: dict[int, tuple[tuple, int, str | None]] = field(init=False, default_factory=dict)
    _by_adapter: dict[str | None, set[int]] = field(init=False, default_factory=dict)  # registered pages
    _idle: OrderedDict[int, None] = field(init=False, default_factory=OrderedDict)
    _chains: dict[str, tuple[int, object]] = field(init=False, default_factory=dict)
    _next_reg: int = 0
    _kv_tokens: dict[str, int] = field(init=False, default_factory=dict)
    _adapters: OrderedDict[str, ResidentAdapter] = field(init=False, default_factory=OrderedDict)
    loads: int = 0
    evictions: int = 0
    hits: int = 0
    _unpinned: int = 0  # pages of resident adapters with no pins (the evictable cache)
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

    @property
    def _kv_total(self) -> int:
        """Pages held as KV: by requests, or idle in the prefix cache."""
        return len(self._refs) + len(self._idle)

    @property
    def num_kv_pages(self) -> int:
        """Pages held as KV by requests (idle prefix-cache pages not counted). O(1)."""
        return len(self._refs)

    @property
    def num_cached_kv(self) -> int:
        """Idle prefix-cache pages: KV no request holds, kept for later matches, evicted first."""
        return len(self._idle)

    def evictable(self, keep: AbstractSet[str] = frozenset()) -> int:
        """Pages of unpinned resident adapters not in `keep` (O(len(keep)): a running count)."""
        kept = sum(len(r.pages) for n in keep if (r := self._adapters.get(n)) is not None and r.pins == 0)
        return self._unpinned - kept

    def available(self, keep: AbstractSet[str] = frozenset()) -> int:
        """Pages that an allocation may take: free ones, idle prefix-cache pages and those of unpinned
        cached adapters."""
        return self.num_free + len(self._idle) + self.evictable(keep)

    def _take(self, n: int, keep: AbstractSet[str] = frozenset()) -> list[int] | None:
        if n > len(self._free) and n > self.available(keep):
            return None
        while len(self._free) < n and self._idle:
            self._evict_block(next(iter(self._idle)))
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
        if not need:  # most decode steps: the last page has room
            self._kv_tokens[req_id] = max(num_tokens, self._kv_tokens.get(req_id, 0))
            return True
        if len(self._refs) + need > self.kv_limit:
            return False
        while self._kv_total + need > self.kv_limit:  # a static split: idle prefix pages make room first
            self._evict_block(next(iter(self._idle)))
        pages = self._take(need, keep)
        if pages is None:
            return False
        self._kv.setdefault(req_id, []).extend(pages)
        for p in pages:
            self._refs[p] = 1
        self._kv_tokens[req_id] = max(num_tokens, self._kv_tokens.get(req_id, 0))
        return True

    def kv_pages(self, req_id: str) -> list[int]:
        return self._kv.get(req_id, [])

    def free_kv(self, req_id: str) -> None:
        """Releases a request's KV pages: a page no other request holds goes back to the free list, or,
        when it is a registered prefix block, stays cached (idle, evictable; deeper blocks evicted first)."""
        pages = self._kv.pop(req_id, [])
        self._kv_tokens.pop(req_id, None)
        self._chains.pop(req_id, None)
        for p in reversed(pages):
            left = self._refs[p] - 1
            if left:
                self._refs[p] = left
                continue
            del self._refs[p]
            if p in self._entries:
                self._idle[p] = None
            else:
                self._free.append(p)

    # ---- prefix cache ----------------------------------------------------------------------------
    def match_prefix(
        self, adapter: str | None, blocks: Iterable[tuple[int, ...]], salt: str | None = None
    ) -> list[int]:
        """The registered pages of the longest run of leading `blocks` (each page_size token ids) cached for
        `adapter` (None: the base model) under `salt` (a request's cache_salt; None: unsalted); [] without
        prefix caching. Changes nothing."""
        if not self.prefix_caching:
            return []
        pages: list[int] = []
        parent: object = _root(adapter, salt)
        for tokens in blocks:
            page = self._blocks.get((parent, tokens))
            if page is None:
                break
            pages.append(page)
            parent = self._entries[page][1]
        return pages

    def attach_prefix(self, req_id: str, adapter: str | None, pages: list[int]) -> None:
        """Gives a request that holds no KV yet the cached pages `match_prefix` found (its first
        len(pages) * page_size tokens' K/V), held until `free_kv`."""
        if req_id in self._kv:
            raise RuntimeError(f"request {req_id!r} already holds KV pages")
        if not pages:
            return
        for p in pages:
            if p not in self._entries:
                raise RuntimeError(f"page {p} is not a cached prefix block")
            self._idle.pop(p, None)
            self._refs[p] = self._refs.get(p, 0) + 1
        self._kv[req_id] = list(pages)
        self._kv_tokens[req_id] = len(pages) * self.page_size
        self._chains[req_id] = (len(pages), self._entries[pages[-1]][1])

    def registered_blocks(self, req_id: str) -> int:
        """Leading blocks of the request's pages already looked at by `register_blocks` (or attached)."""
        chain = self._chains.get(req_id)
        return chain[0] if chain else 0

    def register_blocks(
        self, req_id: str, adapter: str | None, blocks: list[tuple[int, ...]], salt: str | None = None
    ) -> None:
        """Registers the request's next full pages (from block `registered_blocks(req_id)` on) under the
        keys of `blocks`, their token ids: their K/V must be computed, or queued on the device ahead of
        every step that may read them. A block already cached under that key (another request computed
        it) keeps its page, and this request's copy stays private. `salt`: as in `match_prefix`. No-op
        without prefix caching."""
        if not self.prefix_caching or not blocks:
            return
        pages = self._kv[req_id]
        done, parent = self._chains.get(req_id, (0, _root(adapter, salt)))
        if done + len(blocks) > len(pages):
            raise RuntimeError(f"request {req_id!r} has {len(pages)} pages, not {done + len(blocks)} blocks")
        for tokens in blocks:
            if len(tokens) != self.page_size:
                raise ValueError(f"a block has {len(tokens)} tokens, not page_size {self.page_size}")
            key = (parent, tokens)
            page = self._blocks.get(key)
            if page is None:  # pages[done] is private: attached pages all lie before `done`
                page = pages[done]
                self._next_reg += 1
                self._blocks[key] = page
                self._entries[page] = (key, self._next_reg, adapter)
                self._by_adapter.setdefault(adapter, set()).add(page)
            parent = self._entries[page][1]
            done += 1
        self._chains[req_id] = (done, parent)

    def _evict_block(self, page: int) -> None:
        """Frees an idle registered page (its blocks after it can no longer be matched)."""
        del self._idle[page]
        self._unregister(page)
        self._free.append(page)

    def _unregister(self, page: int) -> None:
        key, _, adapter = self._entries.pop(page)
        del self._blocks[key]
        pages = self._by_adapter[adapter]
        pages.discard(page)
        if not pages:
            del self._by_adapter[adapter]

    def drop_prefixes(self, adapter: str | None = None, *, everything: bool = False) -> int:
        """Unregisters the cached blocks of `adapter` (None: the base model's), or all of them with
        `everything`; idle ones are freed, held ones stay with their requests as private pages. Returns
        how many blocks were dropped."""
        gone = list(self._entries) if everything else list(self._by_adapter.get(adapter, ()))
        for p in gone:
            if p in self._idle:
                self._evict_block(p)
            else:
                self._unregister(p)
        return len(gone)

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
        kv = self.num_kv_pages
        slots = sum(len(p) for p in self._kv.values()) * self.page_size
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
            kv_cached=len(self._idle),
        )

    def check(self) -> None:
        """Asserts the invariants (used by tests): every page owned exactly once (a KV page may be held by
        several requests: its reference count), registered pages are held or idle."""
        owners = list(self._free) + list(self._refs) + list(self._idle)
        for r in self._adapters.values():
            owners += r.pages
        if sorted(owners) != list(range(self.num_pages)):
            raise AssertionError("pool pages are leaked or owned twice")
        held: dict[int, int] = {}
        for pages in self._kv.values():
            for p in pages:
                held[p] = held.get(p, 0) + 1
        if held != self._refs or any(p not in self._entries for p in self._idle):
            raise AssertionError("KV reference counts are off, or an idle page is not a registered block")
        if {k: p for p, (k, _, _) in self._entries.items()} != self._blocks:
            raise AssertionError("the prefix cache's keys and pages disagree")
        by_adapter: dict[str | None, set[int]] = {}
        for p, (_, _, a) in self._entries.items():
            by_adapter.setdefault(a, set()).add(p)
        if by_adapter != self._by_adapter:
            raise AssertionError("the prefix cache's index by adapter is off")
        if self._unpinned != sum(len(r.pages) for r in self._adapters.values() if r.pins == 0):
            raise AssertionError("the count of evictable adapter pages is off")
        if self._adapter_total != sum(len(r.pages) for r in self._adapters.values()):
            raise AssertionError("the counts of KV / adapter pages are off")
        if self.adapter_limit is not None and (
            self._kv_total > self.kv_limit or self._adapter_total > self.adapter_limit
        ):
            raise AssertionError("the static split is exceeded")
