"""Follow the tenants prefix in etcd into a TenantTable: one read, then a watch, for ever.

Every node (`--tenants`) and coordinator replica runs one. A session is a fresh aetcd
channel: read the whole prefix (the table adopts it at once), then one Watch stream from
the read's revision + 1, read directly as cachenode/membership.py does (bounded, compaction
and cancel seen). A change in etcd reaches the table in one watch event, well under a
second on a healthy etcd: that is how a new key works and a revoked one fails everywhere
within 5 s. Any error ends the session; the table keeps the last view (readers with valid
keys keep reading while etcd is away; a revocation made meanwhile takes effect when the
watch is back), `healthy` turns False, and after a backoff (0.1 s doubling to 2 s, next
endpoint) a new session reads the prefix again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aetcd
from aetcd import rpc
from aetcd.utils import prefix_range_end

from cachenode.auth.tenant_table import TenantTable
from cachenode.auth.tenants import tenants_prefix
from cachenode.membership import _describe, _host_port

log = logging.getLogger(__name__)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 2.0


class TenantWatch:
    """Keeps `table` equal to the tenants etcd holds for `cluster`."""

    def __init__(self, endpoints: list[str], cluster: str, table: TenantTable, *,
                 connect_timeout_s: float = 30.0, call_timeout_s: float = 5.0,
                 on_change: Callable[[TenantTable], None] | None = None) -> None:
        self._targets = [_host_port(e) for e in endpoints]
        self.endpoints = list(endpoints)
        self._prefix = tenants_prefix(cluster).encode()
        self.table = table
        self._connect_timeout_s, self._call_timeout_s = connect_timeout_s, call_timeout_s
        self._on_change = on_change
        self._next = 0
        self._client: Any = None
        self._watch: Any = None
        self._task: asyncio.Task[None] | None = None
        self.healthy = False

    async def start(self) -> None:
        """Read the tenants once (raise if etcd stays unreachable), then follow them."""
        deadline = time.monotonic() + self._connect_timeout_s
        delay = BACKOFF_MIN_S
        while True:
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await self._open()
                break
            except Exception as e:
                await self._end()
                if time.monotonic() >= deadline:
                    raise ConnectionError(f"etcd at {self.endpoints} not reachable for the "
                                          f"tenants within {self._connect_timeout_s:g}s: "
                                          f"{_describe(e)}") from e
                await asyncio.sleep(delay)
                delay = min(2 * delay, BACKOFF_MAX_S)
        self._task = asyncio.create_task(self._run(), name="tenant-watch")

    async def close(self) -> None:
        """Stop following."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._end()

    async def _run(self) -> None:
        delay = BACKOFF_MIN_S
        while True:
            try:
                if self._client is None:
                    await self._open()
                    log.info("tenant watch back (%s, %d keys)", self.endpoints, len(self.table))
                    delay = BACKOFF_MIN_S
                await self._follow()
            except Exception as e:
                log.warning("tenant watch lost: %s; keeping %d tenants and %d keys, retrying",
                            _describe(e), len(self.table.tenants), len(self.table))
                await self._end()
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(2 * delay, BACKOFF_MAX_S)

    async def _open(self) -> None:
        """Connect, read the prefix into the table, and start a watch after that read."""
        host, port = self._targets[self._next % len(self._targets)]
        self._next += 1
        self._client = client = aetcd.Client(host, port, timeout=self._call_timeout_s)
        await client.connect()
        got = await client.get_prefix(self._prefix)
        n = len(self._prefix)
        self.table.replace([(bytes(kv.key)[n:].decode(errors="replace"), bytes(kv.value))
                            for kv in got.kvs], got.header.revision)
        self._changed()
        self._watch = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        create = rpc.WatchCreateRequest(key=self._prefix, start_revision=got.header.revision + 1,
                                        range_end=prefix_range_end(self._prefix))
        async with asyncio.timeout(self._call_timeout_s):
            await self._watch.write(rpc.WatchRequest(create_request=create))
            created = await self._watch.read()
        if not isinstance(created, rpc.WatchResponse) or not created.created or created.canceled:
            raise ConnectionError(f"tenant watch not created: {created}")
        self.healthy = True

    async def _follow(self) -> None:
        """Apply watch events to the table until the stream fails."""
        n = len(self._prefix)
        while True:
            resp = await self._watch.read()
            if not isinstance(resp, rpc.WatchResponse):
                raise ConnectionError("etcd closed the tenant watch")
            if resp.canceled or resp.compact_revision:
                raise ConnectionError(f"tenant watch canceled (compacted at "
                                      f"{resp.compact_revision}); re-reading")
            for ev in resp.events:
                raw = None if ev.type == rpc.Event.DELETE else bytes(ev.kv.value)
                self.table.apply(bytes(ev.kv.key)[n:].decode(errors="replace"), raw,
                                 ev.kv.mod_revision)
            if resp.events:
                self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change(self.table)
            except Exception:
                log.exception("tenant watch on_change callback failed")

    async def _end(self) -> None:
        self.healthy = False
        client, self._client = self._client, None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if client is not None:
            try:
                async with asyncio.timeout(self._call_timeout_s):
                    await client.close()
            except Exception as e:
                log.debug("closing the tenant watch channel: %s", _describe(e))
