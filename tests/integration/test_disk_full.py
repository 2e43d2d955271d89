"""A full disk, for real: a small tmpfs under the index and under a node's data dir."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cachenode.store.index import BlockIndex, IndexEntry
from tests.tmpfs import fill_disk, tmpfs

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
