"""Leader election in etcd: the replica whose id sits in the leader key, under its lease, leads.

A replica campaigns by creating the key (a transaction that succeeds only if it is absent)
with a lease, keeps the lease alive every TTL/3, and runs `lead()` while it does. When a
refresh fails for longer than the TTL allows, or etcd says the lease is gone, it stops
`lead()` at once: by then etcd may have let another replica in. A leader killed with -9
is replaced once its lease expires (at most one TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from aetcd import rpc

from coordinator.errors import StateUnavailable
from coordinator.state import EtcdStateStore

log = logging.getLogger(__name__)


class Election:
    """Campaign for leadership and run `lead()` while leading."""

    def __init__(self, store: EtcdStateStore, ttl_s: int,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self._store, self._ttl = store, max(2, ttl_s)
        self._on_change = on_change or (lambda leading: None)
        self.leading = False
        self.leader_id: str | None = None

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Campaign forever; lead whenever elected (cancel to stop: leadership is given up)."""
        while True:
            try:
                lease = await self._campaign()
                if lease:
                    await self._lead(lease, lead)
            except StateUnavailable as e:
                log.warning("election: %s", e)
            except Exception:
                log.exception("election round failed")
            await asyncio.sleep(min(1.0, self._ttl / 3))  # also after a lead() that crashed

    async def _campaign(self) -> int:
        """Try to become the leader; return the lease id if this replica now leads, else 0."""
        s = self._store
        current = await s.call(lambda c: c.get(s.leader_key))
        if current is not None:
            self.leader_id = bytes(current.value).decode()
            return 0
        lease = await s.call(lambda c: c.lease(self._ttl))

        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(
                compare=[c.transactions.create(s.leader_key) == 0],
                success=[c.transactions.put(s.leader_key, s.identity.encode(), lease=lease.id)],
                failure=[])
            return bool(ok)

        if await s.call(txn):
            return int(lease.id)
        await self._revoke(int(lease.id))
        return 0

    async def _revoke(self, lease_id: int) -> None:
        """Revoke a lease (and so the leader key it holds), bounded, errors ignored."""
        with contextlib.suppress(StateUnavailable, TimeoutError):
            async with asyncio.timeout(2.0):
                await self._store.call(lambda c: c.revoke_lease(lease_id))

    async def _lead(self, lease_id: int, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `lead()` while the lease lives; stop it when the lease may be lost."""
        self.leading, self.leader_id = True, self._store.identity
        self._on_change(True)
        log.info("%s is now the coordinator leader (lease %x, ttl %ds)",
                 self._store.identity, lease_id, self._ttl)
        task = asyncio.create_task(lead(), name="coordinator-leader")
        try:
            await self._keep(lease_id, task)
        finally:
            ended_itself = task.done()  # then _keep has logged how
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                if not ended_itself:
                    log.warning("leader loop failed while stopping", exc_info=True)
            # Hand over at once (shutdown, crash, or a lease we can no longer vouch for).
            await asyncio.shield(self._revoke(lease_id))
            self.leading = False
            self._on_change(False)
            log.info("%s stopped leading", self._store.identity)

    async def _keep(self, lease_id: int, task: asyncio.Task[None]) -> None:
        """Refresh the lease every TTL/3 on one keepalive stream until it is gone or `lead()`
        ends; give up once 2/3 of a TTL has passed since the last refresh etcd confirmed
        (measured from when that refresh was sent, so never later than etcd's own expiry)."""
        client = self._store.client
        if client.leasestub is None:  # the channel was replaced since the campaign
            return
        stream = client.leasestub.LeaseKeepAlive(metadata=client.metadata)
        confirmed = time.monotonic()
        try:
            while not task.done():
                await asyncio.wait([task], timeout=self._ttl / 3)
                if task.done():
                    if not task.cancelled() and task.exception() is not None:
                        log.error("leader loop failed; resigning", exc_info=task.exception())
                    return
                sent = time.monotonic()
                left = confirmed + self._ttl * 2 / 3 - sent
                try:
                    async with asyncio.timeout(max(0.1, left)):
                        await stream.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                        reply = await stream.read()
                except (TimeoutError, grpc.RpcError, OSError) as e:
                    log.error("cannot refresh the leader lease (%s); stepping down",
                              type(e).__name__)
                    return
                if reply is grpc.aio.EOF or reply.TTL <= 0:
                    log.error("leader lease %x expired", lease_id)
                    return
                confirmed = sent
        finally:
            stream.cancel()
