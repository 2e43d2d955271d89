"""Block files on local disk: write temp, rename, then index; capacity kept by LRU eviction."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cachenode.blocks import BlockRef
from cachenode.checksum import crc32c, file_crc32c
from cachenode.errors import CacheError, DiskUnavailable, Overloaded, StoreFull
from cachenode.metrics import NodeMetrics
from cachenode.store.eviction import LruPolicy
from cachenode.store.index import BlockIndex, IndexEntry

log = logging.getLogger(__name__)
ATIME_PERSIST_S = 60.0  # persist a hit's access time at most this often per block
RETRY_FAILED_DISK_S = 30.0  # a failed store tries the disk again after this long
_BUSY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN}  # the process, not the disk


class DataDirInUse(CacheError):
    """Another cachenode process already uses this data directory."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reason = f"data dir {root} is in use by another cachenode process"


@dataclass(slots=True)
class OpenBlock:
    """An open block file; the reader owns `fd` and must close it."""

    block_id: str
    fd: int
    size: int
    crc32c: int
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
        self.failed: str | None = None  # set when the disk fails; the store stops serving
        self._failed_at = 0.0
        self._lock_fd = -1

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
        self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise DataDirInUse(self.root) from None
        shutil.rmtree(self._tmp, ignore_errors=True)  # unfinished fills are never served
        self._tmp.mkdir(parents=True)
        self._index = self._open_index()
        entries, dropped = [], 0
        for e in self._index.entries():
            try:
                ok = os.stat(self._path(e.block_id)).st_size == e.size
            except FileNotFoundError:
                ok = False
            if ok:
                entries.append(e)
            else:
                self._index.delete(e)
                dropped += 1
        self._metrics.corrupt_blocks.inc(dropped)  # file and index disagreed, as in open_block
        known = {e.block_id for e in entries}
        strays = self._remove_strays(known)
        for e in sorted(entries, key=lambda e: e.atime):
            self._lru.add(e.block_id, e.size)
        log.info("block store %s: %d blocks, %d bytes; dropped %d index entries without files, "
                 "removed %d stray files", self.root, len(entries), self._lru.total, dropped,
                 strays)
        self._shrink_to(self.capacity)
        self._update_gauges()

    def _open_index(self) -> BlockIndex:
        """Open the index; one of an older format names blocks no reader asks for: start anew."""
        index = BlockIndex(self.root / "index")
        if index.format_is_current():
            return index
        index.close()
        log.warning("block store %s: index of an older format (block ids or checksums changed); "
                    "starting with an empty store", self.root)
        shutil.rmtree(self.root / "index")
        index = BlockIndex(self.root / "index")
        index.format_is_current()  # marks the new, empty index
        return index

    def close(self) -> None:
        """Close the index."""
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def _remove_strays(self, known: set[str]) -> int:
        removed = 0
        for dirpath, _dirs, files in os.walk(self._blocks):
            for name in files:
                if name not in known:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
        return removed

    def _path(self, block_id: str) -> Path:
        return self._blocks / block_id[:2] / block_id[2:4] / block_id

    def entry(self, block_id: str) -> IndexEntry | None:
        """Return the index entry of a committed block, or None."""
        return None if self._index is None else self._index.get(block_id)

    def has(self, block_id: str, size: int) -> bool:
        """Return whether a block of `size` bytes is committed (an index lookup; no file I/O).

        A hit counts as a use: the block becomes the most recently used.
        """
        if not self._usable() or block_id not in self._lru:
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
        if not self._usable() or block_id not in self._lru:
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
            self._os_error(f"open {block_id}", err)
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
            self._index_put(IndexEntry(e.block_id, e.size, e.crc32c, now, e.bucket, e.key,
                                       e.etag, e.index))
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
            self._os_error(f"read {block_id}", err)
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

    async def put(self, ref: BlockRef, data: bytes) -> None:
        """Store a filled block: reserve space, write a temp file, rename, then index it."""
        if not self._usable():
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
            self._os_error(f"write {bid}", err)
            raise DiskUnavailable(str(err)) from err
        finally:
            self._reserved -= size
        self._index_put(IndexEntry(bid, size, crc, time.time(), ref.obj.bucket, ref.obj.key,
                                   ref.obj.etag, ref.index))
        self._lru.add(bid, size)
        self._update_gauges()

    def _write_file(self, tmp: Path, final: Path, data: bytes) -> int:
        crc = crc32c(data)
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
            self._index.delete(e)
        try:
            os.unlink(self._path(e.block_id))
        except FileNotFoundError:
            pass

    def _index_put(self, e: IndexEntry) -> None:
        assert self._index is not None, "store is not open"
        self._index.put(e)

    def _os_error(self, what: str, err: OSError) -> None:
        """Take the disk out of rotation, unless the process (not the disk) is short of fds."""
        if err.errno in _BUSY:
            raise Overloaded(f"{what}: {err}") from err
        self._fail(f"{what}: {err}")

    def _fail(self, why: str) -> None:
        if not self.failed:
            log.error("block store %s taken out of rotation for %.0fs: %s", self.root,
                      RETRY_FAILED_DISK_S, why)
        self.failed, self._failed_at = why, time.monotonic()

    def _usable(self) -> bool:
        """Return whether the store serves; a failed one tries again after a while."""
        if self.failed and time.monotonic() - self._failed_at > RETRY_FAILED_DISK_S:
            log.warning("block store %s: trying the disk again after: %s", self.root,
                        self.failed)
            self.failed = None
        return self.failed is None

    def _update_gauges(self) -> None:
        self._metrics.store_bytes.set(self._lru.total)
        self._metrics.store_blocks.set(len(self._lru))
        self._metrics.capacity_bytes.set(self.capacity)
