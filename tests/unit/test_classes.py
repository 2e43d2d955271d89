"""Eviction by class and tenant quotas on a store, without I/O (ClassedLru, QuotaKeeper)."""

from __future__ import annotations

from cachenode.metrics import NodeMetrics
from cachenode.store.classes import ClassedLru, Usage
from cachenode.store.quota import QuotaKeeper


def order(lru: ClassedLru, over: set[str] | None = None) -> list[str]:
    """Return every block in eviction order (emptying the policy)."""
    out = []
    while (got := lru.victim(lambda t: t in (over or set()))) is not None:
        out.append(got[0])
        lru.remove(got[0])
    return out


def test_read_through_goes_before_warmed_least_recent_first_in_each() -> None:
    lru = ClassedLru()
    lru.add("w1", 10, "a", warmed=True)
    lru.add("r1", 10, "b")
    lru.add("w2", 10, "", warmed=True)
    lru.add("r2", 10, "")
    lru.add("r3", 10, "a")
    lru.touch("r1")  # now newer than r2, r3
    lru.touch("w1")
    assert order(lru) == ["r2", "r3", "r1", "w2", "w1"]


def test_over_quota_tenants_read_through_goes_first_then_the_rest() -> None:
    lru = ClassedLru()
    for bid, tenant in [("a1", "a"), ("b1", "b"), ("c1", "c"), ("b2", "b"), ("c2", "c")]:
        lru.add(bid, 10, tenant)
    lru.add("aw", 10, "a", warmed=True)
    # b and c over: their read-through first, LRU among them (b1, c1, b2, c2), then a's
    assert order(lru, over={"b", "c"}) == ["b1", "c1", "b2", "c2", "a1", "aw"]


def test_victim_says_whether_it_goes_for_quota() -> None:
    lru = ClassedLru()
    lru.add("x", 1, "b")
    lru.add("y", 1, "a")
    assert lru.victim(lambda t: t == "a") == ("y", True)
    assert lru.victim(lambda t: False) == ("x", False)


def test_usage_by_tenant_and_class_follows_adds_removes_and_reclass() -> None:
    lru = ClassedLru()
    lru.add("r", 7, "b")
    lru.add("w", 5, "a", warmed=True)
    lru.add("r2", 3, "b")
    assert lru.usage("b") == Usage(0, 10) and lru.usage("a") == Usage(5, 0)
    assert lru.total == 15 and len(lru) == 3
    lru.reclass("r", "a", True)  # a warm found b's read-through block: now a's, warmed
    assert lru.usage("b") == Usage(0, 3) and lru.usage("a") == Usage(12, 0)
    assert lru.holder("r") == ("a", True)
    lru.reclass("r", "c", True)  # the policy moves any block; the store never moves warmed ones
    assert lru.usage("c") == Usage(12 - 5, 0)
    assert lru.remove("r2") == 3 and lru.remove("r2") == 0
    assert "b" not in lru.tenants() and lru.total == 12
    lru.add("w", 9, "a", warmed=True)  # added again: replaced, not counted twice
    assert lru.usage("a") == Usage(9, 0) and lru.total == 16


def test_oldest_read_skips_the_block_to_keep() -> None:
    lru = ClassedLru()
    lru.add("new", 1, "b")
    assert lru.oldest_read("b", keep="new") is None
    lru.add("newer", 1, "b")
    assert lru.oldest_read("b", keep="new") == "newer"
    assert lru.oldest_read("b") == "new"


class Store:
    """What QuotaKeeper asks of a store: it deletes what it is told."""

    def __init__(self, quotas: dict[str, int]) -> None:
        self.lru = ClassedLru()
        self.evicted: list[tuple[str, bool]] = []
        self.metrics = NodeMetrics()
        self.keeper = QuotaKeeper(self.lru, quotas.get, self.evict, self.metrics)

    def evict(self, block_id: str, for_capacity: bool) -> None:
        self.evicted.append((block_id, for_capacity))
        self.lru.remove(block_id)

    def put(self, block_id: str, size: int, tenant: str, warmed: bool = False) -> None:
        self.lru.add(block_id, size, tenant, warmed)
        if not warmed:
            self.keeper.enforce(tenant, keep=block_id)


def test_a_tenant_is_kept_under_its_share_by_its_own_read_through() -> None:
    s = Store({"b": 30})
    for i in range(5):
        s.put(f"b{i}", 10, "b")
    assert [e for e, _ in s.evicted] == ["b0", "b1"]  # oldest first, never the new one
    assert s.lru.usage("b").total == 30
    assert not any(cap for _, cap in s.evicted)
    assert s.metrics.value("blockcache_tenant_evicted_bytes_total", tenant="b",
                           reason="quota") == 20


def test_warmed_blocks_count_but_never_leave_for_a_quota() -> None:
    s = Store({"a": 25})
    s.put("w1", 10, "a", warmed=True)
    s.put("w2", 10, "a", warmed=True)
    s.put("w3", 10, "a", warmed=True)  # over by warmed bytes: nothing leaves
    assert s.evicted == []
    s.put("r1", 10, "a")  # read-through of a tenant over on warmed bytes alone: kept, alone
    s.put("r2", 10, "a")
    assert s.evicted == [("r1", False)] and s.lru.usage("a") == Usage(30, 10)


def test_capacity_takes_over_quota_read_through_then_others_then_warmed() -> None:
    s = Store({"b": 100})
    s.put("aw", 10, "a", warmed=True)
    s.put("x", 10, "")
    s.put("b1", 10, "b")
    s.put("b2", 10, "b")
    s.keeper.shrink_to(30)  # nobody over: plain read-through LRU
    assert [e for e, _ in s.evicted] == ["x"]
    s.keeper._quota = {"b": 5}.get  # b's share shrank (the ring grew)
    s.put("y", 10, "")
    s.keeper.shrink_to(20)
    assert [e for e, _ in s.evicted] == ["x", "b1", "b2"]  # b over: its blocks before y's
    s.keeper.shrink_to(0)
    assert [e for e, _ in s.evicted][-2:] == ["y", "aw"]
    assert all(cap for _, cap in s.evicted)
    m = s.metrics
    assert m.value("blockcache_tenant_evicted_bytes_total", tenant="b", reason="quota") == 20
    assert m.value("blockcache_tenant_evicted_bytes_total", tenant="_none",
                   reason="capacity") == 20
    assert m.value("blockcache_tenant_evicted_bytes_total", tenant="a",
                   reason="capacity") == 10


def test_rows_give_usage_and_share_of_every_holder() -> None:
    s = Store({"b": 30})
    s.put("b1", 10, "b")
    s.put("aw", 4, "a", warmed=True)
    s.put("x", 1, "")
    assert s.keeper.rows() == [("", 0, 1, None), ("a", 4, 0, None), ("b", 0, 10, 30)]
