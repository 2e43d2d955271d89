"""The connection layer of a CacheNode in this process (asyncio loop, FakeOrigin)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from cachenode.config import NodeConfig
from cachenode.http_limits import REFUSING_MAX
from cachenode.http_server import REFUSE_WAIT_S
from cachenode.node import CacheNode
from tests.fakes import FakeOrigin

CAP, HEADER_S = 3, 1.5
SLACK_S = 2.0


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[CacheNode]:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=64 * 1024,
                     capacity_bytes=64 * 64 * 1024, http_addr=("127.0.0.1", 0),
                     grpc_addr=("127.0.0.1", 0), s3_addr=None, max_connections=CAP,
                     header_timeout_s=HEADER_S, idle_timeout_s=5.0)
    origin = FakeOrigin()
    origin.put("bkt", "k", b"data")
    async with CacheNode(cfg, origin=origin) as n:
        yield n


async def until_closed(reader: asyncio.StreamReader, timeout_s: float) -> tuple[bytes, float]:
    """Return what the node sent until it closed the connection, and when."""
    t0 = time.monotonic()
    data = await asyncio.wait_for(reader.read(), timeout_s)
    return data, time.monotonic() - t0


async def request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return (await until_closed(reader, 5.0))[0]
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_over_the_cap_a_connection_gets_503_then_is_served_again(
        node: CacheNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    held = [await asyncio.open_connection("127.0.0.1", node.http_port) for _ in range(CAP)]
    extra = [await asyncio.open_connection("127.0.0.1", node.http_port)
             for _ in range(REFUSING_MAX + 4)]
    try:
        t0 = time.monotonic()
        asked = await request(node.http_port, b"GET /bkt/k HTTP/1.1\r\nHost: x\r\n\r\n")
        assert asked.startswith(b"HTTP/1.1 503 ")
        assert time.monotonic() - t0 < REFUSE_WAIT_S  # a head is answered at once
        assert json.loads(asked.partition(b"\r\n\r\n")[2])["error"] == "Overloaded"
        got = await asyncio.gather(*(until_closed(r, REFUSE_WAIT_S + SLACK_S)
                                     for r, _ in extra))
        for data, _ in got:  # silent ones: after REFUSE_WAIT_S, or at once past REFUSING_MAX
            assert data.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in data
        for r, _ in held:  # silent: cut at the header timeout, which frees their places
            assert (await until_closed(r, HEADER_S + SLACK_S))[0] == b""
    finally:
        for _, w in held + extra:
            w.close()
    ok = await request(node.http_port, b"GET /bkt/k HTTP/1.1\r\nHost: x\r\nConnection: close"
                                       b"\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"data")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "refused with 503" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited
    assert node.metrics.value("blockcache_http_connections_refused_total") == REFUSING_MAX + 5


@pytest.mark.asyncio
async def test_a_refusal_pending_at_shutdown_is_closed(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path, http_addr=("127.0.0.1", 0),
                     grpc_addr=("127.0.0.1", 0), s3_addr=None, max_connections=1,
                     header_timeout_s=5.0)
    async with CacheNode(cfg, origin=FakeOrigin()) as n:
        first = await asyncio.open_connection("127.0.0.1", n.http_port)
        second = await asyncio.open_connection("127.0.0.1", n.http_port)
        deadline = time.monotonic() + 2.0
        while not n.metrics.value("blockcache_http_connections_refused_total"):
            assert time.monotonic() < deadline, "the second connection was not refused in 2 s"
            await asyncio.sleep(0.01)  # accepted and refused, waiting for a head
    try:
        data, _ = await until_closed(second[0], 2.0)
        assert data.startswith(b"HTTP/1.1 503 ")
        assert (await until_closed(first[0], 2.0))[0] == b""
    finally:
        for _, w in (first, second):
            w.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /bkt/k HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
    (b"GET /bkt/k HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    (b"GET /bkt/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400)])
async def test_malformed_heads_are_logged_without_a_traceback(
        node: CacheNode, caplog: pytest.LogCaptureFixture, raw: bytes, status: int) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await request(node.http_port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == status and json.loads(body)["reason"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert node.metrics.value("blockcache_requests_total", api="http",
                              status=str(status)) == 1
