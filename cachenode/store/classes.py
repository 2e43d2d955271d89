"""Stored blocks by holder and class, and the order they are evicted in (pure, no I/O).

Every stored block counts against one tenant ('' = nobody: no auth, the cluster itself) in
one class: *warmed* (filled or confirmed by a /_warm for that tenant's job) or *read-through*
(filled by a read miss). Victims come in three tiers, least recently used first in each:

1. read-through blocks of tenants over their quota share on this node,
2. every other read-through block,
3. warmed blocks.

So a herd of reads takes read-through blocks, its own tenant's first, before any warmed
version leaves the disk. Tenants are few, so picking the oldest read-through block among
several tenants compares one head per tenant.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    """Bytes one tenant holds here, by class."""

    warmed: int = 0
    read: int = 0

    @property
    def total(self) -> int:
        """Return the tenant's bytes of both classes."""
        return self.warmed + self.read


@dataclass(slots=True)
class _Block:
    tenant: str
    warmed: bool
    size: int
    seq: int  # recency: a later use has a higher number


class ClassedLru:
    """Track committed blocks by tenant and class in recency order; pick eviction victims."""

    def __init__(self) -> None:
        self._blocks: dict[str, _Block] = {}
        self._read: dict[str, OrderedDict[str, None]] = {}  # tenant -> its read-through ids
        self._warmed: OrderedDict[str, None] = OrderedDict()  # every warmed id, oldest first
        self._usage: dict[str, Usage] = {}
        self._seq = 0
        self.total = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._blocks

    def add(self, block_id: str, size: int, tenant: str = "", warmed: bool = False) -> None:
        """Record a block held by `tenant` in its class, as the most recently used."""
        self.remove(block_id)
        self._seq += 1
        self._blocks[block_id] = _Block(tenant, warmed, size, self._seq)
        self._line(tenant, warmed)[block_id] = None
        use = self._usage.setdefault(tenant, Usage())
        if warmed:
            use.warmed += size
        else:
            use.read += size
        self.total += size

    def touch(self, block_id: str) -> None:
        """Mark a block as just used."""
        b = self._blocks.get(block_id)
        if b is not None:
            self._seq += 1
            b.seq = self._seq
            self._line(b.tenant, b.warmed).move_to_end(block_id)

    def remove(self, block_id: str) -> int:
        """Forget a block and return its size (0 if unknown)."""
        b = self._blocks.pop(block_id, None)
        if b is None:
            return 0
        line = self._line(b.tenant, b.warmed)
        del line[block_id]
        if not line and not b.warmed:
            del self._read[b.tenant]
        use = self._usage[b.tenant]
        if b.warmed:
            use.warmed -= b.size
        else:
            use.read -= b.size
        if not use.total:
            del self._usage[b.tenant]
        self.total -= b.size
        return b.size

    def size(self, block_id: str) -> int:
        """Return a block's size (0 if unknown)."""
        b = self._blocks.get(block_id)
        return 0 if b is None else b.size

    def holder(self, block_id: str) -> tuple[str, bool] | None:
        """Return (tenant, warmed) of a block, or None if unknown."""
        b = self._blocks.get(block_id)
        return None if b is None else (b.tenant, b.warmed)

    def reclass(self, block_id: str, tenant: str, warmed: bool) -> None:
        """Move a block to another holder or class; that counts as a use."""
        b = self._blocks.get(block_id)
        if b is not None and (b.tenant, b.warmed) != (tenant, warmed):
            self.add(block_id, b.size, tenant, warmed)

    def usage(self, tenant: str) -> Usage:
        """Return what `tenant` holds here (a copy)."""
        u = self._usage.get(tenant)
        return Usage() if u is None else Usage(u.warmed, u.read)

    def tenants(self) -> dict[str, Usage]:
        """Return what every tenant holding blocks here holds (copies)."""
        return {t: Usage(u.warmed, u.read) for t, u in self._usage.items()}

    def victim(self, over: Callable[[str], bool]) -> tuple[str, bool] | None:
        """Return the next block to evict and whether it goes for its tenant's quota.

        `over(tenant)` says whether a tenant holds more than its share here.
        """
        found = self._oldest_read(t for t in self._read if over(t))
        if found is not None:
            return found, True
        found = self._oldest_read(self._read)
        if found is not None:
            return found, False
        oldest = next(iter(self._warmed), None)
        return None if oldest is None else (oldest, False)

    def oldest_read(self, tenant: str, keep: str = "") -> str | None:
        """Return the tenant's least recently used read-through block other than `keep`."""
        for bid in self._read.get(tenant, ()):
            if bid != keep:
                return bid
        return None

    def _oldest_read(self, tenants: Iterable[str]) -> str | None:
        best: str | None = None
        best_seq = 0
        for t in tenants:
            bid = next(iter(self._read[t]))
            seq = self._blocks[bid].seq
            if best is None or seq < best_seq:
                best, best_seq = bid, seq
        return best

    def _line(self, tenant: str, warmed: bool) -> OrderedDict[str, None]:
        if warmed:
            return self._warmed
        line = self._read.get(tenant)
        if line is None:
            line = self._read[tenant] = OrderedDict()
        return line
