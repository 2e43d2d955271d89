"""The one read path behind every transport: stat an object, then stream a byte range."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace

from cachenode import blocks
from cachenode.blocks import BlockRef, BlockSlice, ObjectMeta
from cachenode.budget import TENANT_SHARE, MemoryBudget, TenantBudget
from cachenode.config import NodeConfig
from cachenode.errors import (
    BadRequest,
    ObjectChanged,
    OriginDenied,
    OriginUnavailable,
    PreconditionFailed,
)
from cachenode.fill import Filler
from cachenode.limits import NodeLimits
from cachenode.listing import ListQuery
from cachenode.metrics import NodeMetrics
from cachenode.names import validate_name, validate_prefix
from cachenode.ports import Origin
from cachenode.qos import NOBODY, Charge, later_wait
from cachenode.routing import Fetched, Router
from cachenode.singleflight import SingleFlight
from cachenode.store.files import OpenBlock

log = logging.getLogger(__name__)
METADATA_CACHE_ENTRIES = 100_000
METADATA_CACHE_BYTES = 64 * 2**20  # names, ETags and kept headers of the cached entries
ENTRY_OVERHEAD_BYTES = 400  # what one entry costs beyond its strings (objects, dict slot)
STALE_RETRY_S = 1.0  # origin down: reuse the last known metadata this long before asking again


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


Chunk = FileChunk | MemChunk


class BlockService:
    """Stat objects (short-TTL metadata cache) and stream byte ranges block by block."""

    def __init__(self, config: NodeConfig, origin: Origin, filler: Filler,
                 metrics: NodeMetrics, router: Router | None = None,
                 limits: NodeLimits | None = None) -> None:
        self._config, self._origin, self.filler, self._metrics = config, origin, filler, metrics
        self.router = router or Router("", filler, metrics)  # default: alone
        self._meta: OrderedDict[tuple[str, str], tuple[float, ObjectMeta]] = OrderedDict()
        self._meta_bytes = 0  # entry_bytes() of what _meta holds
        self._heads: SingleFlight[ObjectMeta] = SingleFlight(cancel_abandoned=True)
        self.block_size = config.block_size_bytes
        self.budget = MemoryBudget(config.memory_budget_bytes, config.send_timeout_s)
        self._limits = limits  # tenants' limits here (None: nobody has any)
        self._tenant_budgets: dict[str, TenantBudget] = {}  # of tenants with origin budgets
        self.send_timeout_s = config.send_timeout_s
        self.fill_timeout_s = config.fill_timeout_s
        self.key_policy = config.origin_keys  # cachenode/names.py: which keys are refused

    async def close(self) -> None:
        """Cancel metadata lookups in flight."""
        await self._heads.close()

    async def stat(self, bucket: str, key: str) -> ObjectMeta:
        """Return the object's metadata, from cache if younger than the metadata TTL."""
        validate_name(bucket, key, self.key_policy)
        now = time.monotonic()
        cached = self._meta.get((bucket, key))
        if cached and cached[0] > now:
            self._metrics.metadata_lookups.labels("hit").inc()
            return cached[1]
        self._metrics.metadata_lookups.labels("miss").inc()
        try:
            meta, _ = await self._heads.do((bucket, key), lambda: self._origin.head(bucket, key))
        except (OriginUnavailable, OriginDenied):
            if cached is None:
                raise
            # Origin down (or our credentials expired): the last known ETag still pins the
            # cached blocks, so hits are served; ask again only after a short pause.
            pause = min(STALE_RETRY_S, self._config.metadata_ttl_s)
            self._remember(cached[1], pause)
            return cached[1]
        self._remember(meta)
        return meta

    async def list_page(self, bucket: str, prefix: str, token: str = "",
                        limit: int = 1000) -> tuple[list[ObjectMeta], str]:
        """Return one page of the objects under `prefix` (from origin) and the next token."""
        validate_prefix(bucket, prefix, self.key_policy)
        if not 1 <= limit <= 1000:
            raise BadRequest("max-keys must be between 1 and 1000")
        page = await self._origin.list_objects(ListQuery(bucket, prefix, token=token,
                                                         limit=limit))
        return [ObjectMeta(bucket, o.key, o.size, o.etag, o.last_modified)
                for o in page.objects], page.next_token

    async def pinned(self, bucket: str, key: str, etag: str,
                     trusted: ObjectMeta | None = None) -> ObjectMeta:
        """Return the metadata of the version `etag` names (any version if empty).

        Metadata that disagrees is looked up again (ours may be the stale one);
        PreconditionFailed if the origin no longer has that version. `trusted`, a peer's
        pin, is returned when the origin cannot be asked.
        """
        try:
            meta = await self.stat(bucket, key)
        except (OriginUnavailable, OriginDenied):
            if trusted is None:
                raise
            return trusted
        if not etag or etag in ("*", meta.etag):
            return meta
        self.invalidate(bucket, key)
        try:
            fresh = await self.stat(bucket, key)
        except (OriginUnavailable, OriginDenied):
            self._remember(meta)  # keep what we knew while the origin is away
            if trusted is None:
                raise
            return trusted
        if etag != fresh.etag:
            raise PreconditionFailed(bucket, key, etag)
        return fresh

    def _remember(self, meta: ObjectMeta, ttl_s: float | None = None) -> None:
        """Cache metadata for the TTL; the least recently stored go past either bound."""
        k = (meta.bucket, meta.key)
        self.invalidate(meta.bucket, meta.key)
        ttl = self._config.metadata_ttl_s if ttl_s is None else ttl_s
        self._meta[k] = (time.monotonic() + ttl, meta)
        self._meta_bytes += entry_bytes(meta)
        while len(self._meta) > METADATA_CACHE_ENTRIES or (
                self._meta_bytes > METADATA_CACHE_BYTES and len(self._meta) > 1):
            self._meta_bytes -= entry_bytes(self._meta.popitem(last=False)[1][1])

    def invalidate(self, bucket: str, key: str) -> None:
        """Forget cached metadata of an object (it changed at origin)."""
        old = self._meta.pop((bucket, key), None)
        if old is not None:
            self._meta_bytes -= entry_bytes(old[1])

    def _budget(self, tenant: str) -> MemoryBudget | TenantBudget:
        """Return the memory budget a tenant's responses take from (budget.TenantBudget)."""
        if self._limits is None or not self._limits.limited(tenant):
            return self.budget
        got = self._tenant_budgets.get(tenant)
        if got is None:
            own = MemoryBudget(int(self.budget.total * TENANT_SHARE), self.send_timeout_s)
            got = self._tenant_budgets[tenant] = TenantBudget(own, self.budget)
        return got

    async def chunks(self, meta: ObjectMeta, start: int, end: int, hops: int = 0,
                     cached_only: bool = False, charge: Charge = NOBODY
                     ) -> AsyncGenerator[Chunk, None]:
        """Yield the bytes [start, end] of the pinned version in order, with bounded read-ahead.

        Blocks stored here are sent from their files (a block this response fills is
        awaited onto disk first), so a reader that stalls holds file descriptors, not
        memory. A block from another node is held in memory until sent: it takes its bytes
        from the node's MemoryBudget first; read-ahead only takes free budget. A FileChunk
        must be closed by the receiver. ObjectChanged means the version is gone: the
        metadata is dropped. Fills are charged to `charge.tenant`: the first block's may
        wait `charge.wait_s` for the tenant's budget, later ones up to half the fill timeout.
        """
        todo = iter(blocks.slices(meta, start, end, self._config.block_size_bytes))
        s: BlockSlice | None = next(todo, None)
        pending: deque[_Ahead] = deque()
        budget = self._budget(charge.tenant)
        later = replace(charge, wait_s=max(charge.wait_s, later_wait(self.fill_timeout_s)))
        try:
            while True:
                while s is not None and len(pending) <= self._config.readahead_blocks:
                    need = self.router.held_in_memory(s.ref, hops, cached_only)
                    if need and not budget.try_take(need):
                        if pending:
                            break  # read ahead only on free budget; retry after a send
                        await budget.take(need)  # the block to send next may wait
                    pending.append(_Ahead(s, asyncio.ensure_future(self._read(
                        s.ref, hops, cached_only, charge if s.ref.start <= start else later)),
                        need))
                    s = next(todo, None)
                if not pending:
                    return
                ahead = pending[0]  # stays pending (closed by finally) until its result is ours
                try:
                    got = await ahead.fut
                except ObjectChanged:
                    self.invalidate(meta.bucket, meta.key)
                    raise
                pending.popleft()
                held, ahead.held = ahead.held, 0
                if isinstance(got, OpenBlock):
                    budget.give(held)  # sent from its file after all
                    held = 0
                try:
                    yield _chunk(ahead.slice, got)
                finally:
                    budget.give(held)
        finally:
            for a in pending:
                _discard(a.fut)
                budget.give(a.held)

    async def _read(self, ref: BlockRef, hops: int, cached_only: bool,
                    charge: Charge) -> OpenBlock | Fetched:
        """Return a block routed as usual; one filled from origin here, as its stored file."""
        got = await self.router.read_block(ref, hops, cached_only, charge)
        if isinstance(got, Fetched) and got.source == "origin":
            if await self.filler.settled(ref):
                got = self.filler.open_written(ref) or got
        return got


def entry_bytes(meta: ObjectMeta) -> int:
    """Return what one metadata cache entry costs, counted against METADATA_CACHE_BYTES."""
    return (ENTRY_OVERHEAD_BYTES + len(meta.bucket) + len(meta.key) + len(meta.etag)
            + meta.header_bytes())


@dataclass(slots=True)
class _Ahead:
    """A block of a response being read, and the budget bytes it holds."""

    slice: BlockSlice
    fut: asyncio.Future[OpenBlock | Fetched]
    held: int


def _chunk(s: BlockSlice, got: OpenBlock | Fetched) -> Chunk:
    """Return the part of a block that a slice asks for, as a file span or bytes."""
    if isinstance(got, OpenBlock):
        return FileChunk(got, s.offset, s.length)
    whole = s.offset == 0 and s.length == len(got.data)
    return MemChunk(memoryview(got.data)[s.offset:s.offset + s.length], got.source,
                    got.crc32c if whole else None)


def _discard(fut: asyncio.Future[OpenBlock | Fetched]) -> None:
    """Cancel a read-ahead that will not be sent, closing any file it opened."""

    def close(f: asyncio.Future[OpenBlock | Fetched]) -> None:
        if f.cancelled() or f.exception() is not None:
            return
        if isinstance(f.result(), OpenBlock):
            f.result().close()  # type: ignore[union-attr]

    fut.cancel()
    fut.add_done_callback(close)
