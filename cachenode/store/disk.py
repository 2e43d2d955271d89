"""Block files on local disk: write temp, rename, then index; capacity kept by eviction.

The capacity is the configured one or what fits on the filesystem above its free-space floor
(store/space.py), the lesser: a disk filled by others, or an ENOSPC, shrinks the store.
Eviction goes by class (store/classes.py: over-quota read-through, read-through, warmed; LRU
in each), and each tenant is kept under its share of its quota (store/quota.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from cachenode.blocks import BlockRef
from cachenode.checksum import file_crc32c
from cachenode.errors import CacheError, DiskUnavailable, StoreFull
from cachenode.metrics import NodeMetrics
from cachenode.store.classes import ClassedLru
from cachenode.store.files import OpenBlock, unlink_quietly, write_block_file
from cachenode.store.health import DiskHealth
from cachenode.store.index import BlockIndex, IndexEntry
from cachenode.store.quota import QuotaKeeper
from cachenode.store.repair import checked_entries, lock_data_dir, remove_strays
from cachenode.store.space import StoreSpace
from cachenode.store.temp import TempFiles

log = logging.getLogger(__name__)
ATIME_PERSIST_S = 60.0  # persist a hit's access time at most this often per block


class DiskStore:
    """Block files under `root/blocks/xx/yy/<id>` with a rocksdict index at `root/index`.

    Capacity holds at every moment: a fill reserves its bytes (evicting the least
    recently used blocks) before it writes, so concurrent fills cannot overshoot, and
    its temp file counts until it is renamed or removed.
    """

    def __init__(self, root: Path, capacity_bytes: int, metrics: NodeMetrics,
                 fsync: bool = False, space: StoreSpace | None = None,
                 quota: Callable[[str], int | None] | None = None) -> None:
        """Describe a store; `quota(tenant)` is the bytes a tenant may hold here (None: any)."""
        self.root = Path(root)
        self._metrics, self._fsync = metrics, fsync
        self._blocks = self.root / "blocks"
        # the capacity, the disk's floor and the bytes being written; guarded by the loop
        self.space = space or StoreSpace(self.root, capacity_bytes)
        self._temp = TempFiles(self.root / "tmp", self.space,
                               lambda tmp, final, data: self._write_file(tmp, final, data))
        self._lru = ClassedLru()  # committed blocks by holder and class; guarded by the loop
        self.quota = QuotaKeeper(self._lru, quota or (lambda tenant: None), self._evict, metrics)
        self._index: BlockIndex | None = None
        self.health = DiskHealth(self.root, self._reopen_index)
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

    @property
    def capacity(self) -> int:
        """Return the configured capacity."""
        return self.space.capacity

    def open(self) -> None:
        """Open the index and reconcile it with the files (a crash may leave either behind)."""
        self._blocks.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_data_dir(self.root)
        self._temp.clear()
        self._index = BlockIndex.open_current(self.root / "index")
        entries, dropped = checked_entries(self._index, self._path)
        self._metrics.corrupt_blocks.inc(dropped)  # file and index disagreed, as in open_block
        strays = remove_strays(self._blocks, {e.block_id for e in entries})
        for e in sorted(entries, key=lambda e: e.atime):
            self._lru.add(e.block_id, e.size, e.tenant, e.warmed)
        self._look()  # evicts down to the capacity, or to what fits above the floor
        log.info("block store %s: %d blocks, %d bytes; dropped %d index entries without files, "
                 "removed %d stray files; %d bytes free on its disk, floor %d, holds at most "
                 "%d bytes", self.root, len(self._lru), self._lru.total, dropped, strays,
                 self.space.free_bytes, self.space.floor_bytes, self.space.limit)

    def close(self) -> None:
        """Close the index."""
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _reopen_index(self) -> None:
        """Reopen an index whose reopen after a write error failed (a retry of the disk)."""
        if self._index is not None and not self._index.is_open:
            self._index.reopen()

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

    def open_block(self, block_id: str, expected_size: int | None = None,
                   touch: bool = True) -> OpenBlock | None:
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
        if not touch:  # the scrubber: a check is no use, the block stays as cold as it was
            return OpenBlock(block_id, fd, e.size, e.crc32c)
        self._lru.touch(block_id)
        now = time.time()
        if now - e.atime > ATIME_PERSIST_S:
            self._index_put(replace(e, atime=now))
        return OpenBlock(block_id, fd, e.size, e.crc32c)

    async def open_checked(self, block_id: str, size: int,
                           touch: bool = True) -> OpenBlock | None:
        """Open a committed block whose bytes pass their recorded checksum, or return None.

        The file is checksummed in a worker thread just before it is handed out, so what is
        then sent (sendfile reads the same page-cache pages) is what was stored. A block
        that fails is dropped and counted as corrupt: the caller treats it as a miss.
        """
        ob = self.open_block(block_id, size, touch)
        if ob is None:
            return None
        try:
            got = await asyncio.get_running_loop().run_in_executor(
                None, file_crc32c, ob.fd, ob.size)
        except OSError as err:
            ob.close()
            self.health.os_error(f"read {block_id}", err)
            return None
        except BaseException:
            ob.close()
            raise
        if got == ob.crc32c:
            return ob
        ob.close()
        e = self.entry(block_id)
        if e is not None:
            self._drop(e, "bytes fail their recorded CRC-32C" if got is not None
                       else "file shorter than recorded")
        return None

    async def put(self, ref: BlockRef, data: bytes | bytearray, tenant: str = "",
                  warmed: bool = False) -> None:
        """Store a filled block: reserve space, write a temp file, rename, then index it.

        The block counts against `tenant`, as warmed or read-through. A full disk (ENOSPC)
        shrinks the store to what fits, and the block is tried once more.
        """
        if not self.health.usable():
            raise DiskUnavailable(self.failed or "")
        for _attempt in range(2):
            if ref.block_id in self._lru:
                return
            if await self._write_block(ref, data, tenant, warmed):
                return
        size = len(data)  # ENOSPC twice
        raise StoreFull(size, self.space.limit, self.space.disk_full(self._lru.total, size))

    async def _write_block(self, ref: BlockRef, data: bytes | bytearray, tenant: str,
                           warmed: bool) -> bool:
        """Write and index one block; return False if the disk was full (the store shrank)."""
        bid, size = ref.block_id, len(data)
        self._reserve(size)  # raises StoreFull
        try:
            crc = await self._temp.write(bid, self._path(bid), data, lambda: bid in self._lru)
        except OSError as err:
            return self._write_failed(f"write {bid}", err)
        return self._commit(ref, size, crc, tenant, warmed)

    def _commit(self, ref: BlockRef, size: int, crc: int, tenant: str, warmed: bool) -> bool:
        """Index a written block; return False if the disk was too full for the index."""
        bid = ref.block_id
        assert self._index is not None, "store is not open"
        try:
            self._index.put(IndexEntry(bid, size, crc, time.time(), ref.obj.bucket,
                                       ref.obj.key, ref.obj.etag, ref.index, tenant, warmed))
        except OSError as err:
            if bid not in self._lru:  # else a concurrent put of this block indexed the file
                unlink_quietly(self._path(bid))
            return self._write_failed(f"index {bid}", err)
        self._lru.add(bid, size, tenant, warmed)
        if not warmed:
            self.quota.enforce(tenant, keep=bid)
        self._update_gauges()
        return True

    def _write_failed(self, what: str, err: OSError) -> bool:
        """Shrink the store on ENOSPC and return False; fail the store on other errors."""
        if err.errno != errno.ENOSPC or self._index is None or not self._index.is_open:
            self.health.os_error(what, err)
            raise DiskUnavailable(str(err)) from err
        self._metrics.enospc.inc()
        self._look(ceiling=self._lru.total + self.space.reserved)  # at most what is there now
        log.warning("disk full at %s (ENOSPC on %s): %d bytes free, floor %d; the store now "
                    "holds at most %d bytes", self.root, what, self.space.free_bytes,
                    self.space.floor_bytes, self.space.limit)
        return False

    def _write_file(self, tmp: Path, final: Path, data: bytes | bytearray) -> int:
        return write_block_file(tmp, final, data, self._fsync)  # a seam for tests

    def _reserve(self, size: int) -> None:
        if self.space.due():
            self._look()  # at most once per interval: only other writers make it stale
        self.space.reserve(size, self._lru.total, self._shrink_to)

    def _look(self, ceiling: int | None = None) -> None:
        """Look at the disk's free space now and evict down to what fits above the floor."""
        try:
            self.space.look(self._lru.total, ceiling)
        except OSError as err:
            self.health.os_error(f"statvfs {self.root}", err)
            raise DiskUnavailable(str(err)) from err
        self._shrink_to(self.space.limit - self.space.reserved)

    def disk_trouble(self, room: int) -> str | None:
        """Return why the disk cannot take `room` more bytes even after eviction, or None."""
        if self._index is None or not self.health.usable():  # a failed one is retried too
            return self.failed
        try:
            self._look()
        except CacheError as e:
            return str(e)
        return None if self.space.limit >= room else self.space.disk_full(self._lru.total, room)

    def _shrink_to(self, target: int) -> int:
        """Evict blocks in class order until at most `target` bytes remain; return them."""
        self.quota.shrink_to(target)
        self._update_gauges()
        return self._lru.total

    def _evict(self, bid: str, for_capacity: bool) -> None:
        """Remove a block for capacity, or for its tenant's quota."""
        e = self.entry(bid)
        self._lru.remove(bid)
        if e is not None:
            self._delete(e)
        if for_capacity:
            self._metrics.evictions.inc()
        reason = "capacity" if for_capacity else "quota"
        self._metrics.evicted_bytes.labels(reason).inc(e.size if e else 0)

    def claim_warmed(self, block_id: str, tenant: str) -> None:
        """Make a stored read-through block warmed and `tenant`'s (a /_warm found or joined it).

        A block warmed already stays with its holder (store/quota.py).
        """
        holder = self._lru.holder(block_id)
        e = self.entry(block_id) if holder is not None and not holder[1] else None
        if e is not None:
            self._index_put(replace(e, tenant=tenant, warmed=True))
            self._lru.reclass(block_id, tenant, True)

    def delete(self, block_id: str) -> bool:
        """Remove a block from the store; return whether it was there."""
        e = self.entry(block_id)
        self._lru.remove(block_id)
        if e is None:
            return False
        self._delete(e)
        self._update_gauges()
        return True

    def entries_after(self, block_id: str, limit: int) -> list[IndexEntry]:
        """Return up to `limit` index entries after `block_id` in id order ('' = the first)."""
        return [] if self._index is None else self._index.entries_after(block_id, limit)

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
            try:
                self._index.delete(e)
            except OSError as err:  # the entry is dropped at the next start (no file)
                self._index_error(f"delete {e.block_id}", err)
        unlink_quietly(self._path(e.block_id))

    def _index_put(self, e: IndexEntry) -> None:
        """Record a read's access time; a failure costs the reader nothing."""
        assert self._index is not None, "store is not open"
        try:
            self._index.put(e)
        except OSError as err:
            self._index_error(f"atime {e.block_id}", err)

    def _index_error(self, what: str, err: OSError) -> None:
        """Note a failed index write; an index that could not be reopened fails the store."""
        if self._index is not None and not self._index.is_open:
            self.health.fail(f"index {what}: {err}")
        else:
            log.warning("block index write failed (%s; the next write reopens it): %s", what, err)

    def _update_gauges(self) -> None:
        self.space.report(self._metrics, self._lru.total, len(self._lru))
