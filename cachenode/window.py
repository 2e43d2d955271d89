"""What a response sends, block by block: the chunk kinds and the read-ahead window.

A response keeps the block it sends next and up to `ReadAhead.blocks` more in flight
(cachenode/readahead.py says how many); a block that will be held in memory (it comes from
another node) first takes its bytes from the memory budget, read-ahead only on free budget.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from cachenode.blocks import BlockRef, BlockSlice
from cachenode.budget import MemoryBudget, TenantBudget
from cachenode.errors import DiskUnavailable
from cachenode.filling import LiveBlock
from cachenode.qos import Charge
from cachenode.readahead import ReadAhead
from cachenode.routing import Fetched
from cachenode.store.files import OpenBlock

Got = OpenBlock | Fetched | LiveBlock  # a block as routing returns it


@dataclass(slots=True)
class FileChunk:
    """A span of an open block file to send; the receiver closes it."""

    block: OpenBlock
    offset: int
    length: int

    def close(self) -> None:
        """Close the block's file."""
        self.block.close()


@dataclass(slots=True)
class MemChunk:
    """Bytes held in memory to send, and where they came from ("origin" or "peer")."""

    data: memoryview
    source: str
    crc32c: int | None = None  # of `data`, when already known


@dataclass(slots=True)
class LiveChunk:
    """A span of a block being filled here, sent as its bytes land; the receiver closes it."""

    live: LiveBlock
    offset: int
    length: int

    def close(self) -> None:
        """Stop waiting for the fill (the last reader to leave lets it be cancelled)."""
        self.live.close()


Chunk = FileChunk | MemChunk | LiveChunk


@dataclass(slots=True)
class _Ahead:
    """A block of a response being read, and the budget bytes it holds."""

    slice: BlockSlice
    fut: asyncio.Future[Got]
    held: int


class Window:
    """The blocks of one response in flight, in order, under the budget and the depth."""

    def __init__(self, todo: Iterator[BlockSlice], read: Callable[[BlockRef, Charge],
                 Awaitable[Got]], held: Callable[[BlockRef], int],
                 budget: MemoryBudget | TenantBudget, depth: ReadAhead,
                 charges: tuple[Charge, Charge], start: int,
                 queued: Callable[[BlockRef], bool] = lambda ref: False) -> None:
        """Read `todo` with `read`; `held(ref)` is what a block holds in memory; a block
        from `start` on is charged charges[0], the rest charges[1]; a wait for a block
        whose fill is `queued` (its GET not started) does not deepen the read-ahead."""
        self._todo, self._read, self._held = todo, read, held
        self._next: BlockSlice | None = next(todo, None)
        self._pending: deque[_Ahead] = deque()
        self._budget, self.depth = budget, depth
        self._charges, self._start = charges, start
        self._queued = queued

    async def head(self) -> _Ahead | None:
        """Start the blocks the depth and budget allow; return the next to send (None: done)."""
        while self._next is not None and len(self._pending) <= self.depth.blocks:
            s = self._next
            need = self._held(s.ref)
            if need and not self._budget.try_take(need):
                if self._pending:
                    break  # read ahead only on free budget; retry after a send
                await self._budget.take(need)  # the block to send next may wait
            charge = self._charges[0] if s.ref.start <= self._start else self._charges[1]
            self._pending.append(_Ahead(s, asyncio.ensure_future(self._read(s.ref, charge)),
                                        need))
            self._next = next(self._todo, None)
        return self._pending[0] if self._pending else None

    async def take(self, ahead: _Ahead) -> Chunk:
        """Wait for the block to send next and return its span (the depth learns from it)."""
        fut = ahead.fut  # stays pending (closed by close()) until its result is ours
        if not fut.done():
            # The whole depth was in flight and the block's GET is under way: go deeper. Not
            # if it queues (for the tenant's budget, a fill slot, the node's GETs): more
            # read-ahead would only lengthen the queue and spend budget on blocks ahead.
            if len(self._pending) > self.depth.blocks and not self._queued(ahead.slice.ref):
                self.depth.waited()
        elif not fut.cancelled() and fut.exception() is None and _whole(fut.result()):
            self.depth.ready()
        got = await fut
        self._pending.popleft()
        if isinstance(got, OpenBlock):
            self._budget.give(ahead.held)  # sent from its file after all
            ahead.held = 0
        return to_chunk(ahead.slice, got)

    def sent(self, ahead: _Ahead) -> None:
        """Give back what a block held once it has been sent (or the response ended)."""
        self._budget.give(ahead.held)
        ahead.held = 0

    def close(self) -> None:
        """Cancel the read-aheads that will not be sent, closing what they hold."""
        for a in self._pending:
            _discard(a.fut)
            self._budget.give(a.held)
        self._pending.clear()


def _whole(got: Got) -> bool:
    """Return whether a block read ahead was all there by the time it was wanted."""
    return not isinstance(got, LiveBlock) or got.fill.complete


def to_chunk(s: BlockSlice, got: Got) -> Chunk:
    """Return the part of a block that a slice asks for, as a file span, a fill or bytes."""
    if isinstance(got, OpenBlock):
        return FileChunk(got, s.offset, s.length)
    if isinstance(got, LiveBlock):
        return LiveChunk(got, s.offset, s.length)
    whole = s.offset == 0 and s.length == len(got.data)
    return MemChunk(memoryview(got.data)[s.offset:s.offset + s.length], got.source,
                    got.crc32c if whole else None)


async def settle_chunk(chunk: Chunk) -> FileChunk | MemChunk:
    """Return a chunk whose bytes are all there: a LiveChunk once its fill has landed."""
    if not isinstance(chunk, LiveChunk):
        return chunk
    try:
        fill = chunk.live.fill
        await fill.wait(fill.length)
        buf = fill.buffer
        if buf is not None:  # its write is still under way: a copy of the span, not a view
            # (a view would keep the whole block alive for as long as the reader takes)
            data = bytes(memoryview(buf)[chunk.offset:chunk.offset + chunk.length])
            return MemChunk(memoryview(data), "origin")
        ob = fill.open_file()
        if ob is None:
            raise DiskUnavailable("a block left the store as it was read")
        return FileChunk(ob, chunk.offset, chunk.length)
    finally:
        chunk.close()


def _discard(fut: asyncio.Future[Got]) -> None:
    """Cancel a read-ahead that will not be sent, closing any file or fill it holds."""

    def close(f: asyncio.Future[Got]) -> None:
        if f.cancelled() or f.exception() is not None:
            return
        got = f.result()
        if isinstance(got, (OpenBlock, LiveBlock)):
            got.close()

    fut.cancel()
    fut.add_done_callback(close)
