"""The one read path behind every transport: stat an object, then stream a byte range."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import replace

from cachenode import blocks
from cachenode.blocks import BlockRef, ObjectMeta
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
from cachenode.filling import LiveBlock
from cachenode.limits import NodeLimits
from cachenode.listing import ListQuery
from cachenode.metrics import NodeMetrics
from cachenode.names import validate_name, validate_prefix
from cachenode.ports import Origin
from cachenode.qos import NOBODY, Charge, later_wait
from cachenode.readahead import ReadAhead
from cachenode.routing import Fetched, Router
from cachenode.singleflight import SingleFlight
from cachenode.store.files import OpenBlock
from cachenode.window import Chunk, Window

log = logging.getLogger(__name__)
METADATA_CACHE_ENTRIES = 100_000
METADATA_CACHE_BYTES = 64 * 2**20  # names, ETags and kept headers of the cached entries
ENTRY_OVERHEAD_BYTES = 400  # what one entry costs beyond its strings (objects, dict slot)
STALE_RETRY_S = 1.0  # origin down: reuse the last known metadata this long before asking again


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
        """Yield the bytes [start, end] of the pinned version in order, with read-ahead.

        A block being filled here is yielded once its first bytes are in and sent as the
        rest lands (LiveChunk), then from its file; blocks stored here are sent from their
        files, so a reader that stalls holds file descriptors and positions, not memory. A
        block from another node is held in memory until sent: it takes its bytes from the
        node's MemoryBudget first; read-ahead only takes free budget, and its depth follows
        cachenode/readahead.py. FileChunks and LiveChunks must be closed by the receiver.
        ObjectChanged means the version is gone: the metadata is dropped. Fills are charged
        to `charge.tenant`: the first block's may wait `charge.wait_s` for the tenant's
        budget, later ones up to half the fill timeout.
        """
        later = replace(charge, wait_s=max(charge.wait_s, later_wait(self.fill_timeout_s)))
        window = Window(iter(blocks.slices(meta, start, end, self.block_size)),
                        lambda ref, c: self._read(ref, hops, cached_only, c),
                        lambda ref: self.router.held_in_memory(ref, hops, cached_only),
                        self._budget(charge.tenant), self._depth(), (charge, later), start,
                        self.filler.queued)
        try:
            while (ahead := await window.head()) is not None:
                try:
                    chunk = await window.take(ahead)
                except ObjectChanged:
                    self.invalidate(meta.bucket, meta.key)
                    raise
                try:
                    yield chunk
                finally:
                    window.sent(ahead)
        finally:
            window.close()

    def _depth(self) -> ReadAhead:
        """Return a response's read-ahead depth, from --readahead up to --readahead-max."""
        return ReadAhead(self._config.readahead_blocks, self._config.readahead_max_blocks)

    async def _read(self, ref: BlockRef, hops: int, cached_only: bool,
                    charge: Charge) -> OpenBlock | Fetched | LiveBlock:
        """Return a block routed as usual; one filled here for another node, whole.

        A peer checks the whole block against the CRC-32C in the headers, so its block is
        sent once landed, from its file once written (as from any disk).
        """
        got = await self.router.read_live(ref, hops, cached_only, charge)
        if not isinstance(got, LiveBlock) or not hops:
            return got
        try:
            await got.fill.wait(ref.length)
            stored = await self.filler.settled(ref)
            held = got.fill.buffer
        finally:
            got.close()
        ob = self.filler.open_written(ref) if stored else None
        if ob is not None:
            return ob
        assert held is not None, "an unstored fill keeps its bytes"
        return Fetched(bytes(held), "origin")


def entry_bytes(meta: ObjectMeta) -> int:
    """Return what one metadata cache entry costs, counted against METADATA_CACHE_BYTES."""
    return (ENTRY_OVERHEAD_BYTES + len(meta.bucket) + len(meta.key) + len(meta.etag)
            + meta.header_bytes())


