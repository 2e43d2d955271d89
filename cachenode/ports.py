"""The interfaces the core depends on; adapters (S3, disk, gRPC, HTTP) implement them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.listing import BucketInfo, ListPage, ListQuery
from cachenode.store.files import OpenBlock


class Origin(Protocol):
    """Where the bytes really live (an S3-compatible object store)."""

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        """Return the size, ETag, type, headers and checksums of an object, or raise.

        Raises OriginNotFound/OriginUnavailable/OriginDenied.
        """
        ...

    async def get_range(self, meta: ObjectMeta, start: int, length: int) -> bytes:
        """Return exactly `length` bytes at `start` of the pinned version, or raise."""
        ...

    async def read_into(self, meta: ObjectMeta, start: int, into: memoryview,
                        landed: Callable[[int], None]) -> None:
        """Fill `into` with the bytes at `start` of the pinned version as they arrive.

        Calls `landed(n)` whenever bytes [0, n) of `into` hold the object's bytes; returns
        when `into` is full or the object ends (the caller checks the length), else raises.
        """
        ...

    async def list_objects(self, query: ListQuery) -> ListPage:
        """Return one page of a bucket listing (prefix, delimiter, start-after, token)."""
        ...

    async def list_buckets(self) -> list[BucketInfo]:
        """Return the buckets the origin credentials can see."""
        ...

    async def bucket_region(self, bucket: str) -> str:
        """Return a bucket's region ('' for us-east-1), or raise OriginNotFound."""
        ...


class BlockStore(Protocol):
    """Local block storage: immutable blocks by id, bounded by capacity."""

    failed: str | None

    def has(self, block_id: str, size: int) -> bool:
        """Return whether a block of `size` bytes is stored (no file I/O)."""
        ...

    def open_block(self, block_id: str, expected_size: int | None = None) -> OpenBlock | None:
        """Open a committed block of `expected_size` bytes, or return None on a miss."""
        ...

    async def open_checked(self, block_id: str, size: int) -> OpenBlock | None:
        """Open a committed block whose bytes pass their checksum, or return None (a miss)."""
        ...

    async def put(self, ref: BlockRef, data: bytes | bytearray, tenant: str = "",
                  warmed: bool = False) -> None:
        """Store a complete block (visible only once complete), counted against `tenant`."""
        ...

    def claim_warmed(self, block_id: str, tenant: str) -> None:
        """Make a stored read-through block warmed and `tenant`'s (a warm found it)."""
        ...

    def delete(self, block_id: str) -> bool:
        """Remove a block; return whether it was there."""
        ...
