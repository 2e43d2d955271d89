"""Membership against a real etcd: join, leave, die, etcd down and back, unreachable etcd."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aetcd
import msgpack
import pytest

from cachenode.membership import Membership, MembershipError, NodeRecord, node_key, site_prefix
from tests.servers import Etcd, free_port

pytestmark = pytest.mark.integration
TTL_S = 2.0  # the shortest lease etcd grants


def record(node_id: str) -> NodeRecord:
    """Return a record for a node on made-up loopback ports."""
    n = node_id[-1]
    return NodeRecord(id=node_id, http=f"127.0.0.1:80{n}", grpc=f"127.0.0.1:90{n}")


class Node:
    """A Membership plus the list of views its on_change saw."""

    def __init__(self, endpoint: str, cluster: str, node_id: str, **kw: object) -> None:
        self.views: list[tuple[dict[str, NodeRecord], int]] = []
        self.m = Membership([endpoint], cluster, "hz", record(node_id), lease_ttl_s=TTL_S,
                            on_change=self._changed, **kw)  # type: ignore[arg-type]

    def _changed(self, members: Mapping[str, NodeRecord], epoch: int) -> None:
        self.views.append((dict(members), epoch))

    def ids(self) -> set[str]:
        """Return the node ids in the current view."""
        return set(self.m.members)


async def until(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> float:
    """Wait until `cond()` holds and return the seconds it took; fail after `timeout_s`."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"not within {timeout_s}s: {what or cond}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@asynccontextmanager
async def nodes(endpoint: str, cluster: str, *ids: str, **kw: object) -> AsyncIterator[list[Node]]:
    """Start one Membership per id (in order) and close them all afterwards."""
    started: list[Node] = []
    try:
        for node_id in ids:
            n = Node(endpoint, cluster, node_id, **kw)
            await n.m.start()
            started.append(n)
        yield started
    finally:
        await asyncio.gather(*(n.m.close() for n in started))


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> str:
    """Return a cluster name of this test's own, so tests do not see each other's nodes."""
    return "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]


async def stored(endpoint: str, cluster: str) -> dict[str, NodeRecord]:
    """Return the records etcd holds for site "hz", read with a separate client."""
    host, port = endpoint.removeprefix("http://").split(":")
    async with aetcd.Client(host, int(port), timeout=5) as c:
        got = await c.get_prefix(site_prefix(cluster, "hz").encode())
    return {NodeRecord.unpack(kv.value).id: NodeRecord.unpack(kv.value) for kv in got}


def test_record_round_trip_and_key_layout() -> None:
    r = NodeRecord(id="node-0", http="10.0.0.1:8080", grpc="10.0.0.1:9090", weight=50,
                   state="draining")
    assert NodeRecord.unpack(r.pack()) == r
    newer = msgpack.packb({**msgpack.unpackb(r.pack()), "zone": "b", "labels": [1, 2]})
    assert NodeRecord.unpack(newer) == r  # unknown fields from a newer writer are ignored
    assert NodeRecord.unpack(msgpack.packb({"id": "a", "http": "h:1", "grpc": "g:2"})) == \
        NodeRecord(id="a", http="h:1", grpc="g:2")
    assert node_key("prod", "hz", "node-0") == "/blockcache/prod/sites/hz/nodes/node-0"
    assert site_prefix("prod", "hz") == "/blockcache/prod/sites/hz/nodes/"
    for bad in (b"", b"\xc1", b"not msgpack at all \xff", msgpack.packb([1, 2]),
                msgpack.packb({"id": "a"}), msgpack.packb({"id": 1, "http": "h", "grpc": "g"}),
                msgpack.packb({"id": "a", "http": "h", "grpc": "g", "state": "gone"}),
                msgpack.packb({"id": "a", "http": "h", "grpc": "g", "weight": "x"}),
                r.pack() + b"trailing"):
        with pytest.raises(ValueError):
            NodeRecord.unpack(bad)
    for args in (("", "hz", "n"), ("c", "a/b", "n"), ("c", "hz", "")):
        with pytest.raises(ValueError):
            node_key(*args)


@pytest.mark.asyncio
async def test_members_see_each_other_and_leave_promptly(etcd: Etcd, cluster: str) -> None:
    async with nodes(etcd.endpoint, cluster, "n1", "n2", "n3") as (a, b, c):
        await until(lambda: all(n.ids() == {"n1", "n2", "n3"} for n in (a, b, c)))
        assert all(n.m.healthy for n in (a, b, c))
        assert a.m.members["n2"] == record("n2") and c.m.members["n1"] == record("n1")
        await until(lambda: a.m.epoch == b.m.epoch == c.m.epoch, what="epochs agree")
        epochs = [e for _, e in a.views]
        assert epochs == sorted(set(epochs)) and a.views[-1] == (dict(a.m.members), a.m.epoch)
        grown = [set(v) for v, _ in a.views]
        assert grown[0] == {"n1"} and grown[-1] == {"n1", "n2", "n3"}
        assert all(x < y for x, y in zip(grown, grown[1:])), grown
        assert set(await stored(etcd.endpoint, cluster)) == {"n1", "n2", "n3"}

        await b.m.set_state("draining")
        await until(lambda: a.m.members["n2"].state == "draining", what="n2 draining at n1")
        epoch = a.m.epoch
        seen = len(a.views)
        await c.m.close()
        took = await until(lambda: a.ids() == b.ids() == {"n1", "n2"})
        assert took < 1.0 and a.m.epoch > epoch
        states = [v["n3"].state for v, _ in a.views[seen:] if "n3" in v]
        assert states in (["draining"], []), states  # one watch response may carry both
        assert set(await stored(etcd.endpoint, cluster)) == {"n1", "n2"}


CRASHER = """
import asyncio, sys
from cachenode.membership import Membership, NodeRecord
async def main():
    m = Membership([sys.argv[1]], sys.argv[2], "hz", NodeRecord("dead", "h:1", "g:2"),
                   lease_ttl_s=2)
    await m.start()
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_killed_member_disappears_after_its_lease(etcd: Etcd, cluster: str) -> None:
    async with nodes(etcd.endpoint, cluster, "n1") as (a,):
        proc = subprocess.Popen([sys.executable, "-c", CRASHER, etcd.endpoint, cluster],
                                stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
        try:
            assert proc.stdout is not None
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"ready"
            await until(lambda: a.ids() == {"n1", "dead"})
            await asyncio.sleep(2 * TTL_S)  # the process keeps its lease alive while it runs
            assert a.ids() == {"n1", "dead"}
            os.kill(proc.pid, signal.SIGKILL)
            took = await until(lambda: a.ids() == {"n1"}, timeout_s=3 * TTL_S)
            assert 1.0 < took < TTL_S + 1.5, took
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_etcd_down_keeps_the_view_and_rejoins(tmp_path: Path, cluster: str) -> None:
    with Etcd(tmp_path / "etcd") as own:
        async with nodes(own.endpoint, cluster, "n1", "n2") as (a, b):
            await until(lambda: a.ids() == b.ids() == {"n1", "n2"})
            view, epoch, calls = dict(a.m.members), a.m.epoch, len(a.views)
            await asyncio.to_thread(own.kill)
            await until(lambda: not a.m.healthy and not b.m.healthy, timeout_s=3)
            await asyncio.sleep(2 * TTL_S)  # longer than the lease; the view must stay
            assert dict(a.m.members) == view and a.m.epoch == epoch and len(a.views) == calls
            with pytest.raises(MembershipError):
                await a.m.set_state("up")

            await asyncio.to_thread(own.start)  # same ports, same data dir
            await until(lambda: a.m.healthy and b.m.healthy, timeout_s=5, what="healthy")
            assert await stored(own.endpoint, cluster) == {"n1": record("n1"), "n2": record("n2")}
            assert a.ids() == b.ids() == {"n1", "n2"} and len(a.views) == calls  # no churn
            await b.m.set_state("draining")  # and the watch works again
            await until(lambda: a.m.members["n2"].state == "draining", timeout_s=2)


class Relay:
    """A TCP relay to a local port that can cut every connection and refuse new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.port = target_port, free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        """Return the relay's URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Accept connections (again, on the same port)."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop accepting and abort every open connection, as a network partition would."""
        if self._server is None:
            return
        self._server.close()
        for w in self._writers:
            w.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self._writers -= {writer, up_w}


@pytest.mark.asyncio
async def test_partitioned_member_keeps_its_view_and_rejoins(etcd: Etcd, cluster: str) -> None:
    relay = Relay(int(etcd.endpoint.rsplit(":", 1)[1]))
    await relay.start()
    try:
        async with nodes(etcd.endpoint, cluster, "n1") as (a,), \
                nodes(relay.endpoint, cluster, "n2") as (b,):
            await until(lambda: a.ids() == b.ids() == {"n1", "n2"})
            view, calls = dict(b.m.members), len(b.views)
            await relay.cut()
            await until(lambda: not b.m.healthy, timeout_s=3)
            async with nodes(etcd.endpoint, cluster, "n3") as (c,):  # joins while b is cut off
                await until(lambda: a.ids() == {"n1", "n3"}, timeout_s=TTL_S + 2,
                            what="n2's lease expired at n1")
                assert dict(b.m.members) == view and len(b.views) == calls and a.m.healthy

                await relay.start()
                # (the view is published a moment before the new watch is confirmed and
                # `healthy` turns True: wait for both)
                took = await until(lambda: a.ids() == b.ids() == c.ids() == {"n1", "n2", "n3"}
                                   and b.m.healthy, timeout_s=6, what="views converge")
                assert took < 4.0, took
                assert await stored(etcd.endpoint, cluster) == {
                    i: record(i) for i in ("n1", "n2", "n3")}  # on a new lease
                assert a.m.epoch == b.m.epoch == c.m.epoch
    finally:
        await relay.cut()


@pytest.mark.asyncio
async def test_expired_lease_is_replaced_and_record_put_again(etcd: Etcd, cluster: str) -> None:
    async with nodes(etcd.endpoint, cluster, "n1", "n2") as (a, b):
        await until(lambda: a.ids() == b.ids() == {"n1", "n2"})
        host, port = etcd.endpoint.removeprefix("http://").split(":")
        key = node_key(cluster, "hz", "n2").encode()
        async with aetcd.Client(host, int(port), timeout=5) as c:
            old = (await c.get(key)).lease
            await c.revoke_lease(old)  # as if it had expired during a partition
            t0 = time.monotonic()
            while (got := await c.get(key)) is None or got.lease == old:
                assert time.monotonic() - t0 < 5, "n2 not registered again"
                await asyncio.sleep(0.05)
        assert NodeRecord.unpack(got.value) == record("n2")
        await until(lambda: b.m.healthy and a.ids() == b.ids() == {"n1", "n2"}, timeout_s=5)
        assert any("n2" not in v for v, _ in a.views), "n1 never saw n2 go"


@pytest.mark.asyncio
async def test_start_without_etcd_fails_within_the_connect_timeout(cluster: str) -> None:
    m = Membership([f"http://127.0.0.1:{free_port()}"], cluster, "hz", record("n1"),
                   connect_timeout_s=1.5)
    t0 = time.monotonic()
    with pytest.raises(MembershipError, match="not reachable within 1.5s"):
        await m.start()
    assert 1.0 < time.monotonic() - t0 < 2.5
    assert not m.healthy and m.members == {}
    t0 = time.monotonic()
    await m.close()
    assert time.monotonic() - t0 < 1.0


@pytest.mark.asyncio
async def test_hung_etcd_turns_unhealthy_within_the_call_timeout(tmp_path: Path,
                                                                 cluster: str) -> None:
    with Etcd(tmp_path / "etcd") as own:
        async with nodes(own.endpoint, cluster, "n1", call_timeout_s=1.0) as (n,):
            own.pause()
            took = await until(lambda: not n.m.healthy, timeout_s=3)
            assert 0.5 < took < 1.0 + TTL_S / 3 + 0.5, took
            own.resume()
            await until(lambda: n.m.healthy, timeout_s=3)
            assert n.ids() == {"n1"} and len(n.views) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", ["kill", "pause"])
async def test_close_is_bounded_when_etcd_is_gone(tmp_path: Path, cluster: str,
                                                  fault: str) -> None:
    with Etcd(tmp_path / "etcd") as own:
        n = Node(own.endpoint, cluster, "n1", close_timeout_s=1.5)
        await n.m.start()
        getattr(own, fault)()
        t0 = time.monotonic()
        await n.m.close()
        assert time.monotonic() - t0 < 3.0 and not n.m.healthy  # close_timeout 1.5 s + slack
        assert n.ids() == {"n1"} and len(n.views) == 1
