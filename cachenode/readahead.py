"""How many blocks a sequential read keeps in flight beyond the one it sends next (pure).

The rule: start at the floor (`--readahead`); each time the block to send next has not even
started to arrive although the whole depth was in flight (the reader outruns the blocks in
flight: on a high-latency link the GETs spend their time waiting for a first byte), double
the depth (not when that block's fill has not started its GET: it queues for its tenant's
budget, a fill slot or the node's GETs, and more read-ahead would only lengthen the queue),
up to the ceiling (`--readahead-max`); each time the block to send next was already whole
when it was wanted (the reader is the slow side), step back by one, not below the floor.
A block that has started but not finished means the link itself is the limit: more GETs
would not make it faster, so the depth stays. A floor of 0 turns read-ahead off.

Memory stays bounded whatever the depth: a block filled here lands in one of the node's fill
buffers (at most 2 x --max-concurrent-fills of them, all responses together) and is sent
from its file once written; a block from another node takes the memory budget, read-ahead
only when it is free. The client (client/client.py) keeps its window by the same rule, each
block in flight holding at most one block of memory.
"""

from __future__ import annotations


class ReadAhead:
    """The read-ahead depth of one sequential read, adapted to whether it waits."""

    def __init__(self, floor: int, ceiling: int) -> None:
        self.floor, self.ceiling = floor, max(floor, ceiling) if floor else 0
        self.blocks = floor  # blocks in flight beyond the one sent next

    def waited(self) -> None:
        """Note the reader had to wait for a block not yet started: go deeper."""
        self.blocks = min(self.ceiling, max(1, 2 * self.blocks)) if self.floor else 0

    def ready(self) -> None:
        """Note the block wanted next was already whole: the reader is the slow side."""
        self.blocks = max(self.floor, self.blocks - 1)
