"""The persistent block index: rocksdict, block id -> entry, plus an object-prefix index."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import msgpack
from rocksdict import Options, Rdict, WriteBatch

_BLOCK = b"b/"  # b/<block id> -> entry
_OBJECT = b"o/"  # o/<bucket>\0<key>\0<etag>\0<index> -> block id (scan by object prefix)
_FORMAT = b"m/format"  # what block ids and checksums mean; see FORMAT
# 2: block ids cover the object size, checksums are CRC-32C (1: neither, zlib CRC-32).
FORMAT = b"2"


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

    def object_key(self) -> bytes:
        """Return the secondary-index key that orders blocks by object."""
        return _OBJECT + "\0".join(
            (self.bucket, self.key, self.etag, f"{self.index:012d}")).encode("utf-8",
                                                                          "surrogatepass")


class BlockIndex:
    """A rocksdict-backed map of stored blocks; every write is atomic per block."""

    def __init__(self, path: Path) -> None:
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db = Rdict(str(path), opts)

    def close(self) -> None:
        """Flush and close the database."""
        self._db.close()

    def format_is_current(self) -> bool:
        """Return whether the index was written in FORMAT, marking an empty index as such."""
        found = self._db.get(_FORMAT)
        if found is None and next(iter(self._db.keys()), None) is None:
            self._db.put(_FORMAT, FORMAT)
            return True
        return found == FORMAT

    def get(self, block_id: str) -> IndexEntry | None:
        """Return the entry of `block_id`, or None."""
        raw = self._db.get(_BLOCK + block_id.encode())
        return None if raw is None else _decode(block_id, cast(bytes, raw))

    def put(self, e: IndexEntry) -> None:
        """Record a block (both the block and the object-prefix keys, in one batch)."""
        wb = WriteBatch(raw_mode=True)
        wb.put(_BLOCK + e.block_id.encode(), msgpack.packb(
            [e.size, e.crc32c, e.atime, e.bucket, e.key, e.etag, e.index]))
        wb.put(e.object_key(), e.block_id.encode())
        self._db.write(wb)

    def delete(self, e: IndexEntry) -> None:
        """Forget a block."""
        wb = WriteBatch(raw_mode=True)
        wb.delete(_BLOCK + e.block_id.encode())
        wb.delete(e.object_key())
        self._db.write(wb)

    def entries(self) -> Iterator[IndexEntry]:
        """Yield every entry, in block-id order."""
        for k, v in self._db.items(from_key=_BLOCK):
            k, v = cast(bytes, k), cast(bytes, v)
            if not k.startswith(_BLOCK):
                break
            yield _decode(k[len(_BLOCK):].decode(), v)

    def entries_after(self, block_id: str, limit: int) -> list[IndexEntry]:
        """Return up to `limit` entries whose ids follow `block_id` ('' = from the first)."""
        start = _BLOCK + block_id.encode() + (b"\x00" if block_id else b"")
        out: list[IndexEntry] = []
        for k, v in self._db.items(from_key=start):
            k, v = cast(bytes, k), cast(bytes, v)
            if not k.startswith(_BLOCK) or len(out) >= limit:
                break
            out.append(_decode(k[len(_BLOCK):].decode(), v))
        return out

    def by_prefix(self, bucket: str, key_prefix: str) -> Iterator[str]:
        """Yield ids of blocks whose object key starts with `key_prefix` (an index scan)."""
        start = _OBJECT + f"{bucket}\0{key_prefix}".encode("utf-8", "surrogatepass")
        for k, v in self._db.items(from_key=start):
            k, v = cast(bytes, k), cast(bytes, v)
            if not k.startswith(start):
                break
            yield v.decode()


def _decode(block_id: str, raw: bytes) -> IndexEntry:
    size, crc, atime, bucket, key, etag, index = msgpack.unpackb(raw)
    return IndexEntry(block_id, size, crc, atime, bucket, key, etag, index)
