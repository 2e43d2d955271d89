"""The persistent block index: rocksdict, block id -> entry, plus an object-prefix index."""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import msgpack
from rocksdict import Options, Rdict, WriteBatch

log = logging.getLogger(__name__)
_BLOCK = b"b/"  # b/<block id> -> entry
_OBJECT = b"o/"  # o/<bucket>\0<key>\0<etag>\0<index> -> block id (scan by object prefix)
_FORMAT = b"m/format"  # what block ids, checksums and entries mean; see FORMAT
# 2: block ids cover the object size, checksums are CRC-32C (1: neither, zlib CRC-32).
# 3: an entry also names the tenant it counts against and its class (warmed or read-through).
FORMAT = b"3"
# Formats whose blocks are still good: opened in place, the marker moved to FORMAT. A 2 entry
# reads as a read-through block of nobody (''). (A node of format 2 finds 3 unknown and starts
# empty, as it would after any newer format: a downgrade costs the cache, never a crash.)
UPGRADES = (b"2",)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the index knows about one stored block."""

    block_id: str
    size: int
    crc32c: int
    atime: float
    bucket: str
    key: str
    etag: str
    index: int
    tenant: str = ""  # whose quota it counts against ('' = nobody)
    warmed: bool = False  # filled or confirmed by a /_warm (else read-through)

    def object_key(self) -> bytes:
        """Return the secondary-index key that orders blocks by object."""
        return _OBJECT + "\0".join(
            (self.bucket, self.key, self.etag, f"{self.index:012d}")).encode("utf-8",
                                                                          "surrogatepass")


class BlockIndex:
    """A rocksdict-backed map of stored blocks; every write is atomic per block.

    A failed write (a full disk, above all) leaves rocksdb refusing every later write
    ("Writer has previous error") until it is reopened: the next write reopens it first.
    Write errors are raised as OSError (ENOSPC when the disk is full).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: Rdict | None = _open(path)
        self._broken = False  # a write failed: reopen before the next one

    @property
    def is_open(self) -> bool:
        """Return whether the database is open (a failed reopen leaves it closed)."""
        return self._db is not None

    def close(self) -> None:
        """Flush and close the database."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def reopen(self) -> None:
        """Close and open the database again (rocksdb's way out of a write error), or raise."""
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(Exception):  # after a write error close raises, yet
                db.close()  # it lets go of the files
        try:
            self._db = _open(self._path)
        except Exception as e:
            raise _os_error("reopen", e) from e
        self._broken = False

    def _live(self) -> Rdict:
        if self._db is None:
            raise OSError(errno.EIO, f"block index {self._path} is closed")
        return self._db

    def _write(self, wb: WriteBatch) -> None:
        if self._broken:
            self.reopen()
        try:
            self._live().write(wb)
        except OSError:
            raise
        except Exception as e:
            self._broken = True
            raise _os_error("write", e) from e

    @classmethod
    def open_current(cls, path: Path) -> BlockIndex:
        """Open the index at `path`; one of an older format names blocks no reader asks
        for (their ids changed), so it is dropped and a new, empty one begins."""
        index = cls(path)
        if index.format_is_current():
            return index
        index.close()
        log.warning("block index %s: older format (block ids or checksums changed); "
                    "starting with an empty store", path)
        shutil.rmtree(path)
        index = cls(path)
        index.format_is_current()  # marks the new, empty index
        return index

    def format_is_current(self) -> bool:
        """Return whether the index is in FORMAT, marking an empty or upgradable one as such."""
        db = self._live()
        found = db.get(_FORMAT)
        if (found is None and next(iter(db.keys()), None) is None) or found in UPGRADES:
            if found is not None:
                log.info("block index %s: format %s read as %s (entries without a tenant are "
                         "read-through blocks of nobody)", self._path, found.decode(),
                         FORMAT.decode())
            db.put(_FORMAT, FORMAT)
            return True
        return found == FORMAT

    def get(self, block_id: str) -> IndexEntry | None:
        """Return the entry of `block_id`, or None."""
        raw = self._live().get(_BLOCK + block_id.encode())
        return None if raw is None else _decode(block_id, cast(bytes, raw))

    def put(self, e: IndexEntry) -> None:
        """Record a block (both the block and the object-prefix keys, in one batch)."""
        wb = WriteBatch(raw_mode=True)
        wb.put(_BLOCK + e.block_id.encode(), msgpack.packb(
            [e.size, e.crc32c, e.atime, e.bucket, e.key, e.etag, e.index, e.tenant, e.warmed]))
        wb.put(e.object_key(), e.block_id.encode())
        self._write(wb)

    def delete(self, e: IndexEntry) -> None:
        """Forget a block."""
        wb = WriteBatch(raw_mode=True)
        wb.delete(_BLOCK + e.block_id.encode())
        wb.delete(e.object_key())
        self._write(wb)

    def entries(self) -> Iterator[IndexEntry]:
        """Yield every entry, in block-id order."""
        for k, v in self._live().items(from_key=_BLOCK):
            k, v = cast(bytes, k), cast(bytes, v)
            if not k.startswith(_BLOCK):
                break
            yield _decode(k[len(_BLOCK):].decode(), v)

    def entries_after(self, block_id: str, limit: int) -> list[IndexEntry]:
        """Return up to `limit` entries whose ids follow `block_id` ('' = from the first)."""
        start = _BLOCK + block_id.encode() + (b"\x00" if block_id else b"")
        out: list[IndexEntry] = []
        for k, v in self._live().items(from_key=start):
            k, v = cast(bytes, k), cast(bytes, v)
            if not k.startswith(_BLOCK) or len(out) >= limit:
                break
            out.append(_decode(k[len(_BLOCK):].decode(), v))
        return out

    def by_prefix(self, bucket: str, key_prefix: str) -> Iterator[str]:
        """Yield ids of blocks whose object key starts with `key_prefix` (an index scan)."""
        start = _OBJECT + f"{bucket}\0{key_prefix}".encode("utf-8", "surrogatepass")
        for k, v in self._live().items(from_key=start):
            k, v = cast(bytes, k), cast(bytes, v)
            if not k.startswith(start):
                break
            yield v.decode()


def _open(path: Path) -> Rdict:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    return Rdict(str(path), opts)


def _os_error(what: str, e: Exception) -> OSError:
    """Return rocksdb's error as an OSError, ENOSPC when it says the disk is full."""
    full = "No space left on device" in str(e)
    return OSError(errno.ENOSPC if full else errno.EIO, f"block index {what}: {e}")


def _decode(block_id: str, raw: bytes) -> IndexEntry:
    fields = msgpack.unpackb(raw)  # 7 fields in format 2; 9 since 3 (tenant, warmed)
    size, crc, atime, bucket, key, etag, index = fields[:7]
    tenant, warmed = (fields[7], bool(fields[8])) if len(fields) >= 9 else ("", False)
    return IndexEntry(block_id, size, crc, atime, bucket, key, etag, index, tenant, warmed)
