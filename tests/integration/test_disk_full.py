"""A full disk, for real: a small tmpfs under the index and under a node's data dir."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cachenode.store.index import BlockIndex, IndexEntry
from tests.integration.test_node_s3 import pattern
from tests.nodeproc import NodeProcess
from tests.s3proxy import CountingProxy
from tests.servers import SeaweedFS
from tests.tmpfs import fill_disk, free_bytes, tmpfs

pytestmark = pytest.mark.integration


def _entry(i: int) -> IndexEntry:
    return IndexEntry(f"block{i:06d}", 4096, i, 1.0, "bkt", f"key/{i}", '"e"', i)


def test_index_on_a_full_disk_says_enospc_and_reopens_once_there_is_room(
        tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "2m") as fs:
        index = BlockIndex(fs / "index")
        try:
            index.put(_entry(0))
            fill_disk(fs / "ballast")
            with pytest.raises(OSError) as info:
                for i in range(1, 100_000):  # the WAL needs a new page now and then
                    index.put(_entry(i))
            assert info.value.errno == errno.ENOSPC
            assert "No space left on device" in str(info.value)
            with pytest.raises(OSError):  # rocksdb keeps refusing until it is reopened
                index.put(_entry(100_000))
            (fs / "ballast").unlink()
            index.put(_entry(100_001))  # the next write reopens it
            assert index.get(_entry(0).block_id) == _entry(0)
            assert index.get(_entry(100_001).block_id) == _entry(100_001)
            assert index.is_open
        finally:
            index.close()


MiB = 2**20
BS = 4 * MiB
FLOOR = MiB  # the default floor on a 20 MiB disk: 5%


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Wait until `check()` holds, or fail naming what did not happen."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s:g}s: {what}"
        time.sleep(0.02)


def block(node: NodeProcess, bucket: str, i: int) -> bytes:
    """Return block `i` of the model, read through the node."""
    status, _, got = node.get(f"/{bucket}/model.bin",
                              {"Range": f"bytes={i * BS}-{(i + 1) * BS - 1}"})
    assert status == 206, got[:300]
    return got


def settle_writes(node: NodeProcess, quiet_s: float = 0.5, within_s: float = 10.0) -> None:
    """Wait until the node's store has not changed for `quiet_s` (its writes behind ended)."""
    deadline, last, since = time.monotonic() + within_s, None, time.monotonic()
    while time.monotonic() < deadline:
        now = (node.metric("blockcache_store_blocks"), node.metric("blockcache_store_bytes"))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)
    raise AssertionError(f"the store kept changing for {within_s}s: {last}")


def gets_per_block(proxy: CountingProxy, bucket: str) -> list[int]:
    """Return the origin's ranged GETs of the model, one count per distinct range."""
    return [n for (path, _), n in proxy.range_gets.items() if path == f"/{bucket}/model.bin"]


def temp_files(disk: Path) -> list[str]:
    return [p.name for p in (disk / "tmp").iterdir()]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """Mount a 20 MiB tmpfs to be a node's data dir (its log stays outside)."""
    with tmpfs(tmp_path / "disk", "20m") as path:
        yield path


def start_node(disk: Path, proxy: CountingProxy, s3: SeaweedFS, *args: str) -> NodeProcess:
    return NodeProcess(disk, {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                       "--capacity", "1GiB", "--metadata-ttl", "60s", *args).start()


def test_a_model_larger_than_the_disk_is_cached_up_to_the_disk(
        disk: Path, proxy: CountingProxy, s3: SeaweedFS, bucket: str) -> None:
    body = pattern(18 * BS, 21)  # 72 MiB through a 20 MiB disk, --capacity 1GiB
    s3.put_object(bucket, "model.bin", body)
    # One block read ahead, never deeper: with the default 4 (or an adaptive depth up to 16),
    # five writes in flight would be more than this disk holds, and one of them would
    # (rightly) be served uncached.
    node = start_node(disk, proxy, s3, "--readahead", "1", "--readahead-max", "1")
    try:
        for _ in range(2):
            proxy.reset()
            status, _, got = node.get(f"/{bucket}/model.bin")
            assert status == 200 and got == body
            assert sorted(gets_per_block(proxy, bucket)) == [1] * 18  # each block once
        node_stat = lambda name: node.metric(f"blockcache_store_{name}")  # noqa: E731
        settle_writes(node)  # the last block's write behind may end after its response
        kept = int(node_stat("blocks"))
        effective = node_stat("effective_capacity_bytes")
        assert 3 <= kept <= 4 and node_stat("bytes") == kept * BS <= effective
        assert effective <= 20 * MiB - FLOOR and node_stat("disk_floor_bytes") == FLOOR
        assert free_bytes(disk) >= FLOOR - 64 * 1024  # the index's own pages aside
        assert abs(node_stat("disk_free_bytes") - free_bytes(disk)) < 256 * 1024
        # The floor keeps block writes from ENOSPC; rocksdb's own writes (WAL, flushes)
        # between two looks at the disk can still meet one on a disk this small, once in a
        # while on a loaded machine: it is handled (evict, write again), never repeated.
        assert node_stat("enospc_total") <= 1
        assert temp_files(disk) == []
        assert node.get("/readyz")[0] == 200
        hits = node.metric("blockcache_block_hits_total")
        proxy.reset()
        for i in range(18 - kept, 18):  # the hot tail is on disk
            assert block(node, bucket, i) == body[i * BS:(i + 1) * BS]
        assert gets_per_block(proxy, bucket) == []
        assert node.metric("blockcache_block_hits_total") == hits + kept
    finally:
        node.stop()


def test_a_disk_filled_behind_the_nodes_back_shrinks_the_store_then_recovers(
        disk: Path, proxy: CountingProxy, s3: SeaweedFS, bucket: str) -> None:
    body = pattern(6 * BS, 22)
    s3.put_object(bucket, "model.bin", body)
    # No look at the disk between fills: the ballast is only noticed by ENOSPC or /readyz.
    node = start_node(disk, proxy, s3, "--disk-check-interval", "1h")
    blocks = lambda: node.metric("blockcache_store_blocks")  # noqa: E731
    enospc = lambda: node.metric("blockcache_store_enospc_total")  # noqa: E731
    log = lambda: node.log_path.read_text()  # noqa: E731
    try:
        for i in (0, 1):
            assert block(node, bucket, i) == body[i * BS:(i + 1) * BS]
        wait_for(lambda: blocks() == 2, "blocks 0 and 1 stored")

        fill_disk(disk / "ballast")  # another writer takes every free byte
        assert block(node, bucket, 2) == body[2 * BS:3 * BS]
        wait_for(lambda: enospc() == 1 and blocks() == 1, "ENOSPC, then block 2 kept")
        assert f"disk full at {disk} (ENOSPC on write " in log()
        assert temp_files(disk) == []  # the partial temp file went at once
        proxy.reset()
        assert block(node, bucket, 2) == body[2 * BS:3 * BS]  # kept: evicted 0 and 1 for it
        assert gets_per_block(proxy, bucket) == []
        assert node.get("/readyz")[0] == 200  # room for a block above the floor

        fill_disk(disk / "ballast")  # and again: now even evicting everything leaves no room
        status, _, text = node.get("/readyz")
        assert status == 503 and f"disk full at {disk}: ".encode() in text, text
        assert b"floor 1048576: no room for 4194304 more bytes above the floor" in text
        assert blocks() == 0  # evicted to give the floor back
        assert block(node, bucket, 3) == body[3 * BS:4 * BS]  # served, uncached
        wait_for(lambda: "uncached: disk full at" in log(), "block 3 refused by the store")
        assert enospc() == 1  # refused before writing: no second ENOSPC
        assert temp_files(disk) == [] and blocks() == 0

        (disk / "ballast").unlink()  # the other writer is done: errors clear
        wait_for(lambda: node.get("/readyz")[0] == 200, "/readyz ready again")
        assert block(node, bucket, 3) == body[3 * BS:4 * BS]
        wait_for(lambda: blocks() == 1, "block 3 stored")
        proxy.reset()
        assert block(node, bucket, 3) == body[3 * BS:4 * BS]
        assert gets_per_block(proxy, bucket) == []
        assert "Traceback" not in log() and "capacity 1073741824" not in log()
    finally:
        node.stop()
