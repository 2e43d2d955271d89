"""Fetch one block of a pinned version from the cache group, within a stated bound.

A block comes through `CacheClient.read_range` (its owners in parallel with the other blocks,
failover to the next node, CRC-32C checked, the pinned ETag sent as If-Match). When no node
can serve it (all down, hung or their origin failing) the fetch is tried again with backoff
until `timeout_s` (--read-timeout) after it started, then fails: so a kernel read is answered
EIO at most that long after it arrived, never left hanging. After such a failure the group
counts as down: fetches try once, not for the whole bound, until one succeeds (so the kernel's
retries of the same pages, and the next reads, fail fast while nothing answers).
A pinned version the origin no longer has (ObjectChanged, NotFound) fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from client.client import CacheClient, ObjectInfo
from client.errors import Unavailable
from client.mount.namespace import FileVersion
from client.mount.stats import Stats

log = logging.getLogger(__name__)
DOWN_FOR_S = 5.0  # after a fetch gave up: try once, not for the whole bound


class GroupFetch:
    """Read whole blocks of one bucket's objects through a CacheClient."""

    def __init__(self, client: CacheClient, bucket: str, block_size: int, timeout_s: float,
                 stats: Stats) -> None:
        self._client, self.bucket, self.block_size = client, bucket, block_size
        self.timeout_s, self._stats = timeout_s, stats
        self._down_until = 0.0

    def info(self, v: FileVersion) -> ObjectInfo:
        """Return the pinned ObjectInfo of a file version."""
        return ObjectInfo(self.bucket, v.key, v.size, v.etag, v.mtime_ns / 1e9)

    async def __call__(self, v: FileVersion, index: int) -> bytes:
        """Return block `index` of `v`; raise Unavailable once `timeout_s` has passed."""
        start = index * self.block_size
        size = min(self.block_size, v.size - start)
        deadline = time.monotonic() + self.timeout_s
        delay = 0.1
        while True:
            once = time.monotonic() < self._down_until
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    data = await self._client.read_range(self.info(v), start, size)
            except (Unavailable, TimeoutError) as e:
                reason = str(e) or f"not served within {self.timeout_s:g}s (--read-timeout)"
                if once or time.monotonic() + delay >= deadline:
                    self._down_until = time.monotonic() + DOWN_FOR_S
                    raise Unavailable(f"s3://{self.bucket}/{v.key} block {index}: "
                                      f"{reason}") from None
                self._stats.group_retries += 1
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
                continue
            if len(data) != size:
                raise Unavailable(f"s3://{self.bucket}/{v.key} block {index}: "
                                  f"{len(data)} of {size} bytes")
            self._down_until = 0.0
            self._stats.group_blocks += 1
            self._stats.group_bytes += size
            return data
