"""DiskStore on a small disk: the free-space floor and ENOSPC shrink it; temp files count.

`SmallDisk` is a filesystem of a few blocks laid over tmp_path: statvfs reports what the block
and temp files (and a ballast, another writer's bytes) leave of it, and a block write past it
writes what fits into its temp file, then fails with ENOSPC, as a real full disk does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.config import FreeFloor
from cachenode.errors import DiskUnavailable, StoreFull
from cachenode.metrics import NodeMetrics
from cachenode.store.disk import DiskStore
from cachenode.store.space import StoreSpace

BS = 4096


def ref(key: str, index: int = 0) -> BlockRef:
    return BlockRef(ObjectMeta("bkt", key, 64 * BS, '"e1"'), index, BS)


def payload(r: BlockRef) -> bytes:
    seed = zlib.crc32(r.block_id.encode())
    return bytes((seed + i * 13) % 256 for i in range(r.length))


class SmallDisk:
    """A `size`-byte filesystem over the store's blocks/ and tmp/ (the index is left out)."""

    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size, self.ballast = root, size, 0
        self.looks = 0  # statvfs calls
        self.writes = 0  # block writes attempted

    def used(self) -> int:
        return self.ballast + sum(p.stat().st_size for d in ("blocks", "tmp")
                                  for p in (self.root / d).rglob("*") if p.is_file())

    def free(self) -> int:
        return max(0, self.size - self.used())

    def statvfs(self, path: str) -> os.statvfs_result:
        self.looks += 1
        free = self.free()
        return os.statvfs_result((1, 1, self.size, free, free, 1000, 1000, 1000, 0, 255))

    def fill(self) -> None:
        """Let another writer take every free byte."""
        self.ballast += self.free()

    def wrap(self, store: DiskStore) -> None:
        """Make the store's block writes fail with ENOSPC past the end of this disk."""
        real = store._write_file

        def write_file(tmp: Path, final: Path, data: bytes) -> int:
            self.writes += 1
            room = self.free()
            if len(data) > room:
                tmp.write_bytes(data[:room])  # what fits, as a real disk leaves it
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
            return real(tmp, final, data)

        store._write_file = write_file  # type: ignore[method-assign]


@pytest.fixture
def metrics() -> NodeMetrics:
    return NodeMetrics()


def small_store(root: Path, metrics: NodeMetrics, disk_blocks: int, floor: int = BS // 2,
                capacity: int = 1000 * BS, interval_s: float = 3600.0
                ) -> tuple[DiskStore, SmallDisk]:
    disk = SmallDisk(root, disk_blocks * BS)
    space = StoreSpace(root, capacity, FreeFloor(None, floor), interval_s, disk.statvfs)
    store = DiskStore(root, capacity, metrics, space=space)
    disk.wrap(store)
    store.open()
    return store, disk


@pytest.fixture
def small(tmp_path: Path, metrics: NodeMetrics) -> Iterator[tuple[DiskStore, SmallDisk]]:
    store, disk = small_store(tmp_path, metrics, 10)
    yield store, disk
    store.close()


def temp_files(root: Path) -> list[Path]:
    return list((root / "tmp").iterdir())


def read_back(store: DiskStore, r: BlockRef) -> bytes | None:
    ob = store.open_block(r.block_id, r.length)
    if ob is None:
        return None
    try:
        return os.pread(ob.fd, ob.size + 1, 0)
    finally:
        ob.close()


@pytest.mark.asyncio
async def test_the_disk_caps_a_larger_capacity(tmp_path: Path, metrics: NodeMetrics) -> None:
    store, disk = small_store(tmp_path, metrics, 10, floor=BS + 100, interval_s=0.0)
    try:
        assert store.space.limit == 10 * BS - (BS + 100) < store.capacity
        for i in range(30):
            await store.put(ref(f"k{i}"), payload(ref(f"k{i}")))
            assert disk.free() >= BS + 100, i  # the floor holds after every block
        assert store.block_count == 8 and disk.used() == 8 * BS
        assert [read_back(store, ref(f"k{i}")) for i in range(22, 30)] == [
            payload(ref(f"k{i}")) for i in range(22, 30)]  # the newest stayed (LRU)
        assert metrics.value("blockcache_store_enospc_total") == 0
        assert metrics.value("blockcache_evictions_total") == 22
        assert metrics.value("blockcache_store_effective_capacity_bytes") == 10 * BS - BS - 100
        assert metrics.value("blockcache_store_capacity_bytes") == 1000 * BS
        assert metrics.value("blockcache_store_disk_free_bytes") == disk.free() == 2 * BS
        assert metrics.value("blockcache_store_disk_floor_bytes") == BS + 100
    finally:
        store.close()


@pytest.mark.asyncio
async def test_enospc_evicts_lru_and_the_block_is_kept(
        small: tuple[DiskStore, SmallDisk], metrics: NodeMetrics,
        caplog: pytest.LogCaptureFixture) -> None:
    store, disk = small
    old = [ref(f"old{i}") for i in range(4)]
    for r in old:
        await store.put(r, payload(r))
    disk.fill()  # behind the store's back: its last look (at open) still sees room
    new = ref("new")
    with caplog.at_level(logging.WARNING):
        await store.put(new, payload(new))
    assert read_back(store, new) == payload(new)
    assert metrics.value("blockcache_store_enospc_total") == 1
    assert disk.writes == 4 + 2  # the write that failed and the one after eviction
    assert temp_files(store.root) == []  # the partial temp file went at once
    # What fits is what was there when the disk filled (4 blocks), less the floor: 3 blocks.
    assert store.space.limit == 4 * BS - BS // 2
    assert store.block_count == 3 and read_back(store, old[0]) is None  # oldest went first
    assert disk.free() >= BS // 2
    assert f"disk full at {store.root} (ENOSPC on write {new.block_id})" in caplog.text
    assert "capacity" not in caplog.text


@pytest.mark.asyncio
async def test_enospc_with_nothing_to_evict_names_the_disk_and_clears_when_room_returns(
        small: tuple[DiskStore, SmallDisk], metrics: NodeMetrics) -> None:
    store, disk = small
    disk.fill()
    r = ref("a")
    with pytest.raises(StoreFull) as info:
        await store.put(r, payload(r))
    assert str(info.value) == (f"disk full at {store.root}: 0 bytes free, floor {BS // 2}: "
                               f"no room for {BS} more bytes above the floor")
    assert metrics.value("blockcache_store_enospc_total") == 1 and disk.writes == 1
    assert temp_files(store.root) == [] and store.space.reserved == 0
    assert store.disk_trouble(BS) == str(info.value)
    with pytest.raises(StoreFull, match="disk full"):  # refused up front now: no write
        await store.put(ref("b"), payload(ref("b")))
    assert disk.writes == 1 and metrics.value("blockcache_store_enospc_total") == 1
    assert store.failed is None  # a full disk is not a failed one

    disk.ballast = 0  # the other writer is done
    assert store.disk_trouble(BS) is None
    await store.put(r, payload(r))
    assert read_back(store, r) == payload(r)


@pytest.mark.asyncio
async def test_another_writer_crossing_the_floor_evicts_at_the_next_look(
        small: tuple[DiskStore, SmallDisk], metrics: NodeMetrics) -> None:
    store, disk = small
    refs = [ref(f"k{i}") for i in range(6)]
    for r in refs:
        await store.put(r, payload(r))
    assert read_back(store, refs[0]) == payload(refs[0])  # k0 is now the newest
    disk.ballast = disk.free() - BS // 4  # a quarter block left: below the floor
    assert store.disk_trouble(BS) is None  # after eviction a block still fits
    assert disk.free() >= BS // 2
    assert [r.obj.key for r in refs if read_back(store, r) is None] == ["k1"]  # the LRU one
    assert metrics.value("blockcache_evictions_total") == 1
    for _ in range(10):  # a writer that takes every byte the store gives back
        disk.fill()
        trouble = store.disk_trouble(BS)
        if trouble is not None:
            break
    assert store.block_count == 0  # evicted down to nothing, and still no room for a block
    assert trouble == (f"disk full at {store.root}: {BS} bytes free, floor {BS // 2}: "
                       f"no room for {BS} more bytes above the floor")


@pytest.mark.asyncio
async def test_looks_at_the_disk_at_most_once_per_interval(
        small: tuple[DiskStore, SmallDisk]) -> None:
    store, disk = small
    looks = disk.looks  # the look at open
    for i in range(40):
        await store.put(ref(f"k{i}"), payload(ref(f"k{i}")))
    assert disk.looks == looks == 1
    store.space._interval_s = 0.0
    await store.put(ref("one more"), payload(ref("one more")))
    assert disk.looks == 2


def test_open_on_a_disk_below_the_floor_evicts_at_once(tmp_path: Path,
                                                        metrics: NodeMetrics) -> None:
    async def fill() -> None:
        store, _ = small_store(tmp_path, metrics, 10)
        for i in range(8):
            await store.put(ref(f"k{i}"), payload(ref(f"k{i}")))
        store.close()

    asyncio.run(fill())
    (tmp_path / "ballast").write_bytes(b"")  # outside blocks/: not a stray
    disk = SmallDisk(tmp_path, 10 * BS)
    disk.ballast = 2 * BS - 100  # another writer took the free space while the node was down
    space = StoreSpace(tmp_path, 1000 * BS, FreeFloor(None, BS // 2), 3600.0, disk.statvfs)
    store = DiskStore(tmp_path, 1000 * BS, metrics, space=space)
    store.open()
    try:
        assert store.block_count == 7 and disk.free() >= BS // 2
        assert store.space.limit == 8 * BS + 100 - BS // 2
    finally:
        store.close()


@pytest.mark.asyncio
async def test_index_enospc_drops_the_written_file_and_the_retry_keeps_the_block(
        small: tuple[DiskStore, SmallDisk], metrics: NodeMetrics,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store, disk = small
    for i in range(3):
        await store.put(ref(f"k{i}"), payload(ref(f"k{i}")))
    index = store._index
    assert index is not None
    real_put, calls = index.put, []

    def put_once_full(e: object) -> None:
        calls.append(e)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "block index write: No space left on device")
        real_put(e)  # type: ignore[arg-type]

    monkeypatch.setattr(index, "put", put_once_full)
    r = ref("new")
    await store.put(r, payload(r))
    assert len(calls) == 2 and read_back(store, r) == payload(r)
    assert metrics.value("blockcache_store_enospc_total") == 1
    assert disk.used() == store.used_bytes  # no unindexed block file left behind
    assert temp_files(store.root) == []


@pytest.mark.asyncio
async def test_a_failed_write_removes_its_partial_temp_file(
        small: tuple[DiskStore, SmallDisk]) -> None:
    store, _ = small
    real = store._write_file

    def fail_midway(tmp: Path, final: Path, data: bytes) -> int:
        tmp.write_bytes(data[: len(data) // 2])
        raise OSError(errno.EIO, "Input/output error")

    store._write_file = fail_midway  # type: ignore[method-assign]
    with pytest.raises(DiskUnavailable, match="Input/output error"):
        await store.put(ref("a"), payload(ref("a")))
    assert temp_files(store.root) == [] and store.space.reserved == 0
    assert store.failed and "Input/output error" in store.failed
    store._write_file = real  # type: ignore[method-assign]


@pytest.mark.asyncio
async def test_temp_bytes_count_until_the_thread_is_done_even_if_the_put_is_cancelled(
        tmp_path: Path, metrics: NodeMetrics) -> None:
    store, disk = small_store(tmp_path, metrics, 10, capacity=3 * BS)
    real, started, release = store._write_file, threading.Event(), threading.Event()

    def slow(tmp: Path, final: Path, data: bytes) -> int:
        tmp.write_bytes(data[:100])
        started.set()
        release.wait(10)
        return real(tmp, final, data)

    try:
        store._write_file = slow  # type: ignore[method-assign]
        first = asyncio.create_task(store.put(ref("slow"), payload(ref("slow"))))
        await asyncio.to_thread(started.wait, 10)
        assert store.space.reserved == BS and len(temp_files(tmp_path)) == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert store.space.reserved == BS  # the thread still writes: still counted
        store._write_file = real  # type: ignore[method-assign]
        for key in ("a", "b", "c"):
            await store.put(ref(key), payload(ref(key)))
        assert store.block_count == 2 and read_back(store, ref("a")) is None  # 2 + the temp
        release.set()
        for _ in range(200):  # the thread ends, then its done-callback runs on the loop
            if store.space.reserved == 0:
                break
            await asyncio.sleep(0.01)
        assert store.space.reserved == 0
        assert temp_files(tmp_path) == [] and read_back(store, ref("slow")) is None
        assert disk.used() == store.used_bytes == 2 * BS  # its block file was not left behind
    finally:
        release.set()
        store.close()
