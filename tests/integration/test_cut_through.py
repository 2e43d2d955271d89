"""Cut-through fills keep every invariant: a node process, SeaweedFS behind a slow link.

Readers of a block being filled are sent its bytes as they arrive (cachenode/filling.py). The
link (a CountingProxy with a token bucket and a delay) makes each fill take long enough that
readers arrive while it streams: they must get exact bytes, one origin GET per block, a cut
body must fail them all and leave nothing cached, and a reader that takes nothing must not
hold up the fill or the others.
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess
from tests.s3proxy import CountingProxy
from tests.servers import SeaweedFS

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB


@pytest.fixture
def link(s3: SeaweedFS) -> Iterator[CountingProxy]:
    """A 32 MiB/s link with 20 ms before each response: a 4 MiB block takes ~130 ms."""
    with CountingProxy(s3.endpoint_url, rate_bytes_s=32 * MiB, latency_s=0.02) as p:
        yield p


@pytest.fixture
def node(tmp_path: Path, s3: SeaweedFS, link: CountingProxy) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "n", {**s3.env(), "AWS_ENDPOINT_URL": link.endpoint_url},
                    "--capacity", "1GiB", "--send-timeout", "60s")
    n.start()
    yield n
    n.stop()


def gets(link: CountingProxy, bucket: str, key: str) -> int:
    """Return the range GETs of one object that reached the origin."""
    return sum(n for (path, _), n in link.range_gets.items() if path == f"/{bucket}/{key}")


def read(node: NodeProcess, path: str, lo: int, hi: int,
         on_first: threading.Event | None = None) -> tuple[bytes, float, float]:
    """Return (bytes lo..hi, seconds to the first byte, seconds to the last) of one GET."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=60)
    try:
        conn.request("GET", path, headers={"Range": f"bytes={lo}-{hi}"})
        r = conn.getresponse()
        assert r.status == 206, (r.status, r.read()[:200])
        first = r.read(1)
        t1 = time.monotonic()
        if on_first is not None:
            on_first.set()
        body = first + r.read()
        return body, t1 - t0, time.monotonic() - t0
    finally:
        conn.close()


def test_random_ranges_are_byte_exact_while_fills_stream(node: NodeProcess, s3: SeaweedFS,
                                                         link: CountingProxy,
                                                         bucket: str) -> None:
    data = os.urandom(6 * BS + 12345)
    s3.put_object(bucket, "r.bin", data)
    rnd = random.Random(13)
    spans = []
    for _ in range(48):  # short and long, inside a block and across blocks, odd offsets
        lo = rnd.randrange(len(data))
        spans.append((lo, min(len(data) - 1, lo + rnd.choice((0, 1, 4095, 3 * MiB, 9 * MiB)))))
    link.reset()
    with ThreadPoolExecutor(48) as pool:
        got = list(pool.map(lambda s: read(node, f"/{bucket}/r.bin", *s), spans))
    for (lo, hi), (body, _, _) in zip(spans, got, strict=True):
        assert body == data[lo:hi + 1], (lo, hi)
    assert gets(link, bucket, "r.bin") <= 7  # one GET per block (of those any span touched)
    assert node.metric("blockcache_fills_total") == gets(link, bucket, "r.bin")


def test_a_reader_that_joins_a_fill_half_way_gets_whole_correct_bytes(
        node: NodeProcess, s3: SeaweedFS, link: CountingProxy, bucket: str) -> None:
    link.rate_bytes_s = 8 * MiB  # a block takes half a second: there is a middle to join in
    data = os.urandom(2 * BS)
    s3.put_object(bucket, "j.bin", data)
    link.reset()
    times: dict[str, tuple[float, float, float]] = {}
    streaming = threading.Event()

    def first() -> bytes:
        t = time.monotonic()
        body, ttfb, total = read(node, f"/{bucket}/j.bin", 0, len(data) - 1, streaming)
        times["first"] = (t, t + ttfb, t + total)
        return body

    with ThreadPoolExecutor(1) as pool:
        a = pool.submit(first)
        assert streaming.wait(30)
        time.sleep(0.2)  # block 0 is under half-way: it takes 0.5 s on the link
        t = time.monotonic()
        body_b, _, total_b = read(node, f"/{bucket}/j.bin", 0, len(data) - 1)
        body_a = a.result()
    start_a, first_byte_a, end_a = times["first"]
    assert first_byte_a < t < end_a  # b came while a's fill was streaming
    assert body_a == data and body_b == data
    assert gets(link, bucket, "j.bin") == 2  # b joined the fills: no second GET
    assert node.metric("blockcache_singleflight_joins_total") >= 1


def test_a_body_cut_mid_block_fails_every_waiter_and_caches_nothing(
        node: NodeProcess, s3: SeaweedFS, link: CountingProxy, bucket: str) -> None:
    data = os.urandom(BS)
    s3.put_object(bucket, "c.bin", data)
    link.reset()
    link.latency_s = 0.3  # every waiter is in before the first byte
    link.cut_next(3, after_bytes=MiB + 7)  # each attempt, resumed where it stopped, is cut
    barrier = threading.Barrier(8)

    def waiter(_: int) -> str:
        barrier.wait()
        conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=60)
        try:
            conn.request("GET", f"/{bucket}/c.bin", headers={"Range": f"bytes=0-{BS - 1}"})
            r = conn.getresponse()
            if r.status != 206:
                return f"status {r.status}"
            try:
                body = r.read()
            except (http.client.IncompleteRead, ConnectionError) as e:
                return f"cut: {type(e).__name__}"
            assert body != data, "a cut fill must not be served whole"
            return f"short body {len(body)}"  # http.client saw the connection end early
        finally:
            conn.close()

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(waiter, range(8)))
    assert all(o.startswith(("status 5", "cut:")) for o in outcomes), outcomes
    assert gets(link, bucket, "c.bin") == 3  # one fill for all 8, every attempt cut
    assert node.metric("blockcache_store_blocks") == 0  # nothing cached
    link.latency_s = 0.02
    status, _, body = node.get(f"/{bucket}/c.bin")
    assert status == 200 and body == data  # the next read fills it afresh
    assert gets(link, bucket, "c.bin") == 4


def test_a_slow_reader_does_not_slow_the_fill_or_the_other_readers(
        node: NodeProcess, s3: SeaweedFS, link: CountingProxy, bucket: str) -> None:
    data = os.urandom(8 * BS)  # a second of link time
    s3.put_object(bucket, "s.bin", data)
    link.reset()
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", node.http_port))
    try:  # asks for everything, takes nothing (the send timeout here is 60 s)
        stalled.sendall(f"GET /{bucket}/s.bin HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.1)
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda _: read(node, f"/{bucket}/s.bin", 0, len(data) - 1),
                                range(4)))
        took = time.monotonic() - t0
        assert all(body == data for body, _, _ in got)
        assert took < 8.0, took  # ~1 s of link; a reader held up by the stalled one: 60 s
        deadline = time.monotonic() + 10
        while node.metric("blockcache_store_blocks") < 8:  # every fill ended, on disk
            assert time.monotonic() < deadline, "the stalled reader held up the fills"
            time.sleep(0.05)
        assert gets(link, bucket, "s.bin") == 8
    finally:
        stalled.close()
