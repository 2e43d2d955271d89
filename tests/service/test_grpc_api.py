"""The gRPC block service of a CacheNode (FakeOrigin, real DiskStore) on 127.0.0.1."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from cachenode.checksum import crc32c
from cachenode.config import NodeConfig
from cachenode.grpc_api import CHUNK_BYTES
from cachenode.node import CacheNode
from cachenode.pb import blockcache_pb2 as pb
from cachenode.pb import blockcache_pb2_grpc as pb_grpc
from tests.fakes import FakeOrigin, down

BS = 2 * 1024 * 1024  # larger than one gRPC message, so blocks are split into chunks
SIZE = 2 * BS + 123_457


def blob(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Node:
    node: CacheNode
    origin: FakeOrigin
    stub: pb_grpc.BlockCacheStub
    data: bytes
    etag: str


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=16 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None,
                     fill_timeout_s=2.0)
    origin = FakeOrigin()
    data = blob(SIZE)
    etag = origin.put("bkt", "model.bin", data)
    async with (CacheNode(cfg, origin=origin) as n,
                grpc.aio.insecure_channel(f"127.0.0.1:{n.grpc_port}") as channel):
        yield Node(n, origin, pb_grpc.BlockCacheStub(channel), data, etag)


async def read_range(n: Node, offset: int, length: int, key: str = "model.bin",
                     etag: str = "") -> list[pb.Chunk]:
    req = pb.ReadRangeRequest(bucket="bkt", key=key, offset=offset, length=length, etag=etag)
    return [c async for c in n.stub.ReadRange(req, timeout=10)]


def joined(chunks: list[pb.Chunk], start: int) -> bytes:
    """Return the bytes of a stream, checking that offsets are contiguous from `start`."""
    pos = start
    for c in chunks:
        assert c.offset == pos
        assert len(c.data) <= CHUNK_BYTES
        pos += len(c.data)
    return b"".join(c.data for c in chunks)


async def code_of(call: Any) -> grpc.StatusCode:
    """Return the status code a unary or streaming call fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return info.value.code()


@pytest.mark.asyncio
async def test_stat(node: Node) -> None:
    info = await node.stub.Stat(pb.StatRequest(bucket="bkt", key="model.bin"), timeout=5)
    assert (info.bucket, info.key, info.size, info.etag) == ("bkt", "model.bin", SIZE, node.etag)
    assert info.last_modified == 1_700_000_000.0 and info.block_size == BS


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, -1), (0, SIZE), (0, SIZE + 10**9), (1, 1), (BS - 5, 10), (BS + 3, -1),
     (SIZE - 1, -1), (SIZE - 1, 1), (123, CHUNK_BYTES + 7), (0, 2 * BS)],
)
async def test_read_range_byte_exact(node: Node, offset: int, length: int) -> None:
    end = SIZE if length < 0 else min(SIZE, offset + length)
    for _ in range(2):  # cold (bytes from origin), then warm (from disk files)
        chunks = await read_range(node, offset, length)
        assert joined(chunks, offset) == node.data[offset:end]
        assert chunks[0].HasField("info") and chunks[0].info.etag == node.etag
        assert chunks[0].info.size == SIZE
        assert not any(c.HasField("info") for c in chunks[1:])


@pytest.mark.asyncio
async def test_read_range_zero_length(node: Node) -> None:
    for offset in (0, 5, SIZE - 1):
        chunks = await read_range(node, offset, 0)
        assert len(chunks) == 1
        assert chunks[0].data == b"" and chunks[0].offset == offset
        assert chunks[0].info.etag == node.etag
    assert not node.origin.gets  # nothing to read, nothing fetched


def test_offset_is_unsigned() -> None:
    with pytest.raises(ValueError):  # "offset -1" cannot even be put on the wire
        pb.ReadRangeRequest(bucket="bkt", key="k", offset=-1, length=-1)


@pytest.mark.asyncio
async def test_read_range_empty_object(node: Node) -> None:
    node.origin.put("bkt", "empty", b"")
    chunks = await read_range(node, 0, -1, key="empty")
    assert [(c.data, c.offset, c.info.size) for c in chunks] == [(b"", 0, 0)]


@pytest.mark.asyncio
async def test_read_range_past_end(node: Node) -> None:
    req = pb.ReadRangeRequest(bucket="bkt", key="model.bin", offset=SIZE, length=-1)
    assert await code_of(node.stub.ReadRange(req)) == grpc.StatusCode.OUT_OF_RANGE
    req = pb.ReadRangeRequest(bucket="bkt", key="model.bin", offset=SIZE + 10, length=5)
    assert await code_of(node.stub.ReadRange(req)) == grpc.StatusCode.OUT_OF_RANGE


@pytest.mark.asyncio
async def test_read_range_pinned_etag(node: Node) -> None:
    chunks = await read_range(node, 0, 10, etag=node.etag)
    assert joined(chunks, 0) == node.data[:10]
    req = pb.ReadRangeRequest(bucket="bkt", key="model.bin", offset=0, length=10,
                              etag='"other"')
    assert await code_of(node.stub.ReadRange(req)) == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.asyncio
async def test_read_block_with_crc(node: Node) -> None:
    for index in (0, 1, 2):  # the last block is short
        block = node.data[index * BS:(index + 1) * BS]
        req = pb.ReadBlockRequest(bucket="bkt", key="model.bin", etag=node.etag,
                                  object_size=SIZE, index=index)
        for _ in range(2):  # cold, then warm
            chunks = [c async for c in node.stub.ReadBlock(req, timeout=10)]
            assert joined(chunks, index * BS) == block
            assert chunks[0].block_crc32c == crc32c(block)
            assert all(c.block_crc32c == 0 for c in chunks[1:])
    assert sum(node.origin.gets.values()) == 3


@pytest.mark.asyncio
async def test_read_block_errors(node: Node) -> None:
    def req(**kw: object) -> pb.ReadBlockRequest:
        fields: dict[str, object] = {"bucket": "bkt", "key": "model.bin", "etag": node.etag,
                                     "object_size": SIZE, "index": 0}
        fields.update(kw)
        return pb.ReadBlockRequest(**fields)  # type: ignore[arg-type]

    stub = node.stub
    assert await code_of(stub.ReadBlock(req(index=3))) == grpc.StatusCode.OUT_OF_RANGE
    assert await code_of(stub.ReadBlock(req(etag='"old"'))) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert await code_of(stub.ReadBlock(req(bucket="x"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(stub.ReadBlock(req(key="a/../b"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(stub.ReadBlock(req(key="nope"))) == grpc.StatusCode.NOT_FOUND


@pytest.mark.asyncio
async def test_not_found(node: Node) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.stub.Stat(pb.StatRequest(bucket="bkt", key="missing"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "s3://bkt/missing" in (info.value.details() or "")
    req = pb.ReadRangeRequest(bucket="bkt", key="missing", offset=0, length=-1)
    assert await code_of(node.stub.ReadRange(req)) == grpc.StatusCode.NOT_FOUND


@pytest.mark.asyncio
@pytest.mark.parametrize(("bucket", "key"), [("b", "k"), ("bk t", "k"), ("bkt", ""),
                                             ("bkt", "../etc/passwd"), ("bkt", "a/./b"),
                                             ("bkt", "k" * 1025), ("bkt", "a\x00b")])
async def test_invalid_argument(node: Node, bucket: str, key: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await node.stub.Stat(pb.StatRequest(bucket=bucket, key=key))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BadRequest" in (info.value.details() or "")
    req = pb.ReadRangeRequest(bucket=bucket, key=key, offset=0, length=-1)
    assert await code_of(node.stub.ReadRange(req)) == grpc.StatusCode.INVALID_ARGUMENT
    assert not node.origin.heads


@pytest.mark.asyncio
async def test_origin_down(node: Node) -> None:
    assert joined(await read_range(node, 0, 100), 0) == node.data[:100]  # block 0 cached
    node.origin.fail = down("bkt", "model.bin")
    assert joined(await read_range(node, 10, 90), 10) == node.data[10:100]
    req = pb.ReadRangeRequest(bucket="bkt", key="model.bin", offset=BS, length=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in node.stub.ReadRange(req, timeout=5):
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "connection refused" in (info.value.details() or "")
    assert await code_of(node.stub.Stat(pb.StatRequest(bucket="bkt", key="other"))) == \
        grpc.StatusCode.UNAVAILABLE
    block = pb.ReadBlockRequest(bucket="bkt", key="model.bin", etag=node.etag,
                                object_size=SIZE, index=1)
    assert await code_of(node.stub.ReadBlock(block)) == grpc.StatusCode.UNAVAILABLE
    node.origin.fail = None
    assert joined(await read_range(node, BS, 10), BS) == node.data[BS:BS + 10]


@pytest.mark.asyncio
async def test_request_metrics(node: Node) -> None:
    await node.stub.Stat(pb.StatRequest(bucket="bkt", key="model.bin"))
    await read_range(node, 0, 10)
    await code_of(node.stub.Stat(pb.StatRequest(bucket="bkt", key="nope")))
    m = node.node.metrics
    assert m.value("blockcache_requests_total", api="grpc", status="OK") == 2
    assert m.value("blockcache_requests_total", api="grpc", status="NOT_FOUND") == 1


@pytest.mark.asyncio
async def test_read_block_with_a_wrong_object_size_stores_nothing(node: Node) -> None:
    # The block id covers bucket, key, ETag and index but not the size: a request that lies
    # about the size must not plant a short block under the real id.
    bad = pb.ReadBlockRequest(bucket="bkt", key="model.bin", etag=node.etag,
                              object_size=BS + 10, index=1)
    assert await code_of(node.stub.ReadBlock(bad)) == grpc.StatusCode.INVALID_ARGUMENT
    assert not node.origin.gets
    chunks = await read_range(node, 0, -1)
    assert joined(chunks, 0) == node.data


@pytest.mark.asyncio
async def test_peer_client_reads_checked_blocks_and_maps_errors(node: Node) -> None:
    from cachenode.blocks import BlockRef, ObjectMeta
    from cachenode.errors import BlockNotCached, ObjectChanged, OriginNotFound, PeerUnavailable
    from cachenode.metrics import NodeMetrics
    from cachenode.peers import PeerClient
    from tests.servers import free_port

    peers = PeerClient(NodeMetrics(), timeout_s=5.0)
    addr = f"127.0.0.1:{node.node.grpc_port}"
    meta = ObjectMeta("bkt", "model.bin", SIZE, node.etag)
    try:
        last = BlockRef(meta, 2, BS)
        with pytest.raises(BlockNotCached):  # a handoff question: disk only, never a fill
            await peers.read_block(addr, last, hops=1, epoch=1, cached_only=True)
        assert node.origin.gets == {}
        got = await peers.read_block(addr, last, hops=1, epoch=1)
        assert got == node.data[2 * BS:]
        await node.node.filler.flush()
        assert await peers.read_block(addr, last, hops=1, epoch=1, cached_only=True) == got
        with pytest.raises(OriginNotFound, match="no such key"):
            await peers.read_block(addr, BlockRef(ObjectMeta("bkt", "nope", 5, '"e"'), 0, BS),
                                   hops=1, epoch=1)
        with pytest.raises(ObjectChanged):
            await peers.read_block(addr, BlockRef(ObjectMeta("bkt", "model.bin", SIZE, '"old"'),
                                                  0, BS), hops=1, epoch=1)
        assert not peers.is_down(addr)  # the peer's answers are not transport failures
        dead = f"127.0.0.1:{free_port()}"
        with pytest.raises(PeerUnavailable):
            await peers.read_block(dead, last, hops=1, epoch=1)
        assert peers.is_down(dead)
    finally:
        await peers.close()


@pytest.mark.asyncio
async def test_closing_a_channel_under_a_call_is_a_peer_failure_not_a_cancel(node: Node) -> None:
    import asyncio

    from cachenode.blocks import BlockRef, ObjectMeta
    from cachenode.errors import PeerUnavailable
    from cachenode.metrics import NodeMetrics
    from cachenode.peers import PeerClient

    node.origin.delay_s = 1.0
    peers = PeerClient(NodeMetrics(), timeout_s=5.0)
    ref = BlockRef(ObjectMeta("bkt", "model.bin", SIZE, node.etag), 0, BS)
    call = asyncio.ensure_future(peers.read_block(f"127.0.0.1:{node.node.grpc_port}", ref,
                                                  hops=1, epoch=1))
    await asyncio.sleep(0.2)
    await peers.close()  # e.g. the peer left the group while we were reading from it
    with pytest.raises(PeerUnavailable):
        await call
