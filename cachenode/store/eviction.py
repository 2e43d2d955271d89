"""Least-recently-used eviction order over block ids, without I/O."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator


class LruPolicy:
    """Track block sizes in recency order and pick the oldest as victims."""

    def __init__(self) -> None:
        self._sizes: OrderedDict[str, int] = OrderedDict()  # oldest first
        self.total = 0

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._sizes

    def add(self, block_id: str, size: int) -> None:
        """Record a block as the most recently used."""
        self.remove(block_id)
        self._sizes[block_id] = size
        self.total += size

    def touch(self, block_id: str) -> None:
        """Mark a block as just used."""
        if block_id in self._sizes:
            self._sizes.move_to_end(block_id)

    def remove(self, block_id: str) -> int:
        """Forget a block and return its size (0 if unknown)."""
        size = self._sizes.pop(block_id, 0)
        self.total -= size
        return size

    def oldest(self) -> str | None:
        """Return the least recently used block id, or None when empty."""
        return next(iter(self._sizes), None)

    def victims(self) -> Iterator[str]:
        """Yield block ids from least to most recently used (a snapshot)."""
        yield from list(self._sizes)
