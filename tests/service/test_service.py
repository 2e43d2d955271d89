"""BlockService with FakeOrigin and a real DiskStore: stat cache, streaming, cleanup."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.config import NodeConfig
from cachenode.errors import BadRequest, ObjectChanged, OriginNotFound, OriginUnavailable
from cachenode.fill import Filler
from cachenode.metrics import NodeMetrics
from cachenode.service import BlockService
from cachenode.store.disk import DiskStore
from cachenode.window import FileChunk, MemChunk, settle_chunk
from tests.fakes import FakeOrigin, blob, down
from tests.fdcheck import open_fds, settle_fds

BS = 64 * 1024


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def settle() -> None:
    """Let cancelled read-aheads and their done-callbacks run."""
    for _ in range(5):
        await asyncio.sleep(0)


class Env:
    """A BlockService over a FakeOrigin and a DiskStore on tmp_path."""

    def __init__(self, tmp_path: Path, **overrides: object) -> None:
        settings: dict[str, object] = {"data_dir": tmp_path, "block_size_bytes": BS,
                                       "capacity_bytes": 64 * BS}
        settings.update(overrides)
        self.config = NodeConfig(**settings)  # type: ignore[arg-type]
        self.metrics = NodeMetrics()
        self.origin = FakeOrigin()
        self.store = DiskStore(tmp_path, self.config.capacity_bytes, self.metrics)
        self.store.open()
        self.filler = Filler(self.config, self.origin, self.store, self.metrics)
        self.service = BlockService(self.config, self.origin, self.filler, self.metrics)

    def put(self, key: str, size: int, seed: int = 1) -> bytes:
        data = blob(size, seed)
        self.origin.put("bkt", key, data)
        return data

    async def read(self, meta: ObjectMeta, start: int, end: int,
                   kinds: list[str] | None = None) -> bytes:
        """Return the bytes chunks() yields, closing every FileChunk."""
        out = bytearray()
        async for got in self.service.chunks(meta, start, end):
            chunk = await settle_chunk(got)  # a block being filled: once it has landed
            if isinstance(chunk, FileChunk):
                try:
                    out += os.pread(chunk.block.fd, chunk.length, chunk.offset)
                finally:
                    chunk.close()
                kind = "file"
            else:
                out += chunk.data
                kind = "bytes"
            if kinds is not None:
                kinds.append(kind)
        return bytes(out)

    async def drain_fills(self) -> None:
        async with asyncio.timeout(2):
            while len(self.filler._flight):
                await asyncio.sleep(0.005)
            await self.filler.flush()  # write-behinds reach the disk
        await settle()

    async def close(self) -> None:
        await self.service.close()
        await self.filler.close()
        self.store.close()


@pytest_asyncio.fixture
async def make_env(tmp_path: Path) -> AsyncIterator[Callable[..., Env]]:
    envs: list[Env] = []

    def make(**overrides: object) -> Env:
        envs.append(Env(tmp_path / str(len(envs)), **overrides))
        return envs[-1]

    yield make
    for env in envs:
        await env.close()


SIZE = 3 * BS + 123
RANGES = [(0, SIZE - 1), (0, 0), (BS - 1, BS), (10, 2 * BS + 5), (BS, 2 * BS - 1),
          (3 * BS, SIZE - 1), (SIZE - 1, SIZE - 1), (2 * BS - 7, 3 * BS + 7)]


@pytest.mark.asyncio
async def test_chunks_byte_exact_cold_and_warm(make_env: Callable[..., Env]) -> None:
    env = make_env(readahead_blocks=2)
    data = env.put("m.bin", SIZE)
    meta = await env.service.stat("bkt", "m.bin")
    assert (meta.size, meta.etag) == (SIZE, env.origin.objects[("bkt", "m.bin")][1])
    fds = open_fds()
    for start, end in RANGES:  # the first pass fills, later ones mostly hit
        assert await env.read(meta, start, end) == data[start:end + 1], (start, end)
    await env.drain_fills()
    await settle_fds(fds)
    assert sum(env.origin.gets.values()) == 4  # every block filled exactly once
    kinds: list[str] = []
    for start, end in RANGES:
        assert await env.read(meta, start, end, kinds) == data[start:end + 1], (start, end)
    assert set(kinds) == {"file"}  # warm reads are sendfile-able disk spans
    await settle_fds(fds)
    assert sum(env.origin.gets.values()) == 4


@pytest.mark.asyncio
async def test_empty_span_yields_nothing(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.put("m", BS)
    meta = await env.service.stat("bkt", "m")
    assert await env.read(meta, 5, 4) == b""
    env.put("empty", 0)
    empty = await env.service.stat("bkt", "empty")
    assert empty.size == 0
    assert await env.read(empty, 0, -1) == b""
    assert not env.origin.gets


@pytest.mark.asyncio
async def test_readahead_is_bounded(make_env: Callable[..., Env]) -> None:
    env = make_env(readahead_blocks=2)
    data = env.put("m", 10 * BS)
    meta = await env.service.stat("bkt", "m")
    gen = env.service.chunks(meta, 0, 10 * BS - 1)
    first = await anext(gen)
    await asyncio.sleep(0.02)  # give any extra read-ahead a chance to start
    assert sum(env.origin.gets.values()) == 3  # the block being sent + 2 ahead, no more
    if isinstance(first, FileChunk):
        first.close()
    await gen.aclose()
    await env.drain_fills()
    assert sum(env.origin.gets.values()) == 3
    assert await env.read(meta, 0, 10 * BS - 1) == data


@pytest.mark.asyncio
async def test_aborted_warm_read_leaves_no_fds_or_tasks(make_env: Callable[..., Env]) -> None:
    env = make_env(readahead_blocks=4)
    data = env.put("m", 6 * BS)
    meta = await env.service.stat("bkt", "m")
    assert await env.read(meta, 0, 6 * BS - 1) == data  # warm every block
    await env.drain_fills()
    fds, tasks = open_fds(), other_tasks()
    gen = env.service.chunks(meta, 0, 6 * BS - 1)
    first = await anext(gen)
    assert isinstance(first, FileChunk)
    await settle()  # read-aheads have opened their files by now
    assert open_fds() > fds
    first.close()
    await gen.aclose()
    await settle()
    await settle_fds(fds)
    assert other_tasks() == tasks


@pytest.mark.asyncio
async def test_aborted_cold_read_leaves_no_fds_or_tasks(make_env: Callable[..., Env]) -> None:
    env = make_env(readahead_blocks=4)
    data = env.put("m", 6 * BS)
    meta = await env.service.stat("bkt", "m")
    env.origin.delay_s = 0.02
    fds, tasks = open_fds(), other_tasks()
    gen = env.service.chunks(meta, 0, 6 * BS - 1)
    first = await anext(gen)
    if isinstance(first, FileChunk):
        first.close()
    await gen.aclose()
    await env.drain_fills()  # read-ahead fills finish (and are cached) in the background
    await settle_fds(fds)
    assert other_tasks() == tasks
    assert sum(env.origin.gets.values()) == 5  # 1 sent + 4 read ahead; none after the abort
    env.origin.delay_s = 0
    assert await env.read(meta, 0, 6 * BS - 1) == data
    assert sum(env.origin.gets.values()) == 6


@pytest.mark.asyncio
async def test_consumer_cancelled_mid_stream_leaves_no_fds(make_env: Callable[..., Env]) -> None:
    env = make_env(readahead_blocks=2)
    env.put("m", 8 * BS)
    meta = await env.service.stat("bkt", "m")
    await env.read(meta, 0, 4 * BS - 1)  # first half warm, second half cold
    await env.drain_fills()
    env.origin.delay_s = 0.5
    fds, tasks = open_fds(), other_tasks()
    started = asyncio.Event()

    async def consume() -> None:
        async for chunk in env.service.chunks(meta, 0, 8 * BS - 1):
            if isinstance(chunk, FileChunk):
                chunk.close()
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    await asyncio.sleep(0.01)  # now waiting on the cold blocks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    env.origin.delay_s = 0
    await env.drain_fills()
    await settle_fds(fds)
    assert other_tasks() == tasks


@pytest.mark.asyncio
async def test_cancel_as_block_arrives_leaks_no_fd(make_env: Callable[..., Env]) -> None:
    # A reader cancelled in the same loop turn its block arrives (a gRPC client going away
    # while a herd is woken by one fill) must still have that block's file closed.
    env = make_env(readahead_blocks=0)
    env.put("m", BS)
    meta = await env.service.stat("bkt", "m")
    env.origin.delay_s = 0.05
    fds, tasks = open_fds(), other_tasks()
    gen = env.service.chunks(meta, 0, BS - 1)
    reader = asyncio.create_task(anext(gen))
    await asyncio.sleep(0.01)  # the reader leads the fill

    async def joiner() -> None:
        got = await env.filler.read_block(BlockRef(meta, 0, BS))  # woken just after the reader
        reader.cancel()  # runs before the reader resumes with its block
        if not isinstance(got, bytes):
            got.close()

    await asyncio.gather(joiner(), reader, return_exceptions=True)
    if reader.done() and not reader.cancelled():
        got = reader.result()
        if isinstance(got, FileChunk):
            got.close()
    await gen.aclose()
    await env.filler.flush()
    await settle()
    await settle_fds(fds)
    assert other_tasks() == tasks


@pytest.mark.asyncio
async def test_object_changed_invalidates_metadata(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.put("m", 2 * BS, seed=1)
    old = await env.service.stat("bkt", "m")
    new_data = env.put("m", 2 * BS + 5, seed=2)
    assert await env.service.stat("bkt", "m") == old  # still cached within the TTL
    with pytest.raises(ObjectChanged) as info:
        await env.read(old, 0, 2 * BS - 1)
    assert old.etag in str(info.value)
    new = await env.service.stat("bkt", "m")
    assert new.etag != old.etag and new.size == 2 * BS + 5
    assert env.origin.heads[("bkt", "m")] == 2
    assert await env.read(new, 0, new.size - 1) == new_data


@pytest.mark.asyncio
async def test_object_changed_mid_stream(make_env: Callable[..., Env]) -> None:
    env = make_env(readahead_blocks=0)
    data = env.put("m", 2 * BS)
    old = await env.service.stat("bkt", "m")
    assert await env.read(old, 0, BS - 1) == data[:BS]  # block 0 cached
    await env.filler.flush()
    env.put("m", 2 * BS, seed=9)
    got = bytearray()
    with pytest.raises(ObjectChanged):
        async for chunk in env.service.chunks(old, 0, 2 * BS - 1):
            assert isinstance(chunk, FileChunk)
            got += os.pread(chunk.block.fd, chunk.length, chunk.offset)
            chunk.close()
    assert bytes(got) == data[:BS]  # only bytes of the pinned version, then the error
    assert (await env.service.stat("bkt", "m")).etag != old.etag


@pytest.mark.asyncio
async def test_metadata_cached_for_ttl(make_env: Callable[..., Env]) -> None:
    env = make_env(metadata_ttl_s=0.2)
    env.put("m", 10)
    first = await env.service.stat("bkt", "m")
    for _ in range(50):
        assert await env.service.stat("bkt", "m") == first
    assert env.origin.heads[("bkt", "m")] == 1
    assert env.metrics.value("blockcache_metadata_lookups_total", result="hit") == 50
    assert env.metrics.value("blockcache_metadata_lookups_total", result="miss") == 1
    await asyncio.sleep(0.25)
    env.origin.delay_s = 0.01
    metas = await asyncio.gather(*(env.service.stat("bkt", "m") for _ in range(20)))
    assert env.origin.heads[("bkt", "m")] == 2  # re-HEADed once after the TTL, shared
    assert all(m == first for m in metas)


@pytest.mark.asyncio
async def test_metadata_ttl_zero_always_heads(make_env: Callable[..., Env]) -> None:
    env = make_env(metadata_ttl_s=0)
    env.put("m", 10)
    for _ in range(3):
        await env.service.stat("bkt", "m")
    assert env.origin.heads[("bkt", "m")] == 3


@pytest.mark.asyncio
async def test_unknown_key_is_not_cached(make_env: Callable[..., Env]) -> None:
    env = make_env()
    with pytest.raises(OriginNotFound, match="s3://bkt/nope"):
        await env.service.stat("bkt", "nope")
    env.put("nope", 3)
    assert (await env.service.stat("bkt", "nope")).size == 3
    assert env.origin.heads[("bkt", "nope")] == 2


@pytest.mark.asyncio
async def test_bad_names_never_reach_origin(make_env: Callable[..., Env]) -> None:
    env = make_env()
    for bucket, key in (("b", "k"), ("bkt", ""), ("bkt", "a/../b"), ("bk/t", "k"),
                        ("bkt", "llm//v1/x"), ("bkt", "/x"), ("bkt", "x/"), ("bkt", "a\\b")):
        with pytest.raises(BadRequest):
            await env.service.stat(bucket, key)
    for prefix in ("llm//", "/x", "a\\"):
        with pytest.raises(BadRequest):
            await env.service.list_page("bkt", prefix)
    assert not env.origin.heads


@pytest.mark.asyncio
async def test_verbatim_keys_reach_origin_as_distinct_objects(
        make_env: Callable[..., Env]) -> None:
    env = make_env(origin_keys="verbatim")
    one, two = env.put("a//b", 3, seed=1), env.put("a/b", 5, seed=2)
    assert (await env.service.stat("bkt", "a//b")).size == len(one) == 3
    assert (await env.service.stat("bkt", "a/b")).size == len(two) == 5
    assert (await env.service.list_page("bkt", "a//"))[0][0].key == "a//b"
    with pytest.raises(BadRequest):  # path tricks are refused under every policy
        await env.service.stat("bkt", "a/../b")


@pytest.mark.asyncio
async def test_origin_down_hits_still_served(make_env: Callable[..., Env]) -> None:
    env = make_env(metadata_ttl_s=0.1)
    data = env.put("m", 3 * BS)
    meta = await env.service.stat("bkt", "m")
    assert await env.read(meta, 0, 2 * BS - 1) == data[:2 * BS]  # blocks 0 and 1 cached
    await env.drain_fills()
    env.origin.fail = down("bkt", "m")
    assert await env.read(await env.service.stat("bkt", "m"), 5, BS + 5) == data[5:BS + 6]
    with pytest.raises(OriginUnavailable):
        await env.read(meta, 2 * BS, 3 * BS - 1)
    await asyncio.sleep(0.15)  # metadata TTL expired while the origin is down
    again = await env.service.stat("bkt", "m")
    assert again == meta
    assert await env.read(again, 0, 2 * BS - 1) == data[:2 * BS]
    with pytest.raises(OriginUnavailable):  # nothing cached to fall back on
        await env.service.stat("bkt", "other")
    env.origin.fail = None
    env.origin.objects.pop(("bkt", "m"))
    await asyncio.sleep(0.15)
    with pytest.raises(OriginNotFound):  # a stale entry never masks a deleted object
        await env.service.stat("bkt", "m")




@pytest.mark.asyncio
async def test_blocks_filled_while_the_disk_is_out_take_the_memory_budget(
        make_env: Callable[..., Env]) -> None:
    env = make_env(readahead_blocks=4, memory_budget_bytes=2 * BS)
    data = env.put("m", 8 * BS)
    meta = await env.service.stat("bkt", "m")
    env.store.health.fail("disk gone")  # every block is served from memory now
    stalled = env.service.chunks(meta, 0, 8 * BS - 1)
    first = await anext(stalled)  # a reader that takes one block and stops reading
    await settle()
    assert env.service.budget.used == 2 * BS  # its block and one read ahead, no more
    kinds: list[str] = []
    got = asyncio.ensure_future(env.read(meta, 0, BS - 1, kinds))
    await asyncio.sleep(0.05)
    assert not got.done()  # a second reader waits for budget instead of growing memory
    await stalled.aclose()
    assert await asyncio.wait_for(got, 2) == data[:BS] and kinds == ["bytes"]
    whole = await settle_chunk(first)  # it was being filled: its bytes, from memory
    assert isinstance(whole, MemChunk) and bytes(whole.data) == data[:BS]
    assert env.service.budget.used == 0
