"""The unified page pool (app/pool.py): LRU adapter cache with pins, its invariants under random
operations, and the engine freeing and refusing pages."""

from __future__ import annotations

import pytest

from app import LLM
from app.pool import PagePool
from tests.models import greedy


def test_abort_frees_pages(llm):
    e = llm.engine
    rid = e.add_request([7] * 40, greedy(50), adapter="demo-r64-all")
    e.step()
    assert e.pool_stats().kv > 0 and e.pool_stats().adapter_pinned > 0
    e.abort(rid)
    e.step()
    s = e.pool_stats()
    assert s.kv == 0 and s.adapter_pinned == 0 and not e.has_unfinished()
    e.pool.check()


def test_request_larger_than_pool_is_refused(demo):
    llm = LLM(model=str(demo / "model"), device="cpu", dtype="float32", pool={"page_size": 16, "num_pages": 4})
    with pytest.raises(ValueError, match="pool pages"):
        llm.engine.add_request([1] * 40, greedy(40))


def test_pool_lru_and_pins():
    pool = PagePool(num_pages=10, page_size=4)
    assert pool.load_adapter("a", 3) and pool.load_adapter("b", 3)
    pool.pin("a")
    assert pool.load_adapter("a", 3) == []  # hit
    assert pool.grow_kv("r1", 16)  # 4 pages: all free pages used
    assert pool.num_free == 0 and pool.available() == 3  # only b is evictable
    assert pool.load_adapter("c", 4) is None  # a is pinned, b is too small a victim
    assert pool.load_adapter("c", 3) is not None and not pool.is_resident("b")
    with pytest.raises(RuntimeError):
        pool.evict("a")
    pool.unpin("a")
    pool.free_kv("r1")
    s = pool.stats()
    assert (s.kv, s.adapter, s.free, s.evictions, s.hits) == (0, 6, 4, 1, 1)
    pool.check()


def test_pool_invariants_under_random_operations():
    """Random loads, pins, KV growth and frees: pages are never leaked or shared, pinned adapters are
    never evicted, and the running evictable count equals the brute-force sum."""
    import random

    rng = random.Random(0)
    pool = PagePool(num_pages=64, page_size=4)
    pins: dict[str, int] = {}
    for _ in range(3000):
        op = rng.random()
        name = f"a{rng.randrange(8)}"
        rid = f"r{rng.randrange(10)}"
        if op < 0.25:
            if pool.load_adapter(name, rng.randint(1, 9)) is not None:
                pool.pin(name)
                pins[name] = pins.get(name, 0) + 1
        elif op < 0.45 and pins.get(name):
            pool.unpin(name)
            pins[name] -= 1
        elif op < 0.75:
            pool.grow_kv(rid, rng.randint(1, 40), keep={name})
        elif op < 0.9:
            pool.free_kv(rid)
        elif pool.is_resident(name) and not pins.get(name):
            pool.evict(name)
        pool.check()
        brute = sum(len(pool.adapter(n).pages) for n in pool.resident_adapters() if not pins.get(n))
        assert pool.available() == pool.num_free + brute
        assert all(pool.is_resident(n) for n, c in pins.items() if c)
