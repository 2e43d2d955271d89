"""Filler with FakeOrigin and a real DiskStore: one origin GET per miss, errors not cached."""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.config import NodeConfig
from cachenode.errors import ObjectChanged, OriginTimeout, OriginUnavailable, Overloaded
from cachenode.fill import Filler
from cachenode.metrics import NodeMetrics
from cachenode.singleflight import FlightCancelled
from cachenode.store.disk import DiskStore
from cachenode.store.files import OpenBlock
from tests.fakes import FakeOrigin, blob, down
from tests.fdcheck import open_fds, settle_fds

BS = 64 * 1024  # the smallest block size NodeConfig allows


class Env:
    """A filler over a FakeOrigin and a DiskStore on tmp_path."""

    def __init__(self, tmp_path: Path, **overrides: object) -> None:
        settings: dict[str, object] = {"data_dir": tmp_path, "block_size_bytes": BS,
                                       "capacity_bytes": 32 * BS}
        settings.update(overrides)
        self.config = NodeConfig(**settings)  # type: ignore[arg-type]
        self.metrics = NodeMetrics()
        self.origin = FakeOrigin()
        self.store = DiskStore(tmp_path, self.config.capacity_bytes, self.metrics)
        self.store.open()
        self.filler = Filler(self.config, self.origin, self.store, self.metrics)

    async def object(self, key: str, size: int, seed: int = 1) -> tuple[ObjectMeta, bytes]:
        data = blob(size, seed)
        self.origin.put("bkt", key, data)
        meta = await self.origin.head("bkt", key)
        self.origin.heads.clear()
        return meta, data

    def m(self, name: str) -> float:
        return self.metrics.value(name)

    async def close(self) -> None:
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


def flip_byte(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))


def as_bytes(got: OpenBlock | bytes) -> bytes:
    if isinstance(got, bytes):
        return got
    try:
        return os.pread(got.fd, got.size, 0)
    finally:
        got.close()


@pytest.mark.asyncio
async def test_thundering_herd_causes_one_origin_get(make_env: Callable[..., Env]) -> None:
    env = make_env()
    meta, data = await env.object("model.bin", 3 * BS)
    env.origin.delay_s = 0.05
    ref = BlockRef(meta, 1, BS)
    results = await asyncio.gather(*(env.filler.read_block(ref) for _ in range(64)))
    assert [as_bytes(r) for r in results] == [data[BS:2 * BS]] * 64
    assert env.origin.gets == {("bkt", "model.bin", BS): 1}
    assert env.m("blockcache_fills_total") == 1
    assert env.m("blockcache_singleflight_joins_total") == 63
    assert env.m("blockcache_block_misses_total") == 64
    assert env.m("blockcache_fills_in_flight") == 0
    await env.filler.flush()  # the write-behind lands
    hit = await env.filler.read_block(ref)  # now a disk hit
    assert isinstance(hit, OpenBlock) and hit.source == "disk"
    assert as_bytes(hit) == data[BS:2 * BS]
    assert env.m("blockcache_block_hits_total") == 1
    assert env.origin.gets == {("bkt", "model.bin", BS): 1}


@pytest.mark.asyncio
async def test_cancelled_reader_does_not_fail_others(make_env: Callable[..., Env]) -> None:
    env = make_env()
    meta, data = await env.object("m", BS)
    env.origin.delay_s = 0.05
    ref = BlockRef(meta, 0, BS)
    first = asyncio.create_task(env.filler.read_block(ref))
    await asyncio.sleep(0.01)  # the first reader now leads the fill
    others = [asyncio.create_task(env.filler.read_block(ref)) for _ in range(5)]
    await asyncio.sleep(0)
    first.cancel()
    results = await asyncio.gather(*others)
    assert first.cancelled()
    assert [as_bytes(r) for r in results] == [data] * 5
    assert env.origin.gets == {("bkt", "m", 0): 1}
    await env.filler.flush()
    hit = await env.filler.read_block(ref)  # the block was stored despite the cancel
    assert isinstance(hit, OpenBlock) and as_bytes(hit) == data
    assert env.origin.gets == {("bkt", "m", 0): 1}


@pytest.mark.asyncio
async def test_failed_fill_reaches_all_waiters_then_retries(make_env: Callable[..., Env]) -> None:
    env = make_env()
    meta, data = await env.object("m", BS)
    ref = BlockRef(meta, 0, BS)
    env.origin.delay_s = 0.02
    env.origin.fail = down("bkt", "m")
    results = await asyncio.gather(*(env.filler.read_block(ref) for _ in range(10)),
                                   return_exceptions=True)
    assert all(isinstance(r, OriginUnavailable) for r in results), results
    assert env.origin.gets == {("bkt", "m", 0): 1}  # one attempt, shared by all
    assert env.store.open_block(ref.block_id) is None
    env.origin.fail = None
    assert as_bytes(await env.filler.read_block(ref)) == data  # the error was not cached
    assert env.origin.gets == {("bkt", "m", 0): 2}


@pytest.mark.asyncio
async def test_overloaded_when_too_many_fills_wait(make_env: Callable[..., Env]) -> None:
    env = make_env(max_waiting_fills=2, max_concurrent_fills=1)
    meta, data = await env.object("m", 4 * BS)
    env.origin.delay_s = 0.05
    refs = [BlockRef(meta, i, BS) for i in range(4)]
    running = [asyncio.create_task(env.filler.read_block(r)) for r in refs[:2]]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:
        await env.filler.read_block(refs[2])
    assert "2 block fills" in str(info.value)
    joined = await env.filler.read_block(refs[0])  # joining a running fill is not refused
    assert as_bytes(joined) == data[:BS]
    assert [as_bytes(await t) for t in running] == [data[:BS], data[BS:2 * BS]]
    assert as_bytes(await env.filler.read_block(refs[2])) == data[2 * BS:3 * BS]  # room again
    assert ("bkt", "m", 3 * BS) not in env.origin.gets


@pytest.mark.asyncio
async def test_concurrent_fills_are_bounded(make_env: Callable[..., Env]) -> None:
    env = make_env(max_concurrent_fills=2)
    meta, _ = await env.object("m", 6 * BS)
    active = peak = 0
    real_get = env.origin.read_into

    async def counting_get(m: ObjectMeta, start: int, into: memoryview,
                           landed: Callable[[int], None]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.01)
            await real_get(m, start, into, landed)
        finally:
            active -= 1

    env.origin.read_into = counting_get  # type: ignore[method-assign]
    got = await asyncio.gather(*(env.filler.read_block(BlockRef(meta, i, BS)) for i in range(6)))
    for g in got:
        as_bytes(g)
    assert peak == 2


@pytest.mark.asyncio
async def test_fill_timeout(make_env: Callable[..., Env]) -> None:
    env = make_env(fill_timeout_s=0.05)
    meta, _ = await env.object("m", BS)
    env.origin.delay_s = 5.0
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(OriginTimeout) as info:
        await env.filler.read_block(BlockRef(meta, 0, BS))
    assert loop.time() - t0 < 1.0
    assert "not filled within 0.05s" in str(info.value)
    assert isinstance(info.value, OriginUnavailable)


@pytest.mark.asyncio
async def test_short_block_from_origin_is_not_stored(make_env: Callable[..., Env]) -> None:
    env = make_env()
    meta, data = await env.object("m", BS)
    env.origin.objects[("bkt", "m")] = (data[:100], meta.etag)  # origin lies about the size
    ref = BlockRef(meta, 0, BS)
    with pytest.raises(OriginUnavailable, match="short block"):
        await env.filler.read_block(ref)
    assert env.store.open_block(ref.block_id) is None


@pytest.mark.asyncio
async def test_object_changed_at_origin(make_env: Callable[..., Env]) -> None:
    env = make_env()
    meta, _ = await env.object("m", BS)
    env.origin.put("bkt", "m", blob(BS, seed=2))
    with pytest.raises(ObjectChanged):
        await env.filler.read_block(BlockRef(meta, 0, BS))


@pytest.mark.asyncio
async def test_corrupt_hit_is_refilled(make_env: Callable[..., Env]) -> None:
    env = make_env()
    meta, data = await env.object("m", BS)
    ref = BlockRef(meta, 0, BS)
    assert await env.filler.read_block_bytes(ref) == data
    await env.filler.flush()
    path = env.store.root / "blocks" / ref.block_id[:2] / ref.block_id[2:4] / ref.block_id
    flip_byte(path, 100)  # same size: only the crc can tell
    fds = open_fds()
    assert await env.filler.read_block_bytes(ref) == data
    await env.filler.flush()
    await settle_fds(fds)
    assert env.m("blockcache_corrupt_blocks_total") == 1
    assert env.origin.gets == {("bkt", "m", 0): 2}
    assert zlib.crc32(path.read_bytes()) == zlib.crc32(data)  # the refill replaced the file


@pytest.mark.asyncio
async def test_block_served_uncached_when_store_cannot_hold_it(tmp_path: Path) -> None:
    config = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=2 * BS)
    metrics = NodeMetrics()
    origin = FakeOrigin()
    origin.put("bkt", "m", blob(BS))
    meta = await origin.head("bkt", "m")
    store = DiskStore(tmp_path, BS // 2, metrics)  # smaller than one block
    store.open()
    filler = Filler(config, origin, store, metrics)
    try:
        assert as_bytes(await filler.read_block(BlockRef(meta, 0, BS))) == blob(BS)
        assert store.used_bytes == 0
    finally:
        await filler.close()
        store.close()


@pytest.mark.asyncio
async def test_close_cancels_fills(make_env: Callable[..., Env]) -> None:
    env = make_env()
    meta, _ = await env.object("m", BS)
    env.origin.delay_s = 5.0
    reader = asyncio.create_task(env.filler.read_block(BlockRef(meta, 0, BS)))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(env.filler.close(), 1.0)
    with pytest.raises(FlightCancelled):  # a clear error (503), not a silent cancellation
        await reader


@pytest.mark.asyncio
async def test_reader_during_write_behind_needs_no_second_fill(
        make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env()
    meta, data = await env.object("m", BS)
    ref = BlockRef(meta, 0, BS)
    slow_write = env.store._write_file

    def write_slowly(*args: object) -> int:
        time.sleep(0.2)  # a slow disk: the bytes are served long before they are stored
        return slow_write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(env.store, "_write_file", write_slowly)
    assert as_bytes(await env.filler.read_block(ref)) == data
    assert env.store.open_block(ref.block_id) is None  # not on disk yet
    assert as_bytes(await env.filler.read_block(ref)) == data  # served from the landed bytes
    assert env.origin.gets == {("bkt", "m", 0): 1}
    await env.filler.flush()
    hit = env.store.open_block(ref.block_id)
    assert hit is not None and as_bytes(hit) == data
