"""Blocks of open files held in memory under one budget, each fetched once from the group.

The kernel asks for at most 1 MiB at a time; a block is 4 MiB, so each fetched block is kept
for the reads that follow (and for other processes reading the same file). Every block in
memory or on its way counts against `budget` bytes (--memory). A block is *spent* once as many
bytes were read from it as it holds: the page cache has them now, so it is let go at once
(its memory is reused by the next fetch, warm: fresh memory would cost a page fault per 4 KiB).
A read that needs a block (demand) evicts arrived blocks, least recently used first: ones
already read from, then read-ahead nobody read yet; and waits for fetches in flight when
nothing can go. Read-ahead only takes room that is free, and leaves `reserve` bytes to demand
reads: it never pushes out a block a reader is still in, and never holds one up long.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from client.errors import ClientError
from client.mount.namespace import FileVersion
from client.mount.stats import Stats

Fetch = Callable[[FileVersion, int], Awaitable[bytes]]


class Closed(ClientError):
    """The mount is going away: reads still waiting are answered with EIO."""


@dataclass(slots=True)
class _Entry:
    task: asyncio.Task[bytes]
    size: int
    prefetched: bool
    read: bool = False
    served: int = 0  # bytes read from it, by anyone

    def spent(self) -> bool:
        return self.task.done() and self.served >= self.size

    def touched(self) -> bool:
        return self.task.done() and self.read

    def arrived(self) -> bool:
        return self.task.done()


class Blocks:
    """The mount's blocks in memory, by (inode, block index), least recently used first."""

    def __init__(self, fetch: Fetch, block_size: int, budget: int, stats: Stats) -> None:
        if budget < 2 * block_size:
            raise ClientError(f"--memory must hold at least 2 blocks ({2 * block_size} bytes)")
        self._fetch, self.block_size, self.budget, self._stats = fetch, block_size, budget, stats
        self.reserve = max(block_size, min(budget // 4, 8 * block_size))
        self._entries: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        self.used = 0  # bytes of every entry, arrived or in flight
        self._closed = False
        stats.memory_budget_bytes = budget

    async def read(self, v: FileVersion, off: int, size: int, ahead: int = 0
                   ) -> bytes | memoryview:
        """Return bytes [off, off+size) of `v` (fewer at its end; a view into the block when
        one block holds them all); start fetching `ahead` blocks after the last one."""
        end = min(v.size, off + size)
        if off >= end:
            return b""
        bs = self.block_size
        first, last = off // bs, (end - 1) // bs
        entries, hit = [], True
        for i in range(first, last + 1):
            e, new = await self._demand(v, i)
            entries.append(e)
            hit = hit and not new and e.task.done()
        for i in range(last + 1, min(last + ahead, (v.size - 1) // bs) + 1):
            self._prefetch(v, i)
        parts = [await self._wait(e) for e in entries]
        for i, e in zip(range(first, last + 1), entries, strict=True):
            e.served += min(end, (i + 1) * bs) - max(off, i * bs)
            if e.spent():  # the page cache has it all now: its memory is reused at once
                self._drop((v.ino, i), e)
        self._stats.memory_hits += hit
        if len(parts) == 1:  # no copy: FUSE copies it into the kernel's page cache
            return memoryview(parts[0])[off - first * bs:end - first * bs]
        return b"".join(memoryview(p)[max(off, i * bs) - i * bs:min(end, (i + 1) * bs) - i * bs]
                        for i, p in zip(range(first, last + 1), parts, strict=True))

    async def close(self) -> None:
        """Cancel every fetch in flight and let go of every block."""
        self._closed = True
        tasks = [e.task for e in self._entries.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
        self.used = 0

    async def _demand(self, v: FileVersion, i: int) -> tuple[_Entry, bool]:
        """Return the entry of block i (starting its fetch if needed) and whether it is new."""
        while True:
            if self._closed:
                raise Closed("unmounting")
            e = self._entries.get((v.ino, i))
            if e is not None:
                self._entries.move_to_end((v.ino, i))
                if e.prefetched and not e.read:
                    self._stats.readahead_used += 1
                e.read = True
                return e, False
            need = self._size(v, i)
            if self._make_room(need, (_Entry.spent, _Entry.touched, _Entry.arrived)):
                return self._start(v, i, need, prefetched=False), True
            flying = [x.task for x in self._entries.values() if not x.task.done()]
            if not flying:  # cannot happen with a budget of 2 blocks or more
                raise ClientError(f"no room for a block in --memory {self.budget}")
            await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)

    def _prefetch(self, v: FileVersion, i: int) -> None:
        if (v.ino, i) in self._entries or self._closed:
            return
        need = self._size(v, i)
        if not self._make_room(need + self.reserve, (_Entry.spent,)):
            self._stats.readahead_skipped += 1
            return
        self._stats.readahead_started += 1
        self._start(v, i, need, prefetched=True)

    def _make_room(self, need: int, tiers: tuple[Callable[[_Entry], bool], ...]) -> bool:
        """Evict blocks, least recently used first, tier by tier, until `need` more bytes
        fit; return whether they do."""
        for evictable in tiers:
            if self.used + need <= self.budget:
                return True
            for k, e in list(self._entries.items()):
                if evictable(e):
                    self._drop(k, e)
                    if self.used + need <= self.budget:
                        return True
        return self.used + need <= self.budget

    def _start(self, v: FileVersion, i: int, size: int, prefetched: bool) -> _Entry:
        task = asyncio.ensure_future(self._fetch(v, i))
        e = _Entry(task, size, prefetched, read=not prefetched)
        self._entries[(v.ino, i)] = e
        self.used += size
        self._stats.memory_bytes = self.used
        self._stats.memory_peak_bytes = max(self._stats.memory_peak_bytes, self.used)
        task.add_done_callback(lambda t: self._done((v.ino, i), e))
        return e

    def _done(self, k: tuple[int, int], e: _Entry) -> None:
        if e.task.cancelled() or e.task.exception() is not None:
            self._drop(k, e)  # errors are never kept: the next read tries again

    def _drop(self, k: tuple[int, int], e: _Entry) -> None:
        if self._entries.get(k) is e:
            del self._entries[k]
            self.used -= e.size
            self._stats.memory_bytes = self.used
            if e.prefetched and not e.read and e.task.done() and not e.task.cancelled() \
                    and e.task.exception() is None:
                self._stats.readahead_unused += 1

    async def _wait(self, e: _Entry) -> bytes:
        try:
            return await asyncio.shield(e.task)
        except asyncio.CancelledError:
            if e.task.cancelled() and self._closed:
                raise Closed("unmounting") from None
            raise

    def _size(self, v: FileVersion, i: int) -> int:
        return min(self.block_size, v.size - i * self.block_size)
