"""A block being filled here: one buffer its origin GET lands in, read while it lands.

Cut-through: readers of a block being filled send its bytes as they arrive, not after the
whole block. The origin body is read straight into one buffer of the block's size; readers
wait for the bytes past their position and send them from that buffer. Once the block is on
disk the Filler lets the buffer go (`stored`) and readers still behind go on from the file.
So a reader that keeps up sends while the block arrives, and one that falls behind holds a
position, never the buffer: it neither pins memory nor slows the fill or the other readers.
If the fill fails, every reader gets its error (a response whose headers are out is cut).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from cachenode.store.files import OpenBlock

Buffer = bytes | bytearray


class Fill:
    """The bytes of one block as they land, for the readers that wait on them."""

    def __init__(self, length: int, open_file: Callable[[], OpenBlock | None]) -> None:
        self.length = length
        self.received = 0  # bytes of the buffer that hold the block's bytes, from 0
        self.buffer: Buffer | None = None  # allocated when the GET starts; None once stored
        self.error: BaseException | None = None
        self.stored = False  # on disk: the rest is read from the file (`open_file`)
        self._open_file = open_file
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (bytes wanted, waiter)

    def target(self) -> memoryview:
        """Return the buffer to land the bytes in (allocated now: a fill that queued costs
        nothing until its GET starts)."""
        if self.buffer is None:
            self.buffer = bytearray(self.length)
        assert isinstance(self.buffer, bytearray), "the buffer of a complete fill"
        return memoryview(self.buffer)

    @property
    def complete(self) -> bool:
        """Return whether every byte has landed (or the block is stored)."""
        return self.stored or self.received == self.length

    def landed(self, upto: int) -> None:
        """Note that bytes [0, upto) are in the buffer; wake the readers they satisfy."""
        self.received = upto
        self._wake()

    def give(self, data: Buffer) -> None:
        """Take a whole block that came from elsewhere (a previous owner's disk)."""
        self.buffer = data
        self.landed(len(data))

    def fail(self, error: BaseException) -> None:
        """End the fill with `error`: every reader waiting now or later raises it."""
        if self.error is None and not self.complete:
            self.error = error
            self._wake()

    def on_disk(self) -> None:
        """Let the buffer go: the block is on disk, readers go on from its file."""
        self.stored, self.buffer, self.received = True, None, self.length
        self._wake()

    def open_file(self) -> OpenBlock | None:
        """Return the stored block's file (the caller closes it), or None if gone already."""
        return self._open_file() if self.stored else None

    async def wait(self, want: int) -> int:
        """Return the bytes landed once at least min(want, length) have; raise the fill's error."""
        want = min(want, self.length)
        while self.received < want and self.error is None:
            fut = asyncio.get_running_loop().create_future()
            entry = (want, fut)
            self._waiters.append(entry)
            try:
                await fut
            finally:
                if not fut.done():
                    self._waiters.remove(entry)
        if self.received < want:
            assert self.error is not None
            raise self.error
        return self.received

    def _wake(self) -> None:
        keep = []
        for want, fut in self._waiters:
            if self.received >= want or self.error is not None:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((want, fut))
        self._waiters = keep


@dataclass(slots=True)
class LiveBlock:
    """A block being filled here, read as it lands; close it once sent (it leaves the fill)."""

    fill: Fill
    leave: Callable[[], None]

    def close(self) -> None:
        """Stop waiting for the fill (the last reader to leave lets it be cancelled)."""
        self.leave()
