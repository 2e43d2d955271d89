"""Each tenant's quota on this node's store: its share of the site quota, kept by eviction.

Pure (no I/O: the store does the deleting). Who a block counts against (store/classes.py):

- A read miss's fill counts against the tenant whose read started it (the first filler);
  readers of other tenants who joined that fill, or read the block later, hold it for free.
- A /_warm for tenant W makes the block warmed and W's, whether W's job filled it or found
  it stored as somebody's read-through block (a warm upgrades it). A block already warmed
  for another tenant stays theirs: W's version is on disk all the same, and the coordinator
  counts versions against quotas itself. A warm that names no tenant makes it warmed for ''.

Enforcement: once a read-through block of tenant T is stored, T's read-through blocks (least
recently used first, never the one just stored) are evicted while T holds more than its share
here. So T holds at most its share, or its warmed bytes plus one block when those alone pass
it: warmed blocks never leave for a quota (admitting warmups is the coordinator's job); they
leave only for capacity, last (ClassedLru's tiers), or by /_evict. A share that shrinks (the
ring grew, the quota was lowered) is enforced at T's next fill, and under capacity pressure
T's read-through blocks go first meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

from cachenode.metrics import NodeMetrics, QuotaRow
from cachenode.store.classes import ClassedLru

Quota = Callable[[str], int | None]  # tenant -> bytes it may hold here (None: no quota)
Evict = Callable[[str, bool], None]  # (block id, for capacity): the store deletes it


class QuotaKeeper:
    """Evict by class, and keep each tenant under its share of its quota on this node."""

    def __init__(self, lru: ClassedLru, quota: Quota, evict: Evict,
                 metrics: NodeMetrics) -> None:
        self._lru, self._quota, self._evict, self._metrics = lru, quota, evict, metrics

    def over(self, tenant: str) -> bool:
        """Return whether `tenant` holds more than its share here."""
        limit = self._quota(tenant) if tenant else None
        return limit is not None and self._lru.usage(tenant).total > limit

    def shrink_to(self, target: int) -> None:
        """Evict until at most `target` bytes remain: over-quota read-through first, warmed last."""
        while self._lru.total > target:
            got = self._lru.victim(self.over)
            if got is None:
                return
            block_id, for_quota = got
            self._count(block_id, "quota" if for_quota else "capacity")
            self._evict(block_id, True)

    def enforce(self, tenant: str, keep: str) -> None:
        """Evict `tenant`'s oldest read-through blocks but `keep` while it is over its share."""
        while self.over(tenant):
            block_id = self._lru.oldest_read(tenant, keep)
            if block_id is None:
                return
            self._count(block_id, "quota")
            self._evict(block_id, False)

    def _count(self, block_id: str, reason: str) -> None:
        holder = self._lru.holder(block_id)
        if holder is not None:
            m = self._metrics
            m.tenant_evicted_bytes.labels(m.tenant(holder[0]), reason).inc(
                self._lru.size(block_id))

    def rows(self) -> list[QuotaRow]:
        """Return (tenant, warmed bytes, read-through bytes, share or None) of every holder."""
        return [(t, u.warmed, u.read, self._quota(t) if t else None)
                for t, u in sorted(self._lru.tenants().items())]
