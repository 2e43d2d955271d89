"""Leader election and fenced writes against a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

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
        a, b = _store(etcd, cluster, "a"), _store(etcd, cluster, "b")
        ea, eb = Election(a, 2), Election(b, 2)
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

        # "a" stops refreshing its lease (a hung or partitioned leader): "b" takes over
        ta.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ta
        await _wait(lambda: eb.leading)
        assert led == ["a", "b"]
        with pytest.raises(NotLeader):
            await a.put_job(job)  # the deposed leader can no longer write
        job.state = "running"
        await b.put_job(job)
        got = await a.get_job("w-1")
        assert got is not None and got.state == "running"

        # a graceful resign hands over at once
        await eb.resign()
        tb.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tb
        c = _store(etcd, cluster, "c")
        ec = Election(c, 2)
        tc = asyncio.create_task(ec.run(leader("c")))
        await _wait(lambda: ec.leading, timeout_s=3)
        tc.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tc
        await ec.resign()
        for s in (a, b, c):
            await s.close()

    asyncio.run(go())
