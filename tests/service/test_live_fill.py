"""A block being filled, as its readers see it: what a reader holds, who counts as holding
blocks, when read-ahead deepens, and an origin that answers a range chunked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from aiohttp import web

from cachenode.blocks import BlockRef, BlockSlice, ObjectMeta
from cachenode.budget import MemoryBudget
from cachenode.errors import DiskUnavailable
from cachenode.filling import Fill, LiveBlock
from cachenode.metrics import NodeMetrics
from cachenode.origin_http import RangeReader
from cachenode.qos import NOBODY
from cachenode.readahead import ReadAhead
from cachenode.window import LiveChunk, MemChunk, Window, settle_chunk
from tests.servers import free_port
from tests.service.test_fill import BS, Env, make_env  # noqa: F401 (a fixture)

pytestmark = pytest.mark.asyncio


def _ignore() -> None:
    pass


async def test_a_settled_span_of_a_fill_not_yet_stored_is_a_copy_not_the_buffer() -> None:
    fill = Fill(BS, lambda: None)
    fill.target()[:] = bytes(range(256)) * (BS // 256)
    fill.landed(BS)
    chunk = await settle_chunk(LiveChunk(LiveBlock(fill, _ignore), 100, 1000))
    assert isinstance(chunk, MemChunk) and bytes(chunk.data) == (bytes(range(256)) * 8)[100:1100]
    assert chunk.data.obj is not fill.buffer  # a slow gRPC reader pins 1000 bytes, not BS
    assert len(chunk.data.obj) == 1000


async def test_a_fill_stored_then_gone_is_a_cache_error_not_an_assert() -> None:
    fill = Fill(BS, lambda: None)  # open_file finds nothing: evicted after it was stored
    fill.on_disk()
    with pytest.raises(DiskUnavailable):
        await settle_chunk(LiveChunk(LiveBlock(fill, _ignore), 0, BS))


async def test_a_block_taken_by_handoff_marks_the_node_as_holding_blocks(
        make_env: Callable[..., Env]) -> None:  # noqa: F811
    env = make_env()
    meta, data = await env.object("m", BS)
    firsts: list[float] = []
    env.filler.first_fill = firsts.append

    async def previous_owner(ref: BlockRef) -> bytes:
        return data

    env.filler.handoff = previous_owner
    await env.filler.read_block(BlockRef(meta, 0, BS))
    assert len(firsts) == 1 and env.origin.gets == {}  # a later joiner will ask this node


async def test_a_fill_is_queued_until_its_get_starts(make_env: Callable[..., Env]) -> None:  # noqa: F811
    env = make_env(max_concurrent_fills=1)
    (m1, _), (m2, _) = await env.object("a", BS), await env.object("b", BS, seed=2)
    a, b = BlockRef(m1, 0, BS), BlockRef(m2, 0, BS)
    env.origin.delay_s = 0.3
    reads = [asyncio.ensure_future(env.filler.read_block(r)) for r in (a, b)]
    for _ in range(100):  # one GET at a time: a's is under way, b's waits for it
        if env.filler.queued(b) and not env.filler.queued(a) and a.block_id in env.filler._fills:
            break
        await asyncio.sleep(0.01)
    assert env.filler.queued(b) and not env.filler.queued(a)
    await asyncio.gather(*reads)
    assert not env.filler.queued(a) and not env.filler.queued(b)


@pytest.mark.parametrize(("queued", "depth_after"), [(True, 1), (False, 2)])
async def test_read_ahead_deepens_only_while_the_blocks_get_is_under_way(
        queued: bool, depth_after: int) -> None:
    meta = ObjectMeta("bkt", "m", 8 * BS, '"e"')
    never = asyncio.Event()

    async def read(ref: BlockRef, charge: object) -> bytes:
        await never.wait()  # the reader outruns every block in flight
        raise AssertionError("not reached")

    depth = ReadAhead(1, 16)
    window = Window(iter([BlockSlice(BlockRef(meta, i, BS), 0, BS) for i in range(8)]), read,
                    lambda ref: 0, MemoryBudget(BS, 1.0), depth, (NOBODY, NOBODY), 0,
                    lambda ref: queued)  # type: ignore[arg-type]
    ahead = await window.head()
    assert ahead is not None
    take = asyncio.ensure_future(window.take(ahead))
    await asyncio.sleep(0)
    assert depth.blocks == depth_after  # a queued fill: no deeper
    take.cancel()
    window.close()


@pytest_asyncio.fixture
async def chunked_origin() -> AsyncIterator[str]:
    """An S3-like origin on loopback that answers every range GET with a chunked body."""

    async def get(request: web.Request) -> web.StreamResponse:
        first, last = request.http_range.start, request.http_range.stop
        body = bytes(i % 251 for i in range(first, last))
        resp = web.StreamResponse(status=206, headers={
            "Content-Range": f"bytes {first}-{last - 1}/{BS}", "ETag": '"e"'})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for pos in range(0, len(body), 1000):  # many small HTTP chunks
            await resp.write(body[pos:pos + 1000])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{bucket}/{key}", get)
    runner, port = web.AppRunner(app), free_port()
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_chunked_origin_body_lands_whole(chunked_origin: str) -> None:
    reader = RangeReader(chunked_origin, "us-east-1", None, NodeMetrics(), 3.0, 10.0, 4)
    meta = ObjectMeta("bkt", "k", BS, '"e"', 0.0)
    into = memoryview(bytearray(BS))
    marks: list[int] = []
    try:
        await reader.read(meta, 0, into, marks.append)
    finally:
        await reader.close()
    assert bytes(into) == bytes(i % 251 for i in range(BS)) and marks[-1] == BS
