"""LruPolicy: recency order, touch, and byte totals."""

from __future__ import annotations

from cachenode.store.eviction import LruPolicy


def test_victims_oldest_first() -> None:
    lru = LruPolicy()
    for name, size in (("a", 1), ("b", 2), ("c", 3)):
        lru.add(name, size)
    assert list(lru.victims()) == ["a", "b", "c"]
    assert lru.total == 6 and len(lru) == 3
    assert "b" in lru and "z" not in lru


def test_touch_moves_to_most_recent() -> None:
    lru = LruPolicy()
    for name in "abc":
        lru.add(name, 10)
    lru.touch("a")
    assert list(lru.victims()) == ["b", "c", "a"]
    lru.touch("missing")  # unknown ids are ignored, not added
    assert list(lru.victims()) == ["b", "c", "a"] and lru.total == 30


def test_re_add_replaces_size_and_refreshes() -> None:
    lru = LruPolicy()
    lru.add("a", 10)
    lru.add("b", 5)
    lru.add("a", 7)
    assert lru.total == 12 and len(lru) == 2
    assert list(lru.victims()) == ["b", "a"]


def test_remove_updates_totals() -> None:
    lru = LruPolicy()
    lru.add("a", 10)
    lru.add("b", 5)
    assert lru.remove("a") == 10
    assert lru.total == 5 and len(lru) == 1
    assert lru.remove("a") == 0  # twice is harmless
    assert lru.remove("never") == 0
    assert lru.total == 5
    assert lru.remove("b") == 5
    assert lru.total == 0 and list(lru.victims()) == []


def test_victims_is_a_snapshot() -> None:
    lru = LruPolicy()
    for name in "abcd":
        lru.add(name, 1)
    seen = []
    for bid in lru.victims():  # removing while iterating must be safe (eviction does this)
        seen.append(bid)
        lru.remove(bid)
    assert seen == ["a", "b", "c", "d"] and lru.total == 0
