"""MemoryBudget: bytes held by responses, bounded waits, no leak on cancellation."""

from __future__ import annotations

import asyncio

import pytest

from cachenode.budget import MemoryBudget
from cachenode.errors import Overloaded


@pytest.mark.asyncio
async def test_take_waits_for_give_in_order() -> None:
    b = MemoryBudget(10, wait_s=5)
    assert b.try_take(6) and not b.try_take(6)
    first = asyncio.create_task(b.take(6))
    second = asyncio.create_task(b.take(2))
    await asyncio.sleep(0)
    assert not first.done() and not second.done()  # FIFO: the small one does not jump ahead
    assert not b.try_take(1)  # nor does a try while others wait
    b.give(6)
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    assert b.used == 8


@pytest.mark.asyncio
async def test_a_wait_that_times_out_is_overloaded_and_holds_nothing() -> None:
    b = MemoryBudget(4, wait_s=0.05)
    assert b.try_take(4)
    with pytest.raises(Overloaded, match="memory budget of 4 bytes"):
        await b.take(1)
    b.give(4)
    assert b.used == 0 and b.try_take(4)


@pytest.mark.asyncio
async def test_cancelled_waiter_granted_as_it_left_gives_back() -> None:
    b = MemoryBudget(4, wait_s=5)
    assert b.try_take(4)
    waiter = asyncio.create_task(b.take(4))
    await asyncio.sleep(0)
    b.give(4)  # granted to the waiter...
    waiter.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert b.used == 0


@pytest.mark.asyncio
async def test_oversized_request_goes_through_alone() -> None:
    b = MemoryBudget(4, wait_s=5)
    await b.take(9)  # more than the budget: alone, it passes
    late = asyncio.create_task(b.take(1))
    await asyncio.sleep(0)
    assert not late.done()
    b.give(9)
    await asyncio.wait_for(late, 1)
    assert b.used == 1


@pytest.mark.asyncio
async def test_a_waiter_cancelled_after_its_entry_was_dropped_leaves_quietly() -> None:
    b = MemoryBudget(4, wait_s=5)
    assert b.try_take(4)
    waiter = asyncio.create_task(b.take(4))
    await asyncio.sleep(0)
    waiter.cancel()  # its future is cancelled now; the task resumes a step later...
    b.give(4)  # ...after _wake has dropped the cancelled entry
    with pytest.raises(asyncio.CancelledError):
        await waiter  # not ValueError from removing the entry twice
    assert b.used == 0 and not b._waiters


@pytest.mark.asyncio
async def test_a_tenants_part_waits_on_its_own_cap_holding_nothing_of_the_nodes() -> None:
    from cachenode.budget import TenantBudget

    node = MemoryBudget(10, wait_s=5)
    b = TenantBudget(MemoryBudget(4, wait_s=0.05), node)
    assert b.try_take(3) and not b.try_take(3)  # over its cap, though the node has room
    assert node.used == 3
    with pytest.raises(Overloaded):
        await b.take(3)  # waited on its own cap only
    assert node.used == 3 and node.try_take(7)  # the rest of the node stays for the others
    assert not b.try_take(1)  # the node is full now
    node.give(7)
    b.give(3)
    await b.take(4)
    assert node.used == 4
    b.give(4)
    assert node.used == 0
