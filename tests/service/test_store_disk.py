"""DiskStore with a real rocksdict index on tmp_path: durability, capacity, LRU, repair."""

from __future__ import annotations

import asyncio
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.checksum import crc32c
from cachenode.errors import DiskUnavailable, StoreFull
from cachenode.metrics import NodeMetrics
from cachenode.store.disk import DiskStore
from cachenode.store.index import BlockIndex, IndexEntry
from tests.fdcheck import open_fds, settle_fds

BS = 4096


def ref(key: str, index: int = 0, size: int = 10 * BS, bucket: str = "bkt",
        etag: str = '"e1"') -> BlockRef:
    return BlockRef(ObjectMeta(bucket, key, size, etag), index, BS)


def payload(r: BlockRef) -> bytes:
    seed = zlib.crc32(r.block_id.encode())
    return bytes((seed + i * 13) % 256 for i in range(r.length))


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "blocks").rglob("*") if p.is_file())


def block_files(root: Path) -> set[str]:
    return {p.name for p in (root / "blocks").rglob("*") if p.is_file()}


def read_all(store: DiskStore, block_id: str) -> bytes | None:
    ob = store.open_block(block_id)
    if ob is None:
        return None
    try:
        return os.pread(ob.fd, ob.size + 1, 0)
    finally:
        ob.close()


@pytest.fixture
def metrics() -> NodeMetrics:
    return NodeMetrics()


@pytest.fixture
def store(tmp_path: Path, metrics: NodeMetrics) -> Iterator[DiskStore]:
    s = DiskStore(tmp_path, 8 * BS, metrics)
    s.open()
    yield s
    s.close()


@pytest.mark.asyncio
async def test_put_then_open_round_trip(store: DiskStore, metrics: NodeMetrics) -> None:
    r = ref("a", 3)
    data = payload(r)
    assert store.open_block(r.block_id) is None
    await store.put(r, data)
    ob = store.open_block(r.block_id)
    assert ob is not None
    try:
        assert ob.block_id == r.block_id and ob.size == BS
        assert ob.crc32c == crc32c(data)
        assert os.pread(ob.fd, BS + 1, 0) == data
    finally:
        ob.close()
    e = store.entry(r.block_id)
    assert e is not None
    assert (e.bucket, e.key, e.etag, e.index, e.size) == ("bkt", "a", '"e1"', 3, BS)
    assert store.used_bytes == BS and store.block_count == 1
    assert metrics.value("blockcache_store_bytes") == BS
    assert metrics.value("blockcache_store_blocks") == 1
    await store.put(r, data)  # the same block again is a no-op
    assert store.used_bytes == BS and store.block_count == 1
    assert list((store.root / "tmp").iterdir()) == []  # no temp file left behind


@pytest.mark.asyncio
async def test_short_last_block(store: DiskStore) -> None:
    r = ref("short", 2, size=2 * BS + 17)
    assert r.length == 17
    await store.put(r, payload(r))
    assert read_all(store, r.block_id) == payload(r)
    assert store.used_bytes == 17


@pytest.mark.asyncio
async def test_block_invisible_until_written(store: DiskStore) -> None:
    r = ref("a")
    task = asyncio.create_task(store.put(r, payload(r)))
    await asyncio.sleep(0)  # the write is running in a worker thread
    assert not task.done()
    assert store.open_block(r.block_id) is None
    await task
    assert read_all(store, r.block_id) == payload(r)


@pytest.mark.asyncio
async def test_capacity_holds_under_concurrent_puts(store: DiskStore,
                                                    metrics: NodeMetrics) -> None:
    refs = [ref(f"k{i}") for i in range(50)]
    seen: list[tuple[int, int]] = []

    async def put(r: BlockRef) -> None:
        try:
            await store.put(r, payload(r))
        finally:
            seen.append((store.used_bytes, disk_bytes(store.root)))

    results = await asyncio.gather(*(put(r) for r in refs), return_exceptions=True)
    # Each put either committed or was refused because every byte was promised to others.
    assert all(r is None or isinstance(r, StoreFull) for r in results), results
    stored = [r for r, res in zip(refs, results) if res is None]
    assert len(stored) == 8
    assert len(seen) == 50
    assert all(used <= store.capacity and on_disk <= store.capacity for used, on_disk in seen)
    assert store.used_bytes == disk_bytes(store.root) == 8 * BS
    for r in stored:
        assert read_all(store, r.block_id) == payload(r)


@pytest.mark.asyncio
async def test_capacity_holds_with_eviction_under_bounded_concurrency(
        store: DiskStore, metrics: NodeMetrics) -> None:
    refs = [ref(f"k{i}") for i in range(50)]
    limit = asyncio.Semaphore(3)  # as the filler's limiter does
    seen: list[tuple[int, int]] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            seen.append((store.used_bytes, disk_bytes(store.root)))
            await asyncio.sleep(0)

    async def put(r: BlockRef) -> None:
        async with limit:
            await store.put(r, payload(r))
            seen.append((store.used_bytes, disk_bytes(store.root)))

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(put(r) for r in refs))
    stop.set()
    await watcher
    assert max(used for used, _ in seen) <= store.capacity
    assert max(on_disk for _, on_disk in seen) <= store.capacity
    assert store.block_count == 8 and store.used_bytes == disk_bytes(store.root) == 8 * BS
    assert metrics.value("blockcache_evictions_total") == 42
    assert metrics.value("blockcache_evicted_bytes_total", reason="capacity") == 42 * BS
    assert len(block_files(store.root)) == 8


@pytest.mark.asyncio
async def test_block_larger_than_capacity_is_refused(store: DiskStore) -> None:
    big = BlockRef(ObjectMeta("bkt", "huge", 100 * BS, '"e"'), 0, 9 * BS)
    with pytest.raises(StoreFull) as info:
        await store.put(big, b"x" * (9 * BS))
    assert "capacity" in str(info.value)
    assert store.used_bytes == 0 and disk_bytes(store.root) == 0


@pytest.mark.asyncio
async def test_lru_evicts_least_recently_opened(store: DiskStore, tmp_path: Path,
                                                metrics: NodeMetrics) -> None:
    refs = [ref(f"k{i}") for i in range(8)]
    for r in refs:
        await store.put(r, payload(r))
    for r in (refs[0], refs[2]):  # k0 and k2 become the most recently used
        assert read_all(store, r.block_id) == payload(r)
    newcomers = [ref("n0"), ref("n1"), ref("n2")]
    for r in newcomers:
        await store.put(r, payload(r))
    gone = {r.block_id for r in refs if read_all(store, r.block_id) is None}
    assert gone == {refs[1].block_id, refs[3].block_id, refs[4].block_id}
    assert metrics.value("blockcache_evictions_total") == 3
    assert store.entry(refs[1].block_id) is None  # gone from the index too
    assert refs[1].block_id not in block_files(tmp_path)


@pytest.mark.asyncio
async def test_reopen_keeps_blocks(tmp_path: Path) -> None:
    first = DiskStore(tmp_path, 8 * BS, NodeMetrics())
    first.open()
    refs = [ref(f"k{i}", size=3 * BS + 5, index=i % 4) for i in range(4)]
    for r in refs:
        await first.put(r, payload(r))
    used = first.used_bytes
    first.close()

    metrics = NodeMetrics()
    second = DiskStore(tmp_path, 8 * BS, metrics)
    second.open()
    try:
        assert second.block_count == 4 and second.used_bytes == used
        assert metrics.value("blockcache_store_bytes") == used
        for r in refs:
            assert read_all(second, r.block_id) == payload(r)
        assert metrics.value("blockcache_corrupt_blocks_total") == 0
    finally:
        second.close()


@pytest.mark.asyncio
async def test_reopen_with_smaller_capacity_evicts(tmp_path: Path) -> None:
    first = DiskStore(tmp_path, 8 * BS, NodeMetrics())
    first.open()
    for i in range(8):
        r = ref(f"k{i}")
        await first.put(r, payload(r))
    first.close()
    second = DiskStore(tmp_path, 3 * BS, NodeMetrics())
    second.open()
    try:
        assert second.block_count == 3 and second.used_bytes == 3 * BS
        assert disk_bytes(tmp_path) == 3 * BS
    finally:
        second.close()


@pytest.mark.asyncio
async def test_open_removes_strays(tmp_path: Path) -> None:
    first = DiskStore(tmp_path, 8 * BS, NodeMetrics())
    first.open()
    keep = ref("keep")
    await first.put(keep, payload(keep))
    first.close()
    # A crash mid-fill leaves a temp file; a crash between rename and index.put leaves
    # a block file the index does not know.
    (tmp_path / "tmp" / "deadbeef.1.2.tmp").write_bytes(b"partial")
    orphan = ref("orphan")
    orphan_path = tmp_path / "blocks" / orphan.block_id[:2] / orphan.block_id[2:4]
    orphan_path.mkdir(parents=True, exist_ok=True)
    (orphan_path / orphan.block_id).write_bytes(payload(orphan))

    second = DiskStore(tmp_path, 8 * BS, NodeMetrics())
    second.open()
    try:
        assert list((tmp_path / "tmp").iterdir()) == []
        assert block_files(tmp_path) == {keep.block_id}
        assert second.open_block(orphan.block_id) is None
        assert read_all(second, keep.block_id) == payload(keep)
        assert second.used_bytes == disk_bytes(tmp_path) == BS
    finally:
        second.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("damage", ["delete", "truncate", "extend"])
async def test_damaged_file_is_dropped_on_read(store: DiskStore, metrics: NodeMetrics,
                                               damage: str) -> None:
    r, other = ref("a"), ref("b")
    await store.put(r, payload(r))
    await store.put(other, payload(other))
    path = store.root / "blocks" / r.block_id[:2] / r.block_id[2:4] / r.block_id
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        os.truncate(path, BS // 2)
    else:
        path.write_bytes(path.read_bytes() + b"junk")
    fds = open_fds()
    assert store.open_block(r.block_id) is None
    await settle_fds(fds)  # no fd leaked by the check
    assert metrics.value("blockcache_corrupt_blocks_total") == 1
    assert store.entry(r.block_id) is None
    assert not path.exists()
    assert store.used_bytes == BS and store.block_count == 1
    assert read_all(store, other.block_id) == payload(other)
    await store.put(r, payload(r))  # refilling works
    assert read_all(store, r.block_id) == payload(r)


@pytest.mark.asyncio
@pytest.mark.parametrize("damage", ["delete", "truncate"])
async def test_damaged_file_is_dropped_on_reopen(tmp_path: Path, damage: str) -> None:
    first = DiskStore(tmp_path, 8 * BS, NodeMetrics())
    first.open()
    r, other = ref("a"), ref("b")
    await first.put(r, payload(r))
    await first.put(other, payload(other))
    first.close()
    path = tmp_path / "blocks" / r.block_id[:2] / r.block_id[2:4] / r.block_id
    if damage == "delete":
        path.unlink()
    else:
        os.truncate(path, 10)

    metrics = NodeMetrics()
    second = DiskStore(tmp_path, 8 * BS, metrics)
    second.open()
    try:
        assert second.entry(r.block_id) is None
        assert second.open_block(r.block_id) is None
        assert second.block_count == 1 and second.used_bytes == BS
        assert block_files(tmp_path) == {other.block_id}
        assert metrics.value("blockcache_corrupt_blocks_total") == 1
    finally:
        second.close()


@pytest.mark.asyncio
async def test_delete(store: DiskStore) -> None:
    r = ref("a")
    await store.put(r, payload(r))
    assert store.delete(r.block_id) is True
    assert store.delete(r.block_id) is False
    assert store.open_block(r.block_id) is None
    assert store.used_bytes == 0 and block_files(store.root) == set()


@pytest.mark.asyncio
async def test_write_failure_takes_store_out_of_rotation(store: DiskStore) -> None:
    good = ref("good")
    await store.put(good, payload(good))
    tmp = store.root / "tmp"
    tmp.rmdir()
    tmp.write_bytes(b"")  # the temp dir is now a file: every write fails
    r = ref("a")
    with pytest.raises(DiskUnavailable):
        await store.put(r, payload(r))
    assert store.failed
    assert store.used_bytes == BS  # the reservation was released
    assert store.open_block(good.block_id) is None  # a failed disk serves nothing
    with pytest.raises(DiskUnavailable):
        await store.put(ref("b"), payload(ref("b")))


def _entry(bucket: str, key: str, index: int, etag: str = '"e"') -> IndexEntry:
    bid = f"{bucket}-{key}-{index}".replace("/", "_")
    return IndexEntry(bid, 10, 0, 1.0, bucket, key, etag, index)


def test_index_by_prefix(tmp_path: Path) -> None:
    index = BlockIndex(tmp_path / "index")
    try:
        entries = [_entry("models", "qwen/v1/a.bin", i) for i in range(3)]
        entries += [_entry("models", "qwen/v2/a.bin", 0), _entry("models", "qwen/v10/b", 0),
                    _entry("models", "llama/v1/a", 0), _entry("modelsx", "qwen/v1/a.bin", 0),
                    _entry("model", "sqwen/v1/a.bin", 0)]
        for e in entries:
            index.put(e)
        got = list(index.by_prefix("models", "qwen/v1/"))
        assert got == [e.block_id for e in entries[:3]]  # in block order
        assert set(index.by_prefix("models", "qwen/")) == {e.block_id for e in entries[:5]}
        assert set(index.by_prefix("models", "")) == {e.block_id for e in entries[:6]}
        assert list(index.by_prefix("models", "nope")) == []
        assert set(index.by_prefix("model", "")) == {entries[7].block_id}
        index.delete(entries[1])
        assert list(index.by_prefix("models", "qwen/v1/")) == [entries[0].block_id,
                                                               entries[2].block_id]
        assert index.get(entries[1].block_id) is None
        assert index.get(entries[0].block_id) == entries[0]
        assert {e.block_id for e in index.entries()} == {e.block_id for e in entries} - {
            entries[1].block_id}
    finally:
        index.close()


def test_index_orders_block_indexes_numerically(tmp_path: Path) -> None:
    index = BlockIndex(tmp_path / "index")
    try:
        for i in (10, 2, 1, 100):
            index.put(_entry("bkt", "k", i))
        assert list(index.by_prefix("bkt", "k")) == [f"bkt-k-{i}" for i in (1, 2, 10, 100)]
    finally:
        index.close()


@pytest.mark.asyncio
async def test_store_writes_prefix_index(store: DiskStore) -> None:
    refs = [ref("m/v1/w.bin", i, size=3 * BS) for i in range(3)] + [ref("m/v2/w.bin")]
    for r in refs:
        await store.put(r, payload(r))
    assert store._index is not None
    assert list(store._index.by_prefix("bkt", "m/v1/")) == [r.block_id for r in refs[:3]]


@pytest.mark.asyncio
async def test_concurrent_puts_of_one_block(tmp_path: Path) -> None:
    big = 2**20  # large enough that the worker-thread writes overlap
    store = DiskStore(tmp_path, 32 * big, NodeMetrics())
    store.open()
    try:
        r = BlockRef(ObjectMeta("bkt", "a", 4 * big, '"e"'), 0, big)
        data = bytes(range(256)) * (big // 256)  # one bytes object shared by every put
        results = await asyncio.gather(*(store.put(r, data) for _ in range(16)),
                                       return_exceptions=True)
        assert results == [None] * 16
        assert store.failed is None
        assert store.used_bytes == big and store.block_count == 1
        assert read_all(store, r.block_id) == data
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        store.close()


@pytest.mark.asyncio
async def test_running_out_of_fds_is_overload_not_a_dead_disk(
        store: DiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from cachenode.errors import Overloaded
    r = ref("m")
    await store.put(r, payload(r))
    real_open = os.open

    def no_fds(path: object, *args: object, **kw: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "open", no_fds)
    with pytest.raises(Overloaded, match="Too many open files"):
        store.open_block(r.block_id)
    monkeypatch.setattr(os, "open", real_open)
    assert store.failed is None
    assert read_all(store, r.block_id) == payload(r)


@pytest.mark.asyncio
async def test_a_failed_disk_is_tried_again_later(
        store: DiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from cachenode.store import health
    r = ref("m")
    await store.put(r, payload(r))
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EIO, "Input/output error")))
    assert store.open_block(r.block_id) is None
    assert store.failed and "Input/output error" in store.failed
    monkeypatch.setattr(os, "open", real_open)
    assert store.open_block(r.block_id) is None  # out of rotation for a while
    monkeypatch.setattr(health, "RETRY_FAILED_DISK_S", 0.0)
    assert read_all(store, r.block_id) == payload(r)
    assert store.failed is None


def test_a_second_process_cannot_share_the_data_dir(store: DiskStore, tmp_path: Path,
                                                     metrics: NodeMetrics) -> None:
    from cachenode.store.repair import DataDirInUse
    inflight = tmp_path / "tmp" / "x.tmp"
    inflight.write_bytes(b"a fill in progress")
    other = DiskStore(tmp_path, 8 * BS, metrics)
    with pytest.raises(DataDirInUse, match="in use by another cachenode"):
        other.open()
    assert inflight.exists()  # the running node's fill was left alone


@pytest.mark.asyncio
async def test_scrub_drops_cold_corrupt_blocks_at_its_rate_and_leaves_hot_ones(
        tmp_path: Path) -> None:
    from cachenode.store.scrub import Scrubber

    metrics = NodeMetrics()
    store = DiskStore(tmp_path, 64 * BS, metrics)
    store.open()
    try:
        refs = [ref("cold.bin", i) for i in range(6)]
        for r in refs:
            await store.put(r, payload(r))
        for r in refs[:4]:  # bit rot in four blocks, sizes kept
            path = tmp_path / "blocks" / r.block_id[:2] / r.block_id[2:4] / r.block_id
            raw = bytearray(path.read_bytes())
            raw[7] ^= 0x40
            path.write_bytes(bytes(raw))
        rate = 20 * BS  # bytes/s: 6 blocks take ~0.3 s
        scrub = Scrubber(store, metrics, rate, cold_after_s=3600)
        assert await scrub.step() == 0  # every block was just written: hot, checked when read
        assert store.block_count == 6
        scrub = Scrubber(store, metrics, rate, cold_after_s=0)
        t0 = time.monotonic()
        done = await scrub.step()
        elapsed = time.monotonic() - t0
        assert done == 2 * BS  # the two good blocks were read; the four bad ones dropped
        assert store.block_count == 2
        assert {e.index for e in store.entries_after("", 10)} == {4, 5}
        assert metrics.value("blockcache_corrupt_blocks_total") == 4
        assert elapsed >= 2 * BS / rate * 0.9  # paced at its rate
        assert await scrub.step() is None  # the pass is over
        assert metrics.value("blockcache_scrub_passes_total") == 1
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_format_2_index_is_upgraded_in_place_its_blocks_nobodys_read_through(
        tmp_path: Path, metrics: NodeMetrics) -> None:
    import msgpack
    from rocksdict import Options, Rdict

    s = DiskStore(tmp_path, 8 * BS, metrics)
    s.open()
    r, w = ref("old"), ref("warm")
    await s.put(r, payload(r))
    await s.put(w, payload(w), tenant="a", warmed=True)
    s.close()
    opts = Options(raw_mode=True)
    db = Rdict(str(tmp_path / "index"), opts)  # rewrite it as format 2 wrote it: 7 fields
    raw = msgpack.unpackb(db[b"b/" + r.block_id.encode()])
    assert raw[7:] == ["", False]
    db[b"b/" + r.block_id.encode()] = msgpack.packb(raw[:7])
    db[b"m/format"] = b"2"
    db.close()
    s = DiskStore(tmp_path, 8 * BS, metrics)
    s.open()
    try:
        old = s.entry(r.block_id)
        assert old is not None and (old.tenant, old.warmed) == ("", False)
        warm = s.entry(w.block_id)
        assert warm is not None and (warm.tenant, warm.warmed) == ("a", True)
        assert s.quota.rows() == [("", 0, BS, None), ("a", BS, 0, None)]
    finally:
        s.close()
    db = Rdict(str(tmp_path / "index"), opts)
    assert db[b"m/format"] == b"3"
    db.close()
