"""Block files on local disk: write temp, rename, then index; capacity kept by LRU eviction."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cachenode.blocks import BlockRef
from cachenode.errors import DiskUnavailable, StoreFull
from cachenode.metrics import NodeMetrics
from cachenode.store.eviction import LruPolicy
from cachenode.store.health import DiskHealth
from cachenode.store.index import BlockIndex, IndexEntry
from cachenode.store.repair import checked_entries, lock_data_dir, remove_strays

log = logging.getLogger(__name__)
ATIME_PERSIST_S = 60.0  # persist a hit's access time at most this often per block


@dataclass(slots=True)
class OpenBlock:
    """An open block file; the reader owns `fd` and must close it."""

    block_id: str
    fd: int
    size: int
    crc32: int
    source: str = "disk"  # "origin" when this read filled the block just now

    def close(self) -> None:
        """Close the file descriptor."""
        os.close(self.fd)


class DiskStore:
    """Block files under `root/blocks/xx/yy/<id>` with a rocksdict index at `root/index`.

    Capacity holds at every moment: a fill reserves its bytes (evicting the least
    recently used blocks) before it writes, so concurrent fills cannot overshoot.
    """

    def __init__(self, root: Path, capacity_bytes: int, metrics: NodeMetrics,
                 fsync: bool = False) -> None:
        self.root, self.capacity = Path(root), capacity_bytes
        self._metrics, self._fsync = metrics, fsync
        self._blocks, self._tmp = self.root / "blocks", self.root / "tmp"
        self._lru = LruPolicy()  # committed blocks; guarded by the event loop
        self._reserved = 0  # bytes promised to fills in progress
        self._index: BlockIndex | None = None
        self.health = DiskHealth(self.root, lambda: None)
        self._lock_fd = -1

    @property
    def failed(self) -> str | None:
        """Return why the disk is out of rotation, or None while it serves."""
        return self.health.failed

    @failed.setter
    def failed(self, why: str | None) -> None:
        self.health.failed = why

    @property
    def used_bytes(self) -> int:
        """Return the bytes of committed blocks."""
        return self._lru.total

    @property
    def block_count(self) -> int:
        """Return the number of committed blocks."""
        return len(self._lru)

    def open(self) -> None:
        """Open the index and reconcile it with the files (a crash may leave either behind)."""
        self._blocks.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_data_dir(self.root)
        shutil.rmtree(self._tmp, ignore_errors=True)  # unfinished fills are never served
        self._tmp.mkdir(parents=True)
        self._index = BlockIndex(self.root / "index")
        entries, dropped = checked_entries(self._index, self._path)
        self._metrics.corrupt_blocks.inc(dropped)  # file and index disagreed, as in open_block
        strays = remove_strays(self._blocks, {e.block_id for e in entries})
        for e in sorted(entries, key=lambda e: e.atime):
            self._lru.add(e.block_id, e.size)
        log.info("block store %s: %d blocks, %d bytes; dropped %d index entries without files, "
                 "removed %d stray files", self.root, len(entries), self._lru.total, dropped,
                 strays)
        self._shrink_to(self.capacity)
        self._update_gauges()

    def close(self) -> None:
        """Close the index."""
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _path(self, block_id: str) -> Path:
        return self._blocks / block_id[:2] / block_id[2:4] / block_id

    def entry(self, block_id: str) -> IndexEntry | None:
        """Return the index entry of a committed block, or None."""
        return None if self._index is None else self._index.get(block_id)

    def has(self, block_id: str, size: int) -> bool:
        """Return whether a block of `size` bytes is committed (an index lookup; no file I/O).

        A hit counts as a use: the block becomes the most recently used.
        """
        if not self.health.usable() or block_id not in self._lru:
            return False
        e = self.entry(block_id)
        if e is None or e.size != size:
            return False
        self._lru.touch(block_id)
        return True

    def open_block(self, block_id: str, expected_size: int | None = None) -> OpenBlock | None:
        """Open a committed block for reading, or return None on a miss.

        A block whose file is missing or whose size differs from the index (or from
        `expected_size`) is dropped and is a miss.
        """
        if not self.health.usable() or block_id not in self._lru:
            return None
        e = self.entry(block_id)
        if e is None:
            self._lru.remove(block_id)
            return None
        if expected_size is not None and e.size != expected_size:
            self._drop(e, f"{e.size} bytes stored, the object says {expected_size}")
            return None
        try:
            fd = os.open(self._path(block_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._drop(e, "file missing")
            return None
        except OSError as err:
            self.health.os_error(f"open {block_id}", err)
            return None
        if os.fstat(fd).st_size != e.size:
            os.close(fd)
            self._drop(e, "size mismatch")
            return None
        self._lru.touch(block_id)
        now = time.time()
        if now - e.atime > ATIME_PERSIST_S:
            self._index_put(IndexEntry(e.block_id, e.size, e.crc32, now, e.bucket, e.key,
                                       e.etag, e.index))
        return OpenBlock(block_id, fd, e.size, e.crc32)

    async def put(self, ref: BlockRef, data: bytes) -> None:
        """Store a filled block: reserve space, write a temp file, rename, then index it."""
        if not self.health.usable():
            raise DiskUnavailable(self.failed or "")
        bid, size = ref.block_id, len(data)
        if bid in self._lru:
            return
        self._reserve(size)
        try:
            # unique per call: concurrent puts of one block (same bytes object) must not share it
            tmp = self._tmp / f"{bid}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
            crc = await asyncio.get_running_loop().run_in_executor(
                None, self._write_file, tmp, self._path(bid), data)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise StoreFull(size, self.capacity) from err  # disk shared or mis-sized
            self.health.os_error(f"write {bid}", err)
            raise DiskUnavailable(str(err)) from err
        finally:
            self._reserved -= size
        self._index_put(IndexEntry(bid, size, crc, time.time(), ref.obj.bucket, ref.obj.key,
                                   ref.obj.etag, ref.index))
        self._lru.add(bid, size)
        self._update_gauges()

    def _write_file(self, tmp: Path, final: Path, data: bytes) -> int:
        crc = zlib.crc32(data)
        with open(tmp, "wb") as f:
            f.write(data)
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
        return crc

    def _reserve(self, size: int) -> None:
        if self._reserved + size > self.capacity:  # fills in progress alone fill the disk
            raise StoreFull(size, self.capacity)
        self._shrink_to(self.capacity - self._reserved - size)
        if self._lru.total + self._reserved + size > self.capacity:
            raise StoreFull(size, self.capacity)
        self._reserved += size

    def _shrink_to(self, target: int) -> None:
        while self._lru.total > target:
            bid = self._lru.oldest()
            if bid is None:
                break
            e = self.entry(bid)
            self._lru.remove(bid)
            if e is not None:
                self._delete(e)
            self._metrics.evictions.inc()
            self._metrics.evicted_bytes.inc(e.size if e else 0)
        self._update_gauges()

    def delete(self, block_id: str) -> bool:
        """Remove a block from the store; return whether it was there."""
        e = self.entry(block_id)
        self._lru.remove(block_id)
        if e is None:
            return False
        self._delete(e)
        self._update_gauges()
        return True

    def by_prefix(self, bucket: str, key_prefix: str) -> Iterator[str]:
        """Yield ids of blocks whose object key starts with `key_prefix` (an index scan)."""
        if self._index is not None:
            yield from self._index.by_prefix(bucket, key_prefix)

    def _drop(self, e: IndexEntry, why: str) -> None:
        log.warning("dropping block %s of s3://%s/%s: %s", e.block_id, e.bucket, e.key, why)
        self._metrics.corrupt_blocks.inc()
        self._lru.remove(e.block_id)
        self._delete(e)
        self._update_gauges()

    def _delete(self, e: IndexEntry) -> None:
        if self._index is not None:
            self._index.delete(e)
        try:
            os.unlink(self._path(e.block_id))
        except FileNotFoundError:
            pass

    def _index_put(self, e: IndexEntry) -> None:
        assert self._index is not None, "store is not open"
        self._index.put(e)

    def _update_gauges(self) -> None:
        self._metrics.store_bytes.set(self._lru.total)
        self._metrics.store_blocks.set(len(self._lru))
        self._metrics.capacity_bytes.set(self.capacity)
