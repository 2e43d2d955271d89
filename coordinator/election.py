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
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from coordinator.errors import StateUnavailable
from coordinator.state import EtcdStateStore

log = logging.getLogger(__name__)


@dataclass
class LeaderSeen:
    """Who leads as etcd last told this replica, when (monotonic s), and any failure since."""

    leader_id: str | None = None
    at: float = -math.inf
    error: str | None = "etcd not reached yet"

    def saw(self, leader_id: str | None, at: float) -> None:
        """Record what etcd answered at `at` (no leader: None)."""
        self.leader_id, self.at, self.error = leader_id, at, None

    def lost(self, error: str) -> None:
        """Record that etcd could not be asked (what was seen before no longer counts)."""
        self.error = error

    def health(self, now: float, max_age_s: float) -> tuple[str | None, str | None]:
        """Return (leader id, None) if what was seen is fresh, else (None, why it is not)."""
        if self.error is not None:
            return None, self.error
        if now - self.at > max_age_s:
            return None, (f"etcd has not answered the election for {now - self.at:.1f}s "
                          f"(more than {max_age_s:g}s)")
        return self.leader_id, None


class Election:
    """Campaign for leadership and run `lead()` while leading."""

    def __init__(self, store: EtcdStateStore, ttl_s: int,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self._store, self._ttl = store, max(2, ttl_s)
        self._on_change = on_change or (lambda leading: None)
        self.leading = False
        self.seen = LeaderSeen()

    @property
    def leader_id(self) -> str | None:
        """Return who leads, as etcd said recently enough (None: none, or cannot tell)."""
        return self.health()[0]

    def health(self) -> tuple[str | None, str | None]:
        """Return (who leads, None), or (None, why this replica cannot tell).

        What etcd said counts for 2/3 of a lease TTL: a leader refreshes its lease every
        TTL/3 and resigns when 2/3 pass without a refresh; a follower reads the key every
        second at most, so an older answer may name a leader that is gone.
        """
        return self.seen.health(time.monotonic(), self._ttl * 2 / 3)

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Campaign forever; lead whenever elected (cancel to stop: leadership is given up)."""
        while True:
            try:
                lease = await self._campaign()
                if lease:
                    await self._lead(lease, lead)
            except StateUnavailable as e:
                self.seen.lost(str(e))
                log.warning("election: %s", e)
            except Exception as e:
                self.seen.lost(f"the election failed: {type(e).__name__}")
                log.exception("election round failed")
            await asyncio.sleep(min(1.0, self._ttl / 3))  # also after a lead() that crashed

    async def _campaign(self) -> int:
        """Try to become the leader; return the lease id if this replica now leads, else 0."""
        s = self._store
        asked = time.monotonic()
        current = await s.call(lambda c: c.get(s.leader_key))
        self.seen.saw(None if current is None else bytes(current.value).decode(), asked)
        if current is not None:
            return 0
        lease = await s.call(lambda c: c.lease(self._ttl))

        async def txn(c: Any) -> bool:
            ok, _ = await c.transaction(
                compare=[c.transactions.create(s.leader_key) == 0],
                success=[c.transactions.put(s.leader_key, s.identity.encode(), lease=lease.id)],
                failure=[])
            return bool(ok)

        if await s.call(txn):
            self.seen.saw(s.identity, asked)
            return int(lease.id)
        await self._revoke(int(lease.id))
        return 0

    async def _revoke(self, lease_id: int) -> bool:
        """Revoke a lease (and so the leader key it holds), bounded; return whether it was."""
        with contextlib.suppress(StateUnavailable, TimeoutError):
            async with asyncio.timeout(2.0):
                await self._store.call(lambda c: c.revoke_lease(lease_id))
                return True
        return False

    async def _lead(self, lease_id: int, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `lead()` while the lease lives; stop it when the lease may be lost."""
        self.leading = True
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
            if await asyncio.shield(self._revoke(lease_id)):
                self.seen.saw(None, time.monotonic())  # the key went with the lease
            else:
                self.seen.lost("stepped down without etcd confirming it")
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
                except (TimeoutError, grpc.RpcError, OSError, asyncio.InvalidStateError) as e:
                    # InvalidStateError: a write on a stream etcd already ended (etcd killed)
                    self.seen.lost(f"cannot refresh the leader lease: {type(e).__name__}")
                    log.error("cannot refresh the leader lease (%s); stepping down",
                              type(e).__name__)
                    return
                if reply is grpc.aio.EOF or reply.TTL <= 0:
                    self.seen.lost("the leader lease expired")
                    log.error("leader lease %x expired", lease_id)
                    return
                confirmed = sent
                self.seen.saw(self._store.identity, sent)
        finally:
            stream.cancel()
