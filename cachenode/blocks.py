"""Block identity and byte-range to block math, without I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
Headers = tuple[tuple[str, str], ...]  # (lower-case name, value) pairs, in origin order


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the origin says about one object version; the ETag pins the version.

    `content_type`, `headers` (Cache-Control, Content-Disposition, x-amz-meta-*, ...) and
    `checksums` (x-amz-checksum-*, from the same HEAD as the ETag) describe the version for
    the S3 API; they are bounded by the origin adapter and never part of a block's identity
    (equality and hash ignore them: a peer's pin carries none).
    """

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: float = 0.0  # unix seconds
    content_type: str = field(default="", compare=False)
    headers: Headers = field(default=(), compare=False)
    checksums: Headers = field(default=(), compare=False)

    def header_bytes(self) -> int:
        """Return the bytes of the describing fields (what a metadata cache entry costs)."""
        pairs = self.headers + self.checksums
        return len(self.content_type) + sum(len(k) + len(v) for k, v in pairs)


@dataclass(frozen=True, slots=True)
class BlockRef:
    """One block of one object version: immutable, so its id never changes meaning."""

    obj: ObjectMeta
    index: int
    block_size: int

    @property
    def start(self) -> int:
        """Return the object offset of the block's first byte."""
        return self.index * self.block_size

    @property
    def length(self) -> int:
        """Return the number of bytes in the block (the last one may be short)."""
        return max(0, min(self.block_size, self.obj.size - self.start))

    @property
    def block_id(self) -> str:
        """Return the block's stable id."""
        o = self.obj
        return block_id(o.bucket, o.key, o.etag, o.size, self.index, self.block_size)


@dataclass(frozen=True, slots=True)
class BlockSlice:
    """The part [offset, offset+length) of one block that a byte range needs."""

    ref: BlockRef
    offset: int
    length: int


def block_id(bucket: str, key: str, etag: str, size: int, index: int, block_size: int) -> str:
    """Return the hex id of a block: a hash of everything that decides its bytes.

    The object size is part of it: a block's length follows from the size, so two
    requests that disagree about the size can never share (or poison) one block.
    """
    h = hashlib.blake2b(digest_size=16)
    for part in (bucket, key, etag, str(size), str(index), str(block_size)):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def block_count(size: int, block_size: int) -> int:
    """Return how many blocks an object of `size` bytes has."""
    return (size + block_size - 1) // block_size


def slices(obj: ObjectMeta, start: int, end: int, block_size: int) -> Iterator[BlockSlice]:
    """Yield the block slices covering the inclusive byte range [start, end] of `obj`."""
    if end < start:
        return
    first, last = start // block_size, end // block_size
    for index in range(first, last + 1):
        ref = BlockRef(obj, index, block_size)
        lo = max(start, ref.start) - ref.start
        hi = min(end + 1, ref.start + ref.length) - ref.start
        yield BlockSlice(ref, lo, hi - lo)
