"""How many bytes the block store may hold: its capacity, or what fits above the disk's floor."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cachenode.config import FreeFloor
from cachenode.errors import StoreFull

if TYPE_CHECKING:
    from cachenode.metrics import NodeMetrics

DEFAULT_FLOOR = FreeFloor(5.0, 2**30)  # 5% of the filesystem, at most 1 GiB


class StoreSpace:
    """Account the store's bytes (committed blocks and writes in progress) against its limit.

    The limit is the configured capacity or what fits on the filesystem above its free-space
    floor, the lesser. The store's own writes and evictions move its bytes and the free bytes
    by the same amount, so the disk's share (held + free - floor at the last statvfs) stays
    true between looks: only other writers make it stale, hence one look per `interval_s`.
    Writes in progress count as held, so a look mid-write overrates the room by their
    unwritten part; the floor absorbs that, and an ENOSPC corrects it (`ceiling`).
    """

    def __init__(self, path: Path, capacity: int, floor: FreeFloor = DEFAULT_FLOOR,
                 interval_s: float = 1.0,
                 statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> None:
        self.path, self.capacity = path, capacity
        self._floor, self._interval_s, self._statvfs = floor, interval_s, statvfs
        self.reserved = 0  # bytes promised to writes in progress (their temp files)
        self.free_bytes = 0  # at the last look
        self.floor_bytes = 0
        self.disk_limit = capacity  # most bytes that fit above the floor, as of the last look
        self._held_at_look = 0
        self._looked_at = -math.inf

    @property
    def limit(self) -> int:
        """Return the most bytes the store may hold now (blocks and writes in progress)."""
        return min(self.capacity, self.disk_limit)

    def due(self) -> bool:
        """Return whether the last look at the disk is older than the interval."""
        return time.monotonic() - self._looked_at >= self._interval_s

    def look(self, committed: int, ceiling: int | None = None) -> None:
        """Take the free bytes from statvfs (or raise OSError) while `committed` are stored.

        `ceiling` caps the disk's share until the next look: after an ENOSPC, what fits is
        at most what the store holds at that moment.
        """
        st = self._statvfs(str(self.path))
        held = committed + self.reserved
        self.floor_bytes = self._floor.resolve(st.f_blocks * st.f_frsize)
        self.free_bytes, self._held_at_look = st.f_bavail * st.f_frsize, held
        self.disk_limit = max(0, held + self.free_bytes - self.floor_bytes)
        if ceiling is not None:
            self.disk_limit = min(self.disk_limit, ceiling)
        self._looked_at = time.monotonic()

    def reserve(self, size: int, committed: int, shrink: Callable[[int], int]) -> None:
        """Promise `size` bytes to a write, evicting (`shrink` to a byte target) as needed."""
        if self.reserved + size > self.limit:  # writes in progress alone fill the store
            raise self.full(size, committed)
        committed = shrink(self.limit - self.reserved - size)
        if committed + self.reserved + size > self.limit:
            raise self.full(size, committed)
        self.reserved += size

    def release(self, size: int) -> None:
        """Return the bytes of a write that ended (renamed into place or removed)."""
        self.reserved -= size

    def free_now(self, committed: int) -> int:
        """Return the free bytes now: the last look, moved by the store's own bytes since."""
        return max(0, self.free_bytes + self._held_at_look - committed - self.reserved)

    def full(self, size: int, committed: int) -> StoreFull:
        """Return the error of `size` bytes that do not fit, naming the disk if it is the limit."""
        if self.disk_limit < self.capacity:
            return StoreFull(size, self.limit, self.disk_full(committed, size))
        return StoreFull(size, self.capacity)

    def report(self, m: NodeMetrics, committed: int, blocks: int) -> None:
        """Set the store's gauges: bytes and blocks held, capacities, free space, floor."""
        m.store_bytes.set(committed)
        m.store_blocks.set(blocks)
        m.capacity_bytes.set(self.capacity)
        m.effective_capacity.set(self.limit)
        m.disk_free.set(self.free_now(committed))
        m.disk_floor.set(self.floor_bytes)

    def disk_full(self, committed: int, needed: int) -> str:
        """Return why `needed` more bytes do not fit on the disk: path, free bytes and floor."""
        return (f"disk full at {self.path}: {self.free_now(committed)} bytes free, floor "
                f"{self.floor_bytes}: no room for {needed} more bytes above the floor")
