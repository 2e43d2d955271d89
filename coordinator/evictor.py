"""The leader's eviction sweep: hand-made requests, then each site's keep policy, then pruning.

A version leaves a site when every node of the site has deleted its blocks (`POST /_evict`,
an index scan by key prefix). The sweep never touches a version a running job is warming,
a pinned one, or one whose prefix holds or lies within another live version's (nodes delete
by prefix, any ETag); the scheduler in turn does not start a job on a prefix being evicted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from coordinator.config import CoordinatorConfig
from coordinator.errors import BadSite, StateUnavailable
from coordinator.metrics import CoordinatorMetrics
from coordinator.nodes import NodeFailed, Nodes
from coordinator.planner import EvictVersion, evictions, overlapping
from coordinator.state import StateStore

log = logging.getLogger(__name__)
EVICTED_KEEP_S = 7 * 86400  # evicted versions are listed this long, then forgotten
Busy = Callable[[str, str, str], bool]  # (site, bucket, prefix) -> a running job overlaps it


def overlaps(a: str, b: str) -> bool:
    """Return whether one key prefix holds the other (or they are equal)."""
    return a.startswith(b) or b.startswith(a)


class Evictor:
    """One sweep at a time, run by the leader."""

    def __init__(self, config: CoordinatorConfig, store: StateStore, nodes: Nodes,
                 metrics: CoordinatorMetrics, busy: Busy) -> None:
        self._cfg, self._store, self._nodes, self._metrics = config, store, nodes, metrics
        self._busy = busy
        self.evicting: set[tuple[str, str, str]] = set()  # (site, bucket, prefix) right now

    def blocks(self, site: str, bucket: str, prefix: str) -> bool:
        """Return whether an eviction in progress overlaps this prefix at this site."""
        return any(s == site and b == bucket and overlaps(p, prefix)
                   for s, b, p in self.evicting)

    async def sweep(self) -> None:
        """Handle eviction requests, apply every site's policy, forget old evicted versions."""
        for req in await self._store.evict_requests():
            if self._busy(req.site, req.bucket, req.key_prefix):
                continue  # a job is warming it: decide after the job
            v = await self._store.get_version(req.site, req.model, req.version)
            if v is None:  # only a version this site knows is evicted (nodes delete by prefix)
                log.warning("dropping the eviction request of %s at %s: no such version",
                            req.prefix, req.site)
            elif not v.pinned:
                v.state, v.updated = "evicting", time.time()
                await self._store.put_version(v)
            await self._store.clear_evict_request(req)
        versions = await self._store.list_versions()
        for site in sorted({v.site for v in versions}):
            at_site = [v for v in versions if v.site == site]
            keep = await self._store.get_keep(site) or self._cfg.keep_versions
            for a in evictions(at_site, keep):
                if self._busy(site, a.bucket, a.key_prefix):
                    continue
                if nested := overlapping(a.bucket, a.key_prefix, at_site):
                    log.warning("not evicting %s at %s: it overlaps %s", a.key_prefix, site,
                                ", ".join(v.prefix for v in nested))
                    continue
                await self._evict(a)
        cutoff = time.time() - EVICTED_KEEP_S
        for v in versions:
            if v.state == "evicted" and v.updated < cutoff and not v.pinned:
                await self._store.delete_version(v)

    async def _evict(self, a: EvictVersion) -> None:
        """Delete a version's blocks from every node of its site; `evicted` once all did."""
        v = await self._store.get_version(a.site, a.model, a.version)
        if v is None or v.pinned or v.state not in ("ready", "failed", "cancelled", "evicting"):
            return
        if v.state != "evicting":
            v.state, v.updated = "evicting", time.time()
            await self._store.put_version(v)
        key = (a.site, a.bucket, a.key_prefix)
        self.evicting.add(key)
        try:
            freed = await self._delete_everywhere(a)
        finally:
            self.evicting.discard(key)
        if freed is None:
            return  # retried on the next sweep
        v.state, v.updated, v.tenants = "evicted", time.time(), []  # no one holds its bytes
        await self._store.put_version(v)
        self._metrics.evictions.labels(a.site).inc()
        self._metrics.evicted_bytes.inc(freed)
        log.info("evicted %s %s from site %s: %d bytes of blocks freed", a.model, a.version,
                 a.site, freed)

    async def _delete_everywhere(self, a: EvictVersion) -> int | None:
        """Return the bytes the site's nodes freed, or None if some node did not answer."""
        try:
            members = list((await self._nodes.view(a.site)).members.values())
        except (BadSite, NodeFailed, StateUnavailable) as e:
            log.warning("evict %s at %s: cannot read the site's members: %s", a.key_prefix,
                        a.site, e)
            return None
        results = await asyncio.gather(*(self._nodes.evict(m.http, a.bucket, a.key_prefix)
                                         for m in members), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("evict s3://%s/%s at %s: %d of %d nodes did not answer (will retry): %s",
                        a.bucket, a.key_prefix, a.site, len(failed), len(members), failed[0])
            return None
        return sum(r[1] for r in results if isinstance(r, tuple))

