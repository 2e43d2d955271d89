"""Background scrub: check cold blocks against their CRC-32C at a bounded rate.

Every block is checked whenever it is read (DiskStore.open_checked), so hot blocks need no
scrub; a cold one could rot unseen until the day a rollout needs it. The scrubber walks the
index in block-id order, resuming where it stopped, checks blocks not read for a while, and
drops the bad ones (counted in blockcache_corrupt_blocks_total) so the next reader refills them.
It never makes a block look recently used, and tells the kernel it can drop the pages it read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from cachenode.metrics import NodeMetrics
from cachenode.store.disk import DiskStore

log = logging.getLogger(__name__)
BATCH = 64  # index entries read at a time
COLD_AFTER_S = 600.0  # a block read within this long was checked then: skip it
IDLE_S = 60.0  # pause at the end of a pass, or while the store is out of rotation


class Scrubber:
    """Check cold blocks at `rate_bytes_s`, forever, one at a time."""

    def __init__(self, store: DiskStore, metrics: NodeMetrics, rate_bytes_s: int,
                 cold_after_s: float = COLD_AFTER_S) -> None:
        self._store, self._metrics, self._rate = store, metrics, rate_bytes_s
        self._cold_after_s = cold_after_s
        self._cursor = ""  # the last block id looked at

    async def run(self) -> None:
        """Scrub until cancelled."""
        while True:
            try:
                done = await self.step()
            except Exception as e:  # out of fds, a disk error: the store handles the rest
                log.warning("scrub paused for %gs: %s", IDLE_S, e)
                done = None
            if done is None:
                await asyncio.sleep(IDLE_S)

    async def step(self) -> int | None:
        """Check the next batch of cold blocks; return the bytes read (None: pass over)."""
        if self._store.failed:
            return None
        entries = self._store.entries_after(self._cursor, BATCH)
        if not entries:
            self._cursor = ""
            self._metrics.scrub_passes.inc()
            return None
        self._cursor = entries[-1].block_id
        done = 0
        for e in entries:
            if time.time() - e.atime < self._cold_after_s:
                continue
            t0 = time.monotonic()
            ob = await self._store.open_checked(e.block_id, e.size, touch=False)
            if ob is None:
                continue  # gone meanwhile, or corrupt: dropped and counted by the store
            try:
                os.posix_fadvise(ob.fd, 0, ob.size, os.POSIX_FADV_DONTNEED)
            finally:
                ob.close()
            done += e.size
            self._metrics.scrubbed_bytes.inc(e.size)
            await asyncio.sleep(max(0.0, e.size / self._rate - (time.monotonic() - t0)))
        return done
