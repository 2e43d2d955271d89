"""Block reads: local hit, else one shared, bounded, timed fill from the origin.

A fill streams: its origin body lands in one buffer (cachenode/filling.py) that its readers
send from as the bytes arrive (cut-through), then the block is written behind them and they
finish from its file.

A fill is charged to the tenant whose read or warmup started it (`Charge`): it takes that
tenant's origin budget first (cachenode/qos.py), then a node-wide slot, and its block is
stored as that tenant's, warmed or read-through (cachenode/store/quota.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeAlias

from cachenode.blocks import BlockRef
from cachenode.checksum import crc32c
from cachenode.config import NodeConfig
from cachenode.errors import (
    CacheError,
    DiskUnavailable,
    OriginTimeout,
    OriginUnavailable,
    Overloaded,
    TenantThrottled,
)
from cachenode.filling import Fill, LiveBlock
from cachenode.metrics import NodeMetrics
from cachenode.ports import BlockStore, Origin
from cachenode.qos import NOBODY, Charge, TenantGate, Ticket
from cachenode.singleflight import ABANDON_GRACE_S, FlightCancelled, SingleFlight
from cachenode.store.files import OpenBlock

log = logging.getLogger(__name__)
# A block's write behind the response; its result is the error that kept it off disk, if any.
Write: TypeAlias = "asyncio.Task[CacheError | None]"


class Filler:
    """Return a block from disk, or fill it from the origin exactly once per miss."""

    def __init__(self, config: NodeConfig, origin: Origin, store: BlockStore,
                 metrics: NodeMetrics, gate: TenantGate | None = None) -> None:
        self._config, self._origin, self._store, self._metrics = config, origin, store, metrics
        self.gate = gate  # tenants' origin budgets (None: nobody has one)
        self.block_size = config.block_size_bytes
        # One fill per missing block, shared by its readers; its result is the block's write
        # (None: found on disk already). Cancelled once nobody waits for it: a reader that
        # left takes its origin GET along.
        self._flight: SingleFlight[Write | None] = SingleFlight(
            cancel_abandoned=True, grace_s=ABANDON_GRACE_S)
        self._limit = asyncio.Semaphore(config.max_concurrent_fills)  # origin GETs in flight
        # A fill holds a slot from before its GET until its block is on disk, so fill
        # buffers (fetched or landing, not yet written) stay bounded.
        self._slots = asyncio.Semaphore(2 * config.max_concurrent_fills)
        # Blocks being filled or written: id -> its Fill, from the fill's start until the
        # block is on disk or the fill failed; guarded by the loop.
        self._fills: dict[str, Fill] = {}
        self._writing: dict[str, Write] = {}  # id -> its write behind the readers
        self._writes: set[Write] = set()
        # Asked before the origin on a miss: the block from a previous owner, or None.
        self.handoff: Callable[[BlockRef], Awaitable[bytes | None]] | None = None
        # Called once, as the first origin GET starts (its Unix time), then set to None.
        self.first_fill: Callable[[float], None] | None = None

    async def close(self) -> None:
        """Cancel the fills in flight and let the blocks already fetched reach the disk."""
        await self._flight.close()
        await self.flush()

    async def flush(self) -> None:
        """Wait until every block fetched so far is written (or failed to be)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def cannot_store(self) -> bool:
        """Return whether the store is out of rotation (fills are served from memory)."""
        return self._store.failed is not None

    def has(self, ref: BlockRef) -> bool:
        """Return whether the block is stored here (an index lookup, no I/O)."""
        return self._store.has(ref.block_id, ref.length)

    async def open_stored(self, ref: BlockRef) -> OpenBlock | None:
        """Return the block's file if it is on disk now and passes its checksum, else None."""
        return await self._store.open_checked(ref.block_id, ref.length)

    async def settled(self, ref: BlockRef) -> bool:
        """Wait until a block fetched a moment ago is written; return whether it was stored."""
        write = self._writing.get(ref.block_id)
        if write is None:
            return self._store.has(ref.block_id, ref.length)
        return await asyncio.shield(write) is None  # a caller that leaves lets it run

    def open_written(self, ref: BlockRef) -> OpenBlock | None:
        """Return the file of a block this node wrote just now from the bytes it fetched.

        Not checked again: its pages are still the ones written. Older blocks go through
        `open_stored`, which checks them.
        """
        ob = self._store.open_block(ref.block_id, ref.length)
        if ob is not None:
            ob.source = "origin"
        return ob

    async def read_stored_bytes(self, ref: BlockRef) -> bytes | None:
        """Return a stored block's checked bytes, or None if absent (or corrupt: dropped)."""
        got = await self.read_stored_checked(ref)
        return None if got is None else got[0]

    async def read_stored_checked(self, ref: BlockRef) -> tuple[bytes, int] | None:
        """Return a stored block's bytes and crc32 once checked, or None (corrupt: dropped)."""
        ob = self._store.open_block(ref.block_id, ref.length)
        if ob is None:
            return None
        crc = ob.crc32c
        data = await self._read_checked(ob)
        if data is None:
            self._store.delete(ref.block_id)
            return None
        return data, crc

    async def read_live(self, ref: BlockRef, charge: Charge = NOBODY) -> OpenBlock | LiveBlock:
        """Return the block's file (a hit) or its fill, read as it lands; the caller closes it.

        A fill is returned once its first bytes are in (or it raised), so its errors come
        before a reader has sent any of its bytes.
        """
        ob = await self._store.open_checked(ref.block_id, ref.length)
        if ob is not None:
            self._metrics.hits.inc()
            return ob
        self._metrics.misses.inc()
        return self.landed(ref) or (await self._join(ref, charge))[0]

    async def read_block(self, ref: BlockRef, charge: Charge = NOBODY) -> OpenBlock | bytes:
        """Return the block as an open file (caller closes it) or, just filled, as bytes."""
        got = await self.read_live(ref, charge)
        return got if isinstance(got, OpenBlock) else await self.settle(got)

    async def settle(self, live: LiveBlock) -> OpenBlock | bytes:
        """Return a fill's whole block, as bytes or (stored by then) its file; close `live`."""
        try:
            fill = live.fill
            await fill.wait(fill.length)
            if fill.buffer is not None:
                return bytes(fill.buffer)
            ob = fill.open_file()  # stored meanwhile: send the file, hold no bytes
            if ob is None:
                raise DiskUnavailable("a block left the store as it was read")
            return ob
        finally:
            live.close()

    def landed(self, ref: BlockRef) -> LiveBlock | None:
        """Return a block fetched a moment ago whose write is still under way, or None."""
        fill = self._fills.get(ref.block_id)
        if fill is None or ref.block_id not in self._writing or fill.length != ref.length:
            return None
        self._metrics.fills_deduped.inc()
        return LiveBlock(fill, _stay)

    async def _join(self, ref: BlockRef, charge: Charge
                    ) -> tuple[LiveBlock, asyncio.Task[Write | None]]:
        """Join or start the one fill of a missing block; return it once its first bytes
        landed, with its flight.

        A fill refused for another tenant's budget (the one that started it) is started
        again, charged to this caller.
        """
        try:
            try:
                return await self._joined(ref, charge)
            except TenantThrottled as e:
                if e.tenant == charge.tenant:
                    raise
                return await self._joined(ref, charge)
        finally:
            self._metrics.fills_in_flight.set(len(self._flight))

    async def _joined(self, ref: BlockRef, charge: Charge
                      ) -> tuple[LiveBlock, asyncio.Task[Write | None]]:
        bid = ref.block_id
        if not self._flight.running(bid) and len(self._flight) >= self._config.max_waiting_fills:
            raise Overloaded(f"{len(self._flight)} block fills already queued")
        task, shared, leave = self._flight.join(bid, lambda: self._start(ref, charge))
        fill = self._fills[bid]
        if shared:
            self._metrics.fills_deduped.inc()
        else:
            task.add_done_callback(functools.partial(self._ended, bid, fill))
        try:
            await fill.wait(1)  # its first bytes, or its error
        except CacheError:
            leave()
            await asyncio.wait([task])  # the flight ends with this error: gone before a retry
            raise
        except BaseException:
            leave()
            raise
        return LiveBlock(fill, leave), task

    def _start(self, ref: BlockRef, charge: Charge) -> Coroutine[Any, Any, Write | None]:
        """Return the fill of a missing block, its Fill registered for readers to join."""
        fill = Fill(ref.length, lambda: self.open_written(ref))
        self._fills[ref.block_id] = fill
        return self._fill(ref, charge, fill)

    def _ended(self, bid: str, fill: Fill, task: asyncio.Task[Write | None]) -> None:
        """Count a fill that ended; forget it if it failed (its readers get the error)."""
        self._metrics.fills_in_flight.set(len(self._flight))
        err = FlightCancelled(bid) if task.cancelled() else task.exception()
        if err is not None:
            fill.fail(err)
            if self._fills.get(bid) is fill:
                del self._fills[bid]

    async def warm(self, ref: BlockRef, charge: Charge = NOBODY) -> bool:
        """Return once the block is on disk: False if it already was, True if stored now.

        A missing block is filled as a read miss is (same single flight, limiter, timeout
        and handoff), then this waits for its write behind. Either way the block ends up
        warmed for `charge.tenant` unless another tenant warmed it first. Raises the fill's
        error, or the store's (StoreFull, DiskUnavailable) when the block could not be kept.
        """
        if self._store.has(ref.block_id, ref.length):
            self._store.claim_warmed(ref.block_id, charge.tenant)
            return False
        if self._store.failed:  # no origin GET for a block that cannot be kept
            raise DiskUnavailable(self._store.failed)
        write = self._writing.get(ref.block_id)
        if self.landed(ref) is None:
            live, task = await self._join(ref, replace(charge, warmed=True))
            try:
                write = await asyncio.shield(task)
            finally:
                live.close()
        if write is not None:
            err = await asyncio.shield(write)  # a cancelled caller leaves the write running
            if err is not None:
                raise err
        self._store.claim_warmed(ref.block_id, charge.tenant)  # a read's fill it joined
        return True

    async def check_stored(self, ref: BlockRef) -> bool | None:
        """Return True if the block is stored and passes its checksum, None if not stored,
        False if it was stored but corrupt or short (it is dropped)."""
        if not self._store.has(ref.block_id, ref.length):
            return None
        ob = await self._store.open_checked(ref.block_id, ref.length)  # a bad one is dropped
        if ob is None:
            return False
        ob.close()
        return True

    async def read_block_bytes(self, ref: BlockRef, charge: Charge = NOBODY) -> bytes:
        """Return the whole block as bytes, checking the checksum of a disk hit."""
        got = await self.read_block(ref, charge)
        if isinstance(got, bytes):
            return got
        data = await self._read_checked(got)
        if data is None:
            self._store.delete(ref.block_id)
            return await self.read_block_bytes(ref, charge)  # now a miss: refilled from origin
        return data

    async def _read_checked(self, ob: OpenBlock) -> bytes | None:
        """Return a stored block's bytes, or None if they fail the recorded checksum."""
        try:
            data = await asyncio.get_running_loop().run_in_executor(
                None, os.pread, ob.fd, ob.size, 0)
        finally:
            ob.close()
        if len(data) == ob.size and crc32c(data) == ob.crc32c:
            return data
        log.warning("block %s failed its checksum; dropping it", ob.block_id)
        self._metrics.corrupt_blocks.inc()
        return None

    async def _fill(self, ref: BlockRef, charge: Charge, fill: Fill) -> Write | None:
        """Fill a missing block into `fill` and start its write; fail `fill` on any error."""
        try:
            ob = await self._store.open_checked(ref.block_id, ref.length)
            if ob is not None:  # filled while we queued
                ob.close()
                fill.on_disk()
                if self._fills.get(ref.block_id) is fill:  # no write behind will forget it
                    del self._fills[ref.block_id]
                return None
            self._metrics.fills_in_flight.set(len(self._flight))
            try:
                async with asyncio.timeout(self._config.fill_timeout_s):  # queueing included
                    await self._gated_fetch(ref, charge, fill)
            except TimeoutError:
                raise OriginTimeout(ref.obj.bucket, ref.obj.key,
                                    f"block {ref.index} not filled within "
                                    f"{self._config.fill_timeout_s:g}s") from None
        except BaseException as e:
            fill.fail(FlightCancelled(ref.block_id) if isinstance(e, asyncio.CancelledError)
                      else e)
            raise
        # Readers have the bytes; the disk write finishes behind them. Until it does,
        # read_live finds the block in _fills, so no second fill can start.
        task = asyncio.ensure_future(self._write_behind(ref, fill, charge))
        self._writing[ref.block_id] = task  # popped by the task when it ends
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    async def _gated_fetch(self, ref: BlockRef, charge: Charge, fill: Fill) -> None:
        """Land the block from a previous owner or the origin, under the tenant's budget.

        The tenant's budget comes first, so waiting for it holds no node-wide slot; the
        write-behind slot taken here is given back once the block is on disk.
        """
        ticket = None if self.gate is None else await self.gate.admit(charge, ref.length)
        try:
            await self._slots.acquire()
            try:
                await self._handoff_or_fetch(ref, charge, ticket, fill)
            except BaseException:
                self._slots.release()
                raise
        finally:
            if ticket is not None:
                ticket.release()

    async def _handoff_or_fetch(self, ref: BlockRef, charge: Charge,
                                ticket: Ticket | None, fill: Fill) -> None:
        if self.handoff is not None:
            data = await self.handoff(ref)
            if data is not None and len(data) == ref.length:
                if ticket is not None:
                    ticket.handed_off()  # no origin bytes after all
                self._note_first_fill()  # it holds blocks now: a later joiner asks it
                fill.give(data)
                return
        await self._fetch(ref, charge, fill)

    def queued(self, ref: BlockRef) -> bool:
        """Return whether the block's fill here waits to start (budget, slots, GET limit)."""
        fill = self._fills.get(ref.block_id)
        return fill is not None and fill.buffer is None and not fill.complete \
            and fill.error is None

    def _note_first_fill(self) -> None:
        """Tell the group, once, that this node has begun to hold blocks (cachenode/handoff.py)."""
        if (first := self.first_fill) is not None:
            self.first_fill = None
            first(time.time())

    async def _fetch(self, ref: BlockRef, charge: Charge, fill: Fill) -> None:
        async with self._limit:
            self._note_first_fill()
            self._metrics.fills.inc()
            t0 = time.monotonic()
            await self._origin.read_into(ref.obj, ref.start, fill.target(), fill.landed)
            self._metrics.fill_seconds.observe(time.monotonic() - t0)
        if fill.received != ref.length:
            raise OriginUnavailable(ref.obj.bucket, ref.obj.key, "origin returned a short block")
        m, tenant = self._metrics, self._metrics.tenant(charge.tenant)
        m.tenant_fills.labels(tenant).inc()
        m.tenant_origin_bytes.labels(tenant).inc(ref.length)

    async def _write_behind(self, ref: BlockRef, fill: Fill, charge: Charge
                            ) -> CacheError | None:
        """Store a filled block; return the error that kept it off disk (None: stored)."""
        try:
            assert fill.buffer is not None, "a complete fill holds its bytes until stored"
            await self._store.put(ref, fill.buffer, charge.tenant, charge.warmed)
            fill.on_disk()  # readers still behind go on from the file
            return None
        except CacheError as e:  # StoreFull, DiskUnavailable, Overloaded (out of fds)
            log.warning("serving block %s uncached: %s", ref.block_id, e)
            return e
        except Exception as e:
            log.exception("writing block %s failed", ref.block_id)
            return DiskUnavailable(f"writing block {ref.block_id} failed: {e!r}")
        finally:
            if self._fills.get(ref.block_id) is fill:
                del self._fills[ref.block_id]
            self._writing.pop(ref.block_id, None)
            self._slots.release()


def _stay() -> None:
    """Leave nothing: a reader of a fill already landed holds no flight."""
