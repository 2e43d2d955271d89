"""The HTTP range API of a CacheNode (FakeOrigin, real DiskStore) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from multidict import CIMultiDict
from yarl import URL

from cachenode.checksum import crc32c
from cachenode.config import NodeConfig
from cachenode.node import CacheNode
from tests.fakes import FakeOrigin, blob, down
from tests.fdcheck import open_fds, settle_fds

BS = 64 * 1024
LAST_MODIFIED = 1_700_000_000.0  # what FakeOrigin reports


@dataclass
class Node:
    node: CacheNode
    origin: FakeOrigin
    http: aiohttp.ClientSession
    base: str

    def put(self, key: str, data: bytes, bucket: str = "bkt") -> str:
        return self.origin.put(bucket, key, data)

    def url(self, raw_path: str) -> URL:
        return URL(self.base + raw_path, encoded=True)  # sent exactly as written

    def metric(self, name: str, **labels: str) -> float:
        return self.node.metrics.value(name, **labels)


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=64 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None,
                     fill_timeout_s=2.0)
    origin = FakeOrigin()
    async with CacheNode(cfg, origin=origin) as n, aiohttp.ClientSession() as http:
        yield Node(n, origin, http, f"http://127.0.0.1:{n.http_port}")


async def get(n: Node, path: str, headers: dict[str, str] | None = None,
              method: str = "GET") -> tuple[int, CIMultiDict[str], bytes]:
    async with n.http.request(method, n.url(path), headers=headers or {}) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def raw_request(port: int, request_line: str) -> tuple[int, bytes]:
    """Send a request line byte for byte (no client-side normalisation); return status, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{request_line}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.asyncio
async def test_full_get_and_headers(node: Node) -> None:
    data = blob(3 * BS + 17)
    etag = node.put("model.bin", data)
    status, headers, body = await get(node, "/bkt/model.bin")
    assert status == 200 and body == data
    assert headers["ETag"] == etag
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Length"] == str(len(data))
    assert email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp() == LAST_MODIFIED
    assert "Content-Range" not in headers
    await node.node.filler.flush()
    status, headers, body = await get(node, "/bkt/model.bin")  # warm: sent from disk
    assert status == 200 and body == data
    assert sum(node.origin.gets.values()) == 4
    assert node.metric("blockcache_served_bytes_total", source="disk") == len(data)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("rng", "start", "end"),
    [("bytes=0-0", 0, 0), ("bytes=5-", 5, None), ("bytes=-10", -10, None),
     ("bytes=-999999999", 0, None), (f"bytes={BS - 3}-{BS + 2}", BS - 3, BS + 2),
     ("bytes=100-99999999", 100, None), (f"bytes={2 * BS}-{2 * BS}", 2 * BS, 2 * BS)],
)
async def test_range_206(node: Node, rng: str, start: int, end: int | None) -> None:
    data = blob(2 * BS + 50)
    node.put("m", data)
    size = len(data)
    lo = start if start >= 0 else size + start
    hi = size - 1 if end is None else end
    for _ in range(2):  # cold, then warm
        status, headers, body = await get(node, "/bkt/m", {"Range": rng})
        assert status == 206
        assert headers["Content-Range"] == f"bytes {lo}-{hi}/{size}"
        assert headers["Content-Length"] == str(hi - lo + 1)
        assert body == data[lo:hi + 1]


@pytest.mark.asyncio
@pytest.mark.parametrize("rng", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=a-b",
                                 "items=0-1", "bytes=5-1", "bytes=0-1,3-4", "bytes="])
async def test_range_416(node: Node, rng: str) -> None:
    node.put("m", blob(100))
    status, headers, body = await get(node, "/bkt/m", {"Range": rng})
    assert status == 416
    assert headers["Content-Range"] == "bytes */100"
    doc = json.loads(body)
    assert doc["error"] == "RangeNotSatisfiable"
    assert "range" in doc["reason"].lower()
    assert not node.origin.gets


@pytest.mark.asyncio
async def test_if_range(node: Node) -> None:
    data = blob(1000)
    etag = node.put("m", data)
    date = email.utils.formatdate(LAST_MODIFIED, usegmt=True)
    older = email.utils.formatdate(LAST_MODIFIED - 3600, usegmt=True)
    # A date is a weak validator (1 s resolution): never trusted, the full body is sent.
    cases = [(etag, 206), ('"stale"', 200), ("W/" + etag, 200), (date, 200), (older, 200),
             ("not a date", 200)]
    for validator, expected in cases:
        status, headers, body = await get(node, "/bkt/m",
                                          {"Range": "bytes=10-19", "If-Range": validator})
        assert status == expected, validator
        if expected == 206:
            assert body == data[10:20] and headers["Content-Range"] == "bytes 10-19/1000"
        else:
            assert body == data and "Content-Range" not in headers


@pytest.mark.asyncio
async def test_head(node: Node) -> None:
    data = blob(BS + 1)
    etag = node.put("m", data)
    status, headers, body = await get(node, "/bkt/m", method="HEAD")
    assert status == 200 and body == b""
    assert headers["Content-Length"] == str(BS + 1) and headers["ETag"] == etag
    assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = await get(node, "/bkt/m", {"Range": "bytes=-5"}, method="HEAD")
    assert status == 206 and body == b""
    assert headers["Content-Length"] == "5"
    assert headers["Content-Range"] == f"bytes {BS - 4}-{BS}/{BS + 1}"
    assert not node.origin.gets  # HEAD never reads blocks


@pytest.mark.asyncio
async def test_empty_object(node: Node) -> None:
    node.put("empty", b"")
    status, headers, body = await get(node, "/bkt/empty")
    assert status == 200 and body == b"" and headers["Content-Length"] == "0"
    status, headers, _ = await get(node, "/bkt/empty", {"Range": "bytes=0-"})
    assert status == 416 and headers["Content-Range"] == "bytes */0"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("key", "raw_path"),
    [("a b/c d.bin", "/bkt/a%20b/c%20d.bin"),
     ("модель/模型.bin", "/bkt/" + quote("модель/模型.bin")),
     ("100%", "/bkt/100%25"),
     ("100%25", "/bkt/100%2525"),
     ("a+b", "/bkt/a+b"),
     ("a b", "/bkt/a%20b"),
     ("...", "/bkt/..."),
     ("q?x=1", "/bkt/q%3Fx=1")],
)
async def test_odd_keys(node: Node, key: str, raw_path: str) -> None:
    data = blob(300, seed=len(key))
    node.put(key, data)
    node.put("decoy", b"wrong")  # a wrong decode must not find something else
    status, _, body = await get(node, raw_path)
    assert status == 200, body
    assert body == data
    assert ("bkt", key) in node.origin.heads


@pytest.mark.asyncio
async def test_verbatim_origin_keys_keep_every_spelling(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=64 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None,
                     origin_keys="verbatim")
    origin = FakeOrigin()
    keys = ["a//b///c", "/lead", "dir/", "a\\b", "a/b"]
    for i, key in enumerate(keys):
        origin.put("bkt", key, blob(100 + i))
    async with CacheNode(cfg, origin=origin) as n, aiohttp.ClientSession() as http:
        for i, key in enumerate(keys):
            url = URL(f"http://127.0.0.1:{n.http_port}/bkt/{quote(key)}", encoded=True)
            async with http.get(url) as resp:
                assert resp.status == 200 and await resp.read() == blob(100 + i), key


@pytest.mark.asyncio
async def test_plus_is_not_a_space(node: Node) -> None:
    node.put("a b", b"space")
    status, _, body = await get(node, "/bkt/a+b")
    assert status == 404, body


@pytest.mark.asyncio
async def test_query_string_is_not_part_of_key(node: Node) -> None:
    node.put("k", b"data")
    status, _, body = await get(node, "/bkt/k?versionId=1")
    assert status == 200 and body == b"data"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "request_line",
    ["GET /bkt/a/../../etc/passwd HTTP/1.1",
     "GET /bkt/../etc/passwd HTTP/1.1",
     "GET /bkt/%2e%2e/x HTTP/1.1",
     "GET /bkt/a/%2E%2E/%2E%2E/x HTTP/1.1",
     "GET /bkt/a/%2e%2e%2fx HTTP/1.1",
     "GET /bkt/./x HTTP/1.1",
     "GET /bkt/a/.. HTTP/1.1",
     "GET /bkt/a%00b HTTP/1.1",
     "GET /bkt/%ff%fe HTTP/1.1",
     "GET /bkt/%ZZ HTTP/1.1",
     "GET /bkt/x%2 HTTP/1.1",
     "GET /bkt/x% HTTP/1.1",
     "GET /bkt/x?versionId=%G1 HTTP/1.1",
     "GET /bkt/a//x HTTP/1.1",
     "GET /bkt//x HTTP/1.1",
     "GET /bkt/x/ HTTP/1.1",
     "GET /bkt/a%5Cx HTTP/1.1",
     "GET /bkt/..%5Cx HTTP/1.1",
     "GET /../../etc/passwd HTTP/1.1",
     "GET /bkt HTTP/1.1",
     "GET / HTTP/1.1"],
)
async def test_path_tricks_rejected_raw(node: Node, request_line: str) -> None:
    node.put("x", b"secret")
    node.put("passwd", b"secret", bucket="etc")
    node.put("etc/passwd", b"secret")
    status, body = await raw_request(node.node.http_port, request_line)
    assert status == 400, (request_line, status, body)
    assert b"secret" not in body
    assert "reason" in json.loads(body)
    assert not node.origin.heads and not node.origin.gets


@pytest.mark.asyncio
async def test_bad_names_400(node: Node) -> None:
    for path in ("/ab/k", "/" + "b" * 64 + "/k", "/bk%20t/k", "/bkt%2Fx/k",
                 "/bkt/" + "k" * 1025, "/bkt/" + quote("é" * 600)):
        status, headers, body = await get(node, path)
        assert status == 400, path
        assert headers["Content-Type"].startswith("application/json")
        doc = json.loads(body)
        assert doc["error"] == "BadRequest" and doc["reason"]
    longest = "/".join(["k" * 204] * 5)  # 1024 bytes, no segment over 255 (a file name)
    status, _, _ = await get(node, "/bkt/" + longest)
    assert status == 404  # exactly the limit is a valid (unknown) key
    assert list(node.origin.heads) == [("bkt", longest)]


@pytest.mark.asyncio
async def test_unknown_key_404(node: Node) -> None:
    status, headers, body = await get(node, "/bkt/no/such/key")
    assert status == 404
    assert headers["X-Blockcache-Error"] == "OriginNotFound"
    doc = json.loads(body)
    assert doc == {"error": "OriginNotFound",
                   "reason": "no such key at origin: s3://bkt/no/such/key"}


@pytest.mark.asyncio
async def test_object_changed_is_retried_with_new_version(node: Node) -> None:
    old_etag = node.put("m", blob(2 * BS, seed=1))
    status, headers, _ = await get(node, "/bkt/m", method="HEAD")  # metadata cached
    assert status == 200 and headers["ETag"] == old_etag
    new = blob(2 * BS, seed=2)
    new_etag = node.put("m", new)
    status, headers, body = await get(node, "/bkt/m", {"Range": f"bytes={BS}-"})
    assert status == 206 and body == new[BS:] and headers["ETag"] == new_etag
    assert node.origin.heads[("bkt", "m")] == 2  # the stale ETag was dropped and re-HEADed
    status, headers, body = await get(node, "/bkt/m")
    assert status == 200 and body == new and headers["ETag"] == new_etag


@pytest.mark.asyncio
async def test_origin_down(node: Node) -> None:
    data = blob(3 * BS)
    node.put("m", data)
    assert (await get(node, "/bkt/m", {"Range": f"bytes=0-{BS - 1}"}))[0] == 206
    node.origin.fail = down("bkt", "m")
    node.origin.delay_s = 0.0
    status, _, body = await get(node, "/bkt/m", {"Range": "bytes=10-99"})
    assert status == 206 and body == data[10:100]  # cached range still served
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, _, body = await get(node, "/bkt/m", {"Range": f"bytes={BS}-{BS + 9}"})
    assert loop.time() - t0 < 1.0  # fails fast
    assert status == 502
    doc = json.loads(body)
    assert doc["error"] == "OriginUnavailable" and "connection refused" in doc["reason"]
    status, _, _ = await get(node, "/bkt/other")  # nothing cached: 502, not 404
    assert status == 502
    node.origin.fail = None
    status, _, body = await get(node, "/bkt/m", {"Range": f"bytes={BS}-{BS + 9}"})
    assert status == 206 and body == data[BS:BS + 10]


@pytest.mark.asyncio
async def test_fill_timeout_503(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=8 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None,
                     fill_timeout_s=0.05)
    origin = FakeOrigin()
    origin.put("bkt", "m", blob(BS))
    async with CacheNode(cfg, origin=origin) as n:
        await n.service.stat("bkt", "m")
        origin.delay_s = 5.0
        async with (aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{n.http_port}/bkt/m") as resp):
            assert resp.status == 503
            assert "not filled within" in (await resp.json())["reason"]


@pytest.mark.asyncio
async def test_concurrent_readers_one_fill(node: Node) -> None:
    data = blob(2 * BS)
    node.put("m", data)
    node.origin.delay_s = 0.05
    results = await asyncio.gather(*(get(node, "/bkt/m") for _ in range(20)))
    assert all(status == 200 and body == data for status, _, body in results)
    assert node.origin.gets == {("bkt", "m", 0): 1, ("bkt", "m", BS): 1}
    assert node.origin.heads[("bkt", "m")] == 1


@pytest.mark.asyncio
async def test_no_fd_leak_over_many_requests(node: Node) -> None:
    data = blob(3 * BS)
    node.put("m", data)
    await get(node, "/bkt/m")
    fds = open_fds()
    for i in range(20):
        status, _, body = await get(node, "/bkt/m", {"Range": f"bytes={i * 1000}-{2 * BS + i}"})
        assert status == 206 and body == data[i * 1000:2 * BS + i + 1]
    await settle_fds(fds)


@pytest.mark.asyncio
async def test_health_ready_metrics(node: Node) -> None:
    async with node.http.get(node.base + "/healthz") as resp:
        assert resp.status == 200 and (await resp.text()).strip() == "ok"
    async with node.http.get(node.base + "/readyz") as resp:
        assert resp.status == 200 and (await resp.text()).strip() == "ready"
    node.put("m", blob(10))
    await get(node, "/bkt/m")
    await node.node.filler.flush()  # the block reaches the disk behind the first reader
    await get(node, "/bkt/m")
    await get(node, "/bkt/nope")
    async with node.http.get(node.base + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    for line in ('blockcache_requests_total{api="http",status="200"} ',
                 'blockcache_requests_total{api="http",status="404"} 1.0',
                 "blockcache_block_hits_total 1.0", "blockcache_block_misses_total 1.0",
                 "blockcache_fills_total 1.0", "blockcache_store_blocks 1.0",
                 'blockcache_metadata_lookups_total{result="hit"} 1.0'):
        assert line in text, line
    assert "_created" not in text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] not in "#")
    assert float(samples["blockcache_store_capacity_bytes"]) == 64 * BS
    assert float(samples["blockcache_store_bytes"]) == 10


@pytest.mark.asyncio
async def test_readyz_reports_failed_disk(node: Node) -> None:
    node.node.store.health.fail("write failed: EIO")
    async with node.http.get(node.base + "/readyz") as resp:
        assert resp.status == 503
        assert "EIO" in await resp.text()


@pytest.mark.asyncio
async def test_reader_gone_before_headers_leaks_no_fd(node: Node) -> None:
    data = blob(4 * BS)
    node.put("m", data)
    assert (await get(node, "/bkt/m"))[2] == data  # every block on disk
    node.origin.delay_s = 0.05  # a slow HEAD holds the request before its headers go out
    fds = open_fds()
    for i in range(5):
        node.node.service.invalidate("bkt", "m")
        heads = node.origin.heads[("bkt", "m")]
        _, writer = await asyncio.open_connection("127.0.0.1", node.node.http_port)
        writer.write(b"GET /bkt/m HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(2):
            while node.origin.heads[("bkt", "m")] == heads:
                await asyncio.sleep(0.001)
        writer.transport.abort()  # gone while the node is still stat-ing the object
        async with asyncio.timeout(2):  # the handler finishes (and fails) on its own
            while node.metric("blockcache_requests_total", api="http", status="499") <= i:
                await asyncio.sleep(0.005)
    await settle_fds(fds)


@pytest.mark.asyncio
async def test_object_changed_after_headers_cuts_the_body(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=8 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None,
                     readahead_blocks=0)
    origin = FakeOrigin()
    old = blob(3 * BS, seed=1)
    origin.put("bkt", "m", old)
    async with CacheNode(cfg, origin=origin) as n, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{n.http_port}/bkt/m"
        async with http.get(url, headers={"Range": f"bytes=0-{BS - 1}"}) as resp:
            assert await resp.read() == old[:BS]  # block 0 and the metadata cached
        origin.put("bkt", "m", blob(3 * BS, seed=2))
        async with http.get(url) as resp:
            assert resp.status == 200  # headers went out with block 0 of the old version
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        async with http.get(url) as resp:  # the next request sees the new version whole
            assert resp.status == 200 and await resp.read() == blob(3 * BS, seed=2)


@pytest.mark.asyncio
async def test_overloaded_503(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=8 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None,
                     max_waiting_fills=1, readahead_blocks=0)
    origin = FakeOrigin()
    origin.put("bkt", "a", blob(BS))
    origin.put("bkt", "b", blob(BS))
    async with CacheNode(cfg, origin=origin) as n, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{n.http_port}/bkt/"
        await n.service.stat("bkt", "a")
        await n.service.stat("bkt", "b")
        origin.delay_s = 0.2
        slow = asyncio.create_task(http.get(base + "a"))
        async with asyncio.timeout(2):
            while not origin.gets:
                await asyncio.sleep(0.001)
        async with http.get(base + "b") as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert (await resp.json())["error"] == "Overloaded"
        async with await slow as resp:
            assert resp.status == 200 and await resp.read() == blob(BS)


@pytest.mark.asyncio
async def test_failed_start_releases_everything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=8 * BS,
                         http_addr=("127.0.0.1", port), grpc_addr=("127.0.0.1", 0), s3_addr=None)
        fds = open_fds()
        with pytest.raises(OSError):
            async with CacheNode(cfg, origin=FakeOrigin()):
                pass
        await settle_fds(fds)
    # The index lock was released: the same data dir opens again.
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=8 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None)
    async with CacheNode(cfg, origin=FakeOrigin()) as n:
        assert n.http_port and n.grpc_port
        assert n.readiness() is None
    assert n.readiness() is not None


@pytest.mark.asyncio
async def test_if_match_pins_a_version(node: Node) -> None:
    etag = node.put("v.bin", blob(100))
    status, headers, body = await get(node, "/bkt/v.bin", {"If-Match": etag})
    assert status == 200 and body == blob(100)
    status, headers, body = await get(node, "/bkt/v.bin", {"If-Match": '"other"'})
    assert status == 412 and headers["X-Blockcache-Error"] == "PreconditionFailed"
    assert b"changed at origin" in body


@pytest.mark.asyncio
async def test_http_peer_client_reads_checked_blocks_and_maps_errors(node: Node) -> None:
    from cachenode.blocks import BlockRef, ObjectMeta
    from cachenode.errors import BlockNotCached, ObjectChanged, OriginNotFound, PeerUnavailable
    from cachenode.metrics import NodeMetrics
    from cachenode.peers_http import HttpPeerClient
    from tests.servers import free_port

    data = blob(2 * BS + 99, 5)
    etag = node.put("p.bin", data)
    meta = ObjectMeta("bkt", "p.bin", len(data), etag)
    peers = HttpPeerClient(NodeMetrics(), timeout_s=5.0)
    addr = f"127.0.0.1:{node.node.http_port}"
    try:
        last = BlockRef(meta, 2, BS)
        with pytest.raises(BlockNotCached):  # a handoff question: disk only, never a fill
            await peers.read_block(addr, last, hops=1, epoch=1, cached_only=True)
        assert node.origin.gets == {}
        assert await peers.read_block(addr, last, hops=1, epoch=1) == data[2 * BS:]  # filled
        await node.node.filler.flush()
        assert await peers.read_block(addr, last, hops=1, epoch=1, cached_only=True) == \
            data[2 * BS:]  # from disk now, with the recorded crc32
        with pytest.raises(OriginNotFound, match="no such key"):
            await peers.read_block(addr, BlockRef(ObjectMeta("bkt", "nope", 5, '"e"'), 0, BS),
                                   hops=1, epoch=1)
        with pytest.raises(ObjectChanged):
            await peers.read_block(addr, BlockRef(ObjectMeta("bkt", "p.bin", len(data),
                                                             '"old"'), 0, BS), hops=1, epoch=1)
        assert not peers.is_down(addr)  # the peer's answers are not transport failures
        dead = f"127.0.0.1:{free_port()}"
        with pytest.raises(PeerUnavailable):
            await peers.read_block(dead, last, hops=1, epoch=1)
        assert peers.is_down(dead)
    finally:
        await peers.close()


@pytest.mark.asyncio
async def test_forwarded_reads_of_memory_blocks_carry_a_crc(node: Node) -> None:
    node.put("f.bin", blob(3 * BS, 9))
    status, headers, body = await get(node, "/bkt/f.bin", {"Range": f"bytes={BS}-{2 * BS - 1}",
                                                           "X-Blockcache-Hops": "1"})
    assert status == 206 and int(headers["X-Blockcache-Crc32c"]) == crc32c(body)


@pytest.mark.asyncio
async def test_an_unanswered_handoff_question_does_not_mark_the_peer_down() -> None:
    import asyncio

    from aiohttp import web

    from cachenode.blocks import BlockRef, ObjectMeta
    from cachenode.errors import PeerUnavailable
    from cachenode.metrics import NodeMetrics
    from cachenode.peers_http import HttpPeerClient

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    addr = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    peers = HttpPeerClient(NodeMetrics(), timeout_s=30.0)
    try:
        ref = BlockRef(ObjectMeta("bkt", "k", BS, '"e"'), 0, BS)
        with pytest.raises(PeerUnavailable, match="no answer within 0.2s"):
            await peers.read_block(addr, ref, hops=1, epoch=1, cached_only=True, timeout_s=0.2)
        assert not peers.is_down(addr)  # busy is not dead: its blocks are still read from it
    finally:
        await peers.close()
        await runner.cleanup()


@pytest.mark.asyncio
@pytest.mark.parametrize("rng", [None, f"bytes={BS}-{2 * BS - 1}", f"bytes={BS + 10}-{BS + 25}",
                                 f"bytes={BS - 4}-{BS + 3}"])
async def test_a_block_corrupted_on_disk_never_reaches_a_plain_reader(node: Node,
                                                                      rng: str | None) -> None:
    data = blob(3 * BS, seed=4)
    node.put("c.bin", data)
    assert (await get(node, "/bkt/c.bin"))[2] == data
    await node.node.filler.flush()
    ref_id = next(e.block_id for e in node.node.store._index.entries()  # type: ignore[union-attr]
                  if e.index == 1)
    path = node.node.store.root / "blocks" / ref_id[:2] / ref_id[2:4] / ref_id
    raw = bytearray(path.read_bytes())
    raw[100:116] = bytes(16)  # 16 bytes overwritten, size kept: a torn write or bit rot
    path.write_bytes(bytes(raw))
    status, _, body = await get(node, "/bkt/c.bin", {"Range": rng} if rng else None)
    lo, hi = (0, len(data) - 1) if rng is None else map(int, rng[6:].split("-"))
    assert status == (200 if rng is None else 206) and body == data[lo:hi + 1]
    assert node.metric("blockcache_corrupt_blocks_total") == 1
    assert sum(node.origin.gets.values()) == 4  # the bad block was dropped and filled again
    await node.node.filler.flush()
    assert path.read_bytes() == data[BS:2 * BS]


@pytest.mark.asyncio
@pytest.mark.parametrize(("size", "rng", "cached_only"), [
    ("0", None, "1"), ("0", "bytes=0-0", "0"), ("0", None, "0"),  # a size with no blocks
    (str(3 * BS + 17), None, "1"),  # no Range: a peer always names one block
    (str(3 * BS + 17), f"bytes=0-{2 * BS - 1}", "1"),  # two blocks
    (str(3 * BS + 17), f"bytes=10-{BS - 1}", "0"),  # part of one
])
async def test_a_forwarded_read_must_name_one_whole_block(node: Node, size: str,
                                                          rng: str | None,
                                                          cached_only: str) -> None:
    data = blob(3 * BS + 17)
    etag = node.put("f.bin", data)
    headers = {"If-Match": etag, "X-Blockcache-Hops": "1", "X-Blockcache-Size": size,
               "X-Blockcache-Cached-Only": cached_only}
    if rng:
        headers["Range"] = rng
    status, got, body = await get(node, "/bkt/f.bin", headers)
    assert status == 400, (status, body[:200])
    assert got["X-Blockcache-Error"] == "BadRequest"
    assert "one whole block" in json.loads(body)["reason"]
    assert not node.origin.gets  # refused before anything was filled


@pytest.mark.asyncio
async def test_a_forwarded_read_with_a_wrong_size_gets_no_other_block(node: Node) -> None:
    data = blob(3 * BS + 17)
    etag = node.put("f.bin", data)
    assert (await get(node, "/bkt/f.bin"))[2] == data
    await node.node.filler.flush()
    headers = {"If-Match": etag, "X-Blockcache-Hops": "1", "X-Blockcache-Size": str(BS),
               "X-Blockcache-Cached-Only": "1", "Range": f"bytes=0-{BS - 1}"}
    status, got, _ = await get(node, "/bkt/f.bin", headers)  # block 0 of a 1-block "version"
    assert status == 404 and got["X-Blockcache-Error"] == "BlockNotCached"
    headers["X-Blockcache-Size"] = str(len(data))
    status, _, body = await get(node, "/bkt/f.bin", headers)
    assert status == 206 and body == data[:BS]


@pytest.mark.asyncio
async def test_conditional_gets_304_and_412_before_any_fill(node: Node) -> None:
    etag = node.put("c.bin", blob(3 * BS))
    lm = email.utils.formatdate(LAST_MODIFIED, usegmt=True)
    earlier = email.utils.formatdate(LAST_MODIFIED - 60, usegmt=True)
    for method in ("GET", "HEAD"):
        status, headers, body = await get(node, "/bkt/c.bin", {"If-None-Match": etag}, method)
        assert (status, body, headers["ETag"]) == (304, b"", etag)  # was 200 with the body
        status, _, body = await get(node, "/bkt/c.bin", {"If-Modified-Since": lm}, method)
        assert (status, body) == (304, b"")
        status, headers, _ = await get(node, "/bkt/c.bin", {"If-Unmodified-Since": earlier},
                                       method)
        assert status == 412 and headers["X-Blockcache-Error"] == "ConditionFailed"
    assert sum(node.origin.gets.values()) == 0  # none of these read a byte
    status, _, body = await get(node, "/bkt/c.bin", {"If-Match": f'"x", {etag}'})
    assert status == 200 and body == blob(3 * BS)
    status, _, body = await get(node, "/bkt/c.bin", {"If-None-Match": '"other"',
                                                     "If-Modified-Since": lm})
    assert status == 200 and body == blob(3 * BS)  # If-Modified-Since yields to If-None-Match
