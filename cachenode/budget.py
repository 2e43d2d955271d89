"""One node-wide budget for block bytes that responses hold in memory.

A response holds a block in memory when the block comes from another node (or from an
origin fill that could not be stored): it is sent from a buffer, not from a file. Each such
block is taken from this budget before it is read and given back once it has been sent, so
however many readers stall, they hold at most the budget. Blocks this node stores are sent
from their files and take nothing. Read-ahead only takes what is free (`try_take`); only the
block a response must send next waits for budget (`take`), so responses never deadlock
holding read-ahead while waiting for their next block.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from cachenode.errors import Overloaded

TENANT_SHARE = 0.25  # of the budget: the most one tenant with an origin budget holds


class MemoryBudget:
    """Bytes that may be held at once; waiters served in order, each wait bounded."""

    def __init__(self, total_bytes: int, wait_s: float) -> None:
        self.total, self._wait_s = total_bytes, wait_s
        self.used = 0  # guarded by the loop
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_take(self, n: int) -> bool:
        """Take `n` bytes if they are free now and nobody waits; return whether taken."""
        if self._waiters or not self._fits(n):
            return False
        self.used += n
        return True

    def _fits(self, n: int) -> bool:
        # One request larger than the whole budget goes through alone, never forever stuck.
        return self.used + n <= self.total or self.used == 0

    async def take(self, n: int) -> None:
        """Take `n` bytes, waiting up to the budget's wait; Overloaded if they stay taken."""
        if self.try_take(n):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self._wait_s):
                await fut
        except BaseException as e:
            if fut.done() and not fut.cancelled():
                self.give(n)  # granted just as we left
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(entry)
                self._wake()  # a smaller request behind us may fit now
            if isinstance(e, TimeoutError):
                raise Overloaded(f"memory budget of {self.total} bytes for blocks held by "
                                 f"responses stayed taken for {self._wait_s:g}s (readers "
                                 "not reading?)") from None
            raise

    def give(self, n: int) -> None:
        """Give back `n` bytes taken earlier, and grant waiters that fit now."""
        self.used -= n
        assert self.used >= 0, "gave back more than was taken"
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, fut = self._waiters.popleft()
            if not fut.done():
                self.used += n
                fut.set_result(None)


class TenantBudget:
    """A tenant's part of the node's budget: its own cap first, then the node's.

    For tenants with an origin budget, whose blocks from other nodes may wait there for it:
    their waits then hold at most TENANT_SHARE of the node's memory budget, never all of it.
    """

    def __init__(self, own: MemoryBudget, node: MemoryBudget) -> None:
        self._own, self._node = own, node

    def try_take(self, n: int) -> bool:
        """Take `n` bytes if both budgets have them free now; return whether taken."""
        if not self._own.try_take(n):
            return False
        if self._node.try_take(n):
            return True
        self._own.give(n)
        return False

    async def take(self, n: int) -> None:
        """Take `n` bytes, waiting on the tenant's cap first (holding nothing of the node's)."""
        await self._own.take(n)
        try:
            await self._node.take(n)
        except BaseException:
            self._own.give(n)
            raise

    def give(self, n: int) -> None:
        """Give back `n` bytes taken earlier."""
        self._node.give(n)
        self._own.give(n)
