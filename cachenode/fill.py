"""Block reads: local hit, else one shared, bounded, timed fill from the origin.

A fill is charged to the tenant whose read or warmup started it (`Charge`): it takes that
tenant's origin budget first (cachenode/qos.py), then a node-wide slot, and its block is
stored as that tenant's, warmed or read-through (cachenode/store/quota.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeAlias

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
from cachenode.metrics import NodeMetrics
from cachenode.ports import BlockStore, Origin
from cachenode.qos import NOBODY, Charge, TenantGate, Ticket
from cachenode.singleflight import ABANDON_GRACE_S, SingleFlight
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
        # A fill's bytes and its write (None: found on disk already), shared by its waiters.
        # Cancelled once nobody waits for it: a reader that left takes its origin GET along.
        self._flight: SingleFlight[tuple[bytes, Write | None]] = SingleFlight(
            cancel_abandoned=True, grace_s=ABANDON_GRACE_S)
        self._limit = asyncio.Semaphore(config.max_concurrent_fills)  # origin GETs in flight
        # A fill holds a slot from before its GET until its block is on disk, so blocks
        # fetched but not yet written stay bounded (write-behind memory).
        self._slots = asyncio.Semaphore(2 * config.max_concurrent_fills)
        # Fetched, being written: block id -> (bytes, write); guarded by the loop.
        self._landed: dict[str, tuple[bytes, Write]] = {}
        self._writes: set[Write] = set()
        # Asked before the origin on a miss: the block from a previous owner, or None.
        self.handoff: Callable[[BlockRef], Awaitable[bytes | None]] | None = None

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
        landed = self._landed.get(ref.block_id)
        if landed is None:
            return self._store.has(ref.block_id, ref.length)
        return await asyncio.shield(landed[1]) is None  # a caller that leaves lets it run

    def open_written(self, ref: BlockRef) -> OpenBlock | None:
        """Return the file of a block this node wrote just now from bytes it checksummed.

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

    async def read_block(self, ref: BlockRef, charge: Charge = NOBODY) -> OpenBlock | bytes:
        """Return the block as an open file (hit; caller closes it) or as bytes (miss)."""
        bid = ref.block_id
        ob = await self._store.open_checked(bid, ref.length)
        if ob is not None:
            self._metrics.hits.inc()
            return ob
        self._metrics.misses.inc()
        landed = self._landed.get(bid)
        # Fetched a moment ago, its write still under way (and of this very block's length).
        if landed is not None and len(landed[0]) == ref.length:
            self._metrics.fills_deduped.inc()
            return landed[0]
        (data, _), shared = await self._shared_fill(ref, charge)
        if shared:
            self._metrics.fills_deduped.inc()
        # Send the stored file rather than hold the bytes: a slow reader then pins no memory.
        ob = self._store.open_block(bid, ref.length)
        if ob is None:
            return data
        ob.source = "origin"
        return ob

    async def _shared_fill(self, ref: BlockRef, charge: Charge
                           ) -> tuple[tuple[bytes, Write | None], bool]:
        """Join or start the one fill of a missing block; return its result and `shared`.

        A fill refused for another tenant's budget (the one that started it) is started
        again, charged to this caller.
        """
        bid = ref.block_id
        if not self._flight.running(bid) and len(self._flight) >= self._config.max_waiting_fills:
            raise Overloaded(f"{len(self._flight)} block fills already queued")
        try:
            try:
                return await self._flight.do(bid, lambda: self._fill(ref, charge))
            except TenantThrottled as e:
                if e.tenant == charge.tenant:
                    raise
                return await self._flight.do(bid, lambda: self._fill(ref, charge))
        finally:
            self._metrics.fills_in_flight.set(len(self._flight))

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
        landed = self._landed.get(ref.block_id)
        if landed is not None and len(landed[0]) == ref.length:
            write: Write | None = landed[1]
        else:
            (_, write), _ = await self._shared_fill(ref, replace(charge, warmed=True))
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

    async def _fill(self, ref: BlockRef, charge: Charge) -> tuple[bytes, Write | None]:
        ob = self._store.open_block(ref.block_id, ref.length)  # filled while we queued?
        if ob is not None:
            data = await self._read_checked(ob)
            if data is not None:
                return data, None
            self._store.delete(ref.block_id)  # corrupt: fill it again below
        self._metrics.fills_in_flight.set(len(self._flight))
        try:
            async with asyncio.timeout(self._config.fill_timeout_s):  # queueing included
                data = await self._gated_fetch(ref, charge)
        except TimeoutError:
            raise OriginTimeout(ref.obj.bucket, ref.obj.key,
                                f"block {ref.index} not filled within "
                                f"{self._config.fill_timeout_s:g}s") from None
        # Readers get the bytes now; the disk write finishes behind them. Until it does,
        # read_block finds the block in _landed, so no second fill can start.
        task = asyncio.ensure_future(self._write_behind(ref, data, charge))
        self._landed[ref.block_id] = data, task  # popped by the task when it ends
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return data, task

    async def _gated_fetch(self, ref: BlockRef, charge: Charge) -> bytes:
        """Return the block from a previous owner or the origin, under the tenant's budget.

        The tenant's budget comes first, so waiting for it holds no node-wide slot; the
        write-behind slot taken here is given back once the block is on disk.
        """
        ticket = None if self.gate is None else await self.gate.admit(charge, ref.length)
        try:
            await self._slots.acquire()
            try:
                return await self._handoff_or_fetch(ref, charge, ticket)
            except BaseException:
                self._slots.release()
                raise
        finally:
            if ticket is not None:
                ticket.release()

    async def _handoff_or_fetch(self, ref: BlockRef, charge: Charge,
                                ticket: Ticket | None) -> bytes:
        if self.handoff is not None:
            data = await self.handoff(ref)
            if data is not None and len(data) == ref.length:
                if ticket is not None:
                    ticket.handed_off()  # no origin bytes after all
                return data
        return await self._fetch(ref, charge)

    async def _fetch(self, ref: BlockRef, charge: Charge) -> bytes:
        async with self._limit:
            self._metrics.fills.inc()
            t0 = time.monotonic()
            data = await self._origin.get_range(ref.obj, ref.start, ref.length)
            self._metrics.fill_seconds.observe(time.monotonic() - t0)
        if len(data) != ref.length:
            raise OriginUnavailable(ref.obj.bucket, ref.obj.key, "origin returned a short block")
        m, tenant = self._metrics, self._metrics.tenant(charge.tenant)
        m.tenant_fills.labels(tenant).inc()
        m.tenant_origin_bytes.labels(tenant).inc(len(data))
        return data

    async def _write_behind(self, ref: BlockRef, data: bytes, charge: Charge
                            ) -> CacheError | None:
        """Store a filled block; return the error that kept it off disk (None: stored)."""
        try:
            await self._store.put(ref, data, charge.tenant, charge.warmed)
            return None
        except CacheError as e:  # StoreFull, DiskUnavailable, Overloaded (out of fds)
            log.warning("serving block %s uncached: %s", ref.block_id, e)
            return e
        except Exception as e:
            log.exception("writing block %s failed", ref.block_id)
            return DiskUnavailable(f"writing block {ref.block_id} failed: {e!r}")
        finally:
            self._landed.pop(ref.block_id, None)
            self._slots.release()
