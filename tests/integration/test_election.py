"""Leader election and fenced writes against a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import pytest

from coordinator.election import Election
from coordinator.errors import NotLeader
from coordinator.model import Job
from coordinator.state import EtcdStateStore

pytestmark = pytest.mark.integration


def _store(etcd, cluster: str, identity: str) -> EtcdStateStore:  # type: ignore[no-untyped-def]
    host, port = etcd.endpoint.removeprefix("http://").split(":")
    return EtcdStateStore([(host, int(port))], cluster, identity)


async def _wait(cond, timeout_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.05)


def test_one_replica_leads_a_successor_takes_over_and_the_deposed_cannot_write(etcd) -> None:  # type: ignore[no-untyped-def]
    cluster = f"el-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        a, b, c = (_store(etcd, cluster, n) for n in "abc")
        ea, eb, ec = Election(a, 6), Election(b, 6), Election(c, 2)
        led: list[str] = []

        def leader(name: str):  # type: ignore[no-untyped-def]
            async def lead() -> None:
                led.append(name)
                await asyncio.Event().wait()
            return lead

        ta = asyncio.create_task(ea.run(leader("a")))
        await _wait(lambda: ea.leading)
        tb = asyncio.create_task(eb.run(leader("b")))
        await asyncio.sleep(1.0)
        assert (ea.leading, eb.leading, eb.leader_id) == (True, False, "a")
        job = Job("w-1", "b", "m/v1/", ["s1"], "b/m", "v1")
        await a.put_job(job)  # the leader's fenced write succeeds
        with pytest.raises(NotLeader):
            await b.put_job(job)  # a follower's is refused

        # a leader that stops (SIGTERM) revokes its lease: "b" leads well within the 6 s TTL
        t0 = time.monotonic()
        ta.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ta
        await _wait(lambda: eb.leading, timeout_s=4)
        assert time.monotonic() - t0 < 4 and led == ["a", "b"]
        with pytest.raises(NotLeader):
            await a.put_job(job)  # the deposed leader can no longer write
        job.state = "running"
        await b.put_job(job)
        got = await a.get_job("w-1")
        assert got is not None and got.state == "running"
        tb.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tb

        # a leader that hangs (its lease is never refreshed): "c" leads once the lease lapses
        async def hang(cl: Any) -> None:
            lease = await cl.lease(2)
            await cl.put(a.leader_key, b"x", lease=lease.id)

        await a.call(hang)
        tc = asyncio.create_task(ec.run(leader("c")))
        await asyncio.sleep(0.5)
        assert not ec.leading and ec.leader_id == "x"
        await _wait(lambda: ec.leading, timeout_s=10)
        assert led == ["a", "b", "c"]
        tc.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tc
        for s in (a, b, c):
            await s.close()

    asyncio.run(go())
