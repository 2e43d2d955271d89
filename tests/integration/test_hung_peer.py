"""A hung node (SIGSTOP: connected, silent) costs readers seconds, never a hang (real group).

The finding this injects: with an owner SIGSTOPped, a read through another node hung for over
150 s, abandoned reads used up that node's peer-read slots so that blocks of healthy owners
timed out too, and the ring-aware client stalled 120 s per block in flight.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from cachenode.blocks import block_id
from cachenode.ring import Ring
from client import CacheClient
from tests.cluster import LocalGroup
from tests.integration.test_node_s3 import pattern
from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB
BOUND_S = 12.0  # liveness probe after 2 s, unanswered for 3 s, then a fill from origin


def owners(bucket: str, key: str, etag: str, size: int) -> list[str]:
    ring = Ring({"n0": 100, "n1": 100, "n2": 100})
    return [ring.owner(block_id(bucket, key, etag, size, i, BS))
            for i in range((size + BS - 1) // BS)]


@pytest.fixture
def stopped(group: LocalGroup) -> Iterator[NodeProcess]:
    """Return node n2, SIGSTOPped (resumed at the end, so it can be stopped)."""
    n2 = group.nodes[2]
    assert n2.proc is not None
    yield n2
    os.kill(n2.proc.pid, signal.SIGCONT)


def stop(n: NodeProcess) -> None:
    assert n.proc is not None
    os.kill(n.proc.pid, signal.SIGSTOP)


def test_a_stopped_owner_is_failed_over_in_seconds(group: LocalGroup, s3, bucket,  # type: ignore[no-untyped-def]
                                                   stopped: NodeProcess) -> None:
    data = pattern(24 * BS, seed=11)
    s3.put_object(bucket, "h.bin", data)
    etag = group.nodes[0].get(f"/{bucket}/h.bin", method="HEAD")[1]["etag"]
    own = owners(bucket, "h.bin", etag, len(data))
    assert {"n0", "n1", "n2"} <= set(own), own  # 24 blocks: every node owns some
    stop(stopped)
    t0 = time.monotonic()
    status, _, body = group.nodes[0].get(f"/{bucket}/h.bin", timeout_s=60)
    took = time.monotonic() - t0
    assert status == 200 and body == data
    assert took < BOUND_S + 8, f"a read past a stopped owner took {took:.1f}s"
    assert group.nodes[0].metric("blockcache_peer_reads_total", result="failover") >= 1


@pytest.fixture
def small_group(tmp_path, proxy, s3, etcd) -> Iterator[LocalGroup]:  # type: ignore[no-untyped-def]
    """Three nodes with 64 KiB blocks: many distinct blocks for little data."""
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
    with LocalGroup(tmp_path, env, etcd.endpoint, 3, "--capacity", "256MiB",
                    "--block-size", "64KiB") as g:
        yield g


def test_abandoned_reads_of_a_stopped_owner_free_their_slots_at_once(  # type: ignore[no-untyped-def]
        small_group: LocalGroup, s3, bucket) -> None:
    group, bs = small_group, 64 * 1024
    data = pattern(300 * bs, seed=12)
    s3.put_object(bucket, "a.bin", data)
    etag = group.nodes[0].get(f"/{bucket}/a.bin", method="HEAD")[1]["etag"]
    ring = Ring({"n0": 100, "n1": 100, "n2": 100})
    own = [ring.owner(block_id(bucket, "a.bin", etag, len(data), i, bs)) for i in range(300)]
    of_n2 = [i for i, o in enumerate(own) if o == "n2"]
    of_n1 = [i for i, o in enumerate(own) if o == "n1"]
    assert len(of_n2) >= 72, len(of_n2)
    n0, n2 = group.nodes[0], group.nodes[2]
    assert n2.proc is not None
    os.kill(n2.proc.pid, signal.SIGSTOP)
    try:
        socks = []
        for i in of_n2[:72]:  # 72 readers ask n0 for distinct blocks of the stopped n2...
            s = socket.create_connection(("127.0.0.1", n0.http_port))
            s.sendall(f"GET /{bucket}/a.bin HTTP/1.1\r\nHost: x\r\nRange: bytes={i * bs}-"
                      f"{(i + 1) * bs - 1}\r\n\r\n".encode())
            socks.append(s)
        deadline = time.monotonic() + 5
        while n0.metric("blockcache_peer_reads_in_flight") < 32:
            assert time.monotonic() < deadline, "the reads never reached the stopped owner"
            time.sleep(0.02)
        assert n0.metric("blockcache_peer_reads_in_flight") == 32  # one peer: half the slots
        for s in socks:  # ...and leave: what only they waited for is given up at once
            s.close()
        # Given up one grace second after their readers left (a client asking again at
        # once joins the same read), sooner than the liveness probe would (5 s).
        deadline = time.monotonic() + 3.0
        while n0.metric("blockcache_peer_reads_in_flight") > 0:
            assert time.monotonic() < deadline, "abandoned peer reads kept their slots"
            time.sleep(0.02)
        t0 = time.monotonic()
        for i in of_n1[:20]:  # a healthy owner's blocks through the same node
            status, _, body = n0.get(f"/{bucket}/a.bin",
                                     {"Range": f"bytes={i * bs}-{(i + 1) * bs - 1}"},
                                     timeout_s=30)
            assert status == 206 and body == data[i * bs:(i + 1) * bs]
        took = time.monotonic() - t0
        assert took < 5, f"blocks of a healthy owner took {took:.1f}s after abandoned reads"
        i = of_n2[-1]  # and the stopped owner's own blocks (none asked yet) are failed over
        t0 = time.monotonic()
        status, _, body = n0.get(f"/{bucket}/a.bin",
                                 {"Range": f"bytes={i * bs}-{(i + 1) * bs - 1}"},
                                 timeout_s=60)
        assert status == 206 and body == data[i * bs:(i + 1) * bs]
        assert time.monotonic() - t0 < BOUND_S
    finally:
        os.kill(n2.proc.pid, signal.SIGCONT)


def test_the_ring_aware_client_reads_past_a_stopped_node(group: LocalGroup, s3, bucket,  # type: ignore[no-untyped-def]
                                                         stopped: NodeProcess) -> None:
    data = pattern(16 * BS, seed=13)
    s3.put_object(bucket, "c.bin", data)

    async def read() -> tuple[bytes, float]:
        async with CacheClient(group.seeds, concurrency=8) as c:
            info = await c.stat(bucket, "c.bin")
            stop(stopped)
            t0 = time.monotonic()
            got = await c.read_range(info)
            return got, time.monotonic() - t0

    got, took = asyncio.run(read())
    assert got == data
    assert took < BOUND_S + 10, f"the client took {took:.1f}s past a stopped node"
