"""Warm one site: every block of the manifest onto its owner, in rounds, with retries.

A round groups the blocks still to do by owner on the site's current ring and sends each
owner batches (`POST /_warm`), a few in flight per node and a capped number of blocks in
flight per site (the origin concurrency a warmup causes; a byte-rate cap too). A block the
owner already holds costs an index lookup, so a rerun or a resumed job reads nothing from
the origin. After a round the ring is read again: blocks that failed for a reason worth
retrying go to their (possibly new) owner after a backoff, and blocks confirmed on a node
that no longer owns them (it died or left) are warmed again on the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence

from cachenode.blocks import ObjectMeta
from cachenode.ring import Ring
from client.membership import GroupView
from coordinator.config import CoordinatorConfig
from coordinator.errors import BadSite, StateUnavailable
from coordinator.model import MAX_FAILED_OBJECTS, MAX_REASON, FailedObject, Progress
from coordinator.nodes import NodeFailed, NodeRefused, Nodes
from coordinator.planner import (
    RETRYABLE,
    BlockTask,
    block_tasks,
    by_owner,
    moved,
    ring_of,
    warm_request,
)
from coordinator.rate import RateWindow, TokenBucket

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0
MORE_ROUNDS = 4  # rounds beyond --block-attempts, for blocks whose owner left (then: give up)
FIRST_VIEW_ATTEMPTS = 5


class BlockBudget:
    """At most `cap` blocks in flight; a batch waits until all of its blocks fit."""

    def __init__(self, cap: int) -> None:
        self.cap, self.used = cap, 0
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def take(self, n: int) -> AsyncIterator[None]:
        """Hold `n` blocks of the budget for the duration of the block."""
        n = min(n, self.cap)
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.cap)
            self.used += n
        try:
            yield
        finally:
            async with self._cond:
                self.used -= n
                self._cond.notify_all()


class SiteLimits:
    """The caps one site's warmups share, whatever the number of jobs: blocks in flight, bytes/s."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.blocks = BlockBudget(config.site_inflight_blocks)
        self.rate = TokenBucket(config.site_origin_bytes_per_s)


class SiteWarmup:
    """Put every block of a manifest on one site's owners; progress is read live."""

    def __init__(self, site: str, manifest: Sequence[ObjectMeta], verify: bool,
                 config: CoordinatorConfig, nodes: Nodes, limits: SiteLimits,
                 tenant: str = "") -> None:
        self.site, self._manifest, self._verify = site, manifest, verify
        self._tenant = tenant  # whose warmed blocks these become on the nodes
        self._cfg, self._nodes, self._limits = config, nodes, limits
        self.progress = Progress(objects=len(manifest), bytes_total=sum(o.size for o in manifest))
        self.failed: list[FailedObject] = []
        self._tasks: list[BlockTask] = []
        self._block_size = 0
        self.window = RateWindow(time.monotonic())  # confirmed bytes, for rate and ETA

    async def run(self) -> bool:
        """Warm the site; return True if every block is on its owner."""
        view = await self._first_view()
        self.window = RateWindow(time.monotonic())
        self._block_size = view.block_size
        self._tasks = await asyncio.to_thread(block_tasks, self._manifest, view.block_size)
        p = self.progress
        p.blocks_total = len(self._tasks)
        todo, rounds = self._tasks, 0
        while todo and rounds < self._cfg.block_attempts + MORE_ROUNDS:
            rounds += 1
            ring = _ring(view)
            if ring is None:
                for t in todo:
                    t.attempts += 1
                    self._fail(t, "Unreachable", f"no cache node of site {self.site} is up")
            else:
                await self._round(todo, ring, view)
            view = await self._fresh_view(view)
            ring = _ring(view)
            again = [t for t in self._tasks if t.done_on is None and t.error in RETRYABLE
                     and t.attempts < self._cfg.block_attempts]
            lost = await asyncio.to_thread(moved, self._tasks, ring) if ring is not None else []
            for t in lost:  # confirmed on a node that no longer owns it: warm it again
                self._undo(t)
            todo = again + lost
            if again:
                p.retries += len(again)
                await asyncio.sleep(min(MAX_BACKOFF_S, self._cfg.retry_base_s * 2 ** rounds))
        self._report_failures()
        return p.blocks_failed == 0

    async def _first_view(self) -> GroupView:
        """Return the site's members, waiting out a short etcd outage (BadSite if none)."""
        for attempt in range(FIRST_VIEW_ATTEMPTS):
            try:
                return await self._nodes.view(self.site)
            except (NodeFailed, StateUnavailable) as e:
                log.warning("site %s: cannot read its members (%s); retrying", self.site, e)
                await asyncio.sleep(min(MAX_BACKOFF_S, 2.0 ** attempt))
        return await self._nodes.view(self.site)

    async def _fresh_view(self, old: GroupView) -> GroupView:
        """Return the site's current members (the old view if etcd cannot be read now)."""
        try:
            return await self._nodes.view(self.site)
        except (NodeFailed, StateUnavailable, BadSite) as e:
            log.warning("site %s: cannot read its members (%s); keeping the last view",
                        self.site, e)
            return old

    async def _round(self, todo: list[BlockTask], ring: Ring, view: GroupView) -> None:
        """Send every owner its batches, a few at a time per node."""
        batch = min(self._cfg.batch_blocks, self._cfg.site_inflight_blocks)
        if self._limits.rate.rate:  # a batch is at most one second's worth of the cap
            batch = max(1, min(batch, self._limits.rate.rate // max(1, self._block_size)))
        plan = await asyncio.to_thread(by_owner, todo, ring, batch)
        for t in todo:
            t.error = None
        async with asyncio.TaskGroup() as tg:  # a worker that crashes stops the others
            for node, batches in plan.items():
                queue = iter(batches)
                for _ in range(min(self._cfg.node_concurrency, len(batches))):
                    tg.create_task(self._worker(node, view.members[node].http, queue))

    async def _worker(self, node: str, addr: str, batches: Iterator[list[BlockTask]]) -> None:
        for batch in batches:
            async with self._limits.blocks.take(len(batch)):
                await self._limits.rate.take(sum(t.length for t in batch))
                await self._send(node, addr, batch)

    async def _send(self, node: str, addr: str, batch: list[BlockTask]) -> None:
        """Warm one batch on one node and record each block's outcome."""
        for t in batch:
            t.attempts += 1
        try:
            results = await self._nodes.warm(addr, warm_request(batch, self._block_size,
                                                                self._verify, self._tenant))
        except NodeFailed as e:
            log.warning("site %s: warm batch on %s failed: %s", self.site, node, e)
            # Refused (403): retrying cannot help until the cluster secrets agree.
            name = "AccessDenied" if isinstance(e, NodeRefused) else "Unreachable"
            for t in batch:
                self._fail(t, name, str(e))
            return
        unread = 0  # bytes of the batch the origin was not asked for
        for t, r in zip(batch, results, strict=True):
            status = r.get("status")
            if status in ("present", "filled"):
                self._done(t, node, status == "filled")
                unread += 0 if status == "filled" else t.length
            else:
                self._fail(t, str(r.get("error") or "NodeError"), str(r.get("reason", status)))
        self._limits.rate.give_back(unread)
        self.window.note(time.monotonic(), self.progress.bytes_done)

    def _done(self, t: BlockTask, node: str, from_origin: bool) -> None:
        p = self.progress
        t.done_on, t.from_origin, t.error = node, from_origin, None
        p.blocks_done += 1
        p.bytes_done += t.length
        if from_origin:
            p.origin_fills += 1
        else:
            p.present += 1

    def _undo(self, t: BlockTask) -> None:
        """Take a block's confirmation back (its node left the ring)."""
        p = self.progress
        p.blocks_done -= 1
        p.bytes_done -= t.length
        if t.from_origin:
            p.origin_fills -= 1
        else:
            p.present -= 1
        t.done_on, t.from_origin = None, False

    def _fail(self, t: BlockTask, error: str, reason: str) -> None:
        t.error, t.reason = error, reason[:MAX_REASON]

    def _report_failures(self) -> None:
        """Count the blocks that stay undone and list their objects (the first few)."""
        per_obj: dict[str, list[BlockTask]] = {}
        for t in self._tasks:
            if t.done_on is None:
                per_obj.setdefault(t.obj.key, []).append(t)
        self.progress.blocks_failed = sum(len(ts) for ts in per_obj.values())
        self.failed = [FailedObject(self.site, key, len(ts), ts[0].error or "GaveUp",
                                    ts[0].reason or "still not warmed after the last round")
                       for key, ts in sorted(per_obj.items())[:MAX_FAILED_OBJECTS]]


def _ring(view: GroupView) -> Ring | None:
    return ring_of({i: (m.weight, m.state) for i, m in view.members.items()})
