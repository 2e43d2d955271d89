"""Pure: tell a sequential reader from a random one, and how many blocks to fetch ahead of it.

Each open file has a `Stream`. A read that starts within `slack` bytes of where the previous
one ended continues the run (the kernel's own read-ahead sends several requests at once, so
they may arrive a little out of order); any other read starts a new run. Once a run is longer
than the kernel's own read-ahead plus a block (one page fault of an mmap reader already reads
`slack` bytes around it in one go) the reader is sequential: it gets `first` blocks of
read-ahead, doubled each time it enters a new block, up to `most`. A random reader (a
safetensors header, then a few tensors) never gets any: it fetches only the blocks it touches.
"""

from __future__ import annotations


class Stream:
    """One open file's read pattern."""

    def __init__(self, block_size: int, most: int, first: int = 2, slack: int = 4 * 2**20
                 ) -> None:
        self.block_size, self.most, self.first, self.slack = block_size, most, first, slack
        self.start = self.end = -1  # the current run: bytes [start, end)
        self.block = -1  # the last block the run entered
        self.ahead = 0  # blocks of read-ahead the run has now

    def advance(self, off: int, size: int) -> int:
        """Note a read of [off, off+size); return how many blocks after its last block to
        fetch ahead (0 for a random reader)."""
        if self.end >= 0 and abs(off - self.end) <= self.slack:
            self.start, self.end = min(self.start, off), max(self.end, off + size)
        else:
            self.start, self.end, self.block, self.ahead = off, off + size, -1, 0
        if self.most <= 0 or self.end - self.start <= self.slack + self.block_size:
            return 0
        last = (off + size - 1) // self.block_size
        if last > self.block:
            self.block = last
            self.ahead = min(self.most, max(self.first, 2 * self.ahead))
        return self.ahead
