"""Fakes for narrow tests: an in-memory origin with call counts and failure injection."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter

from cachenode.blocks import ObjectMeta
from cachenode.errors import CacheError, ObjectChanged, OriginNotFound, OriginUnavailable


def blob(size: int, seed: int = 1) -> bytes:
    """Return `size` deterministic bytes that differ per seed."""
    return bytes((seed * 7 + i * 31 + (i >> 8)) % 256 for i in range(size))


class FakeOrigin:
    """A dict of objects behaving like the S3 origin, counting every call."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.heads: Counter[tuple[str, str]] = Counter()
        self.gets: Counter[tuple[str, str, int]] = Counter()  # (bucket, key, start)
        self.delay_s = delay_s
        self.fail: CacheError | None = None  # raised by every call while set

    def put(self, bucket: str, key: str, data: bytes) -> str:
        """Store an object and return its new ETag."""
        etag = '"' + hashlib.md5(data + str(time.monotonic_ns()).encode()).hexdigest() + '"'
        self.objects[(bucket, key)] = (data, etag)
        return etag

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        """Return the metadata of an object."""
        self.heads[(bucket, key)] += 1
        await self._step()
        data, etag = self._get(bucket, key)
        return ObjectMeta(bucket, key, len(data), etag, 1_700_000_000.0)

    async def get_range(self, meta: ObjectMeta, start: int, length: int) -> bytes:
        """Return bytes of the pinned version, or raise ObjectChanged."""
        self.gets[(meta.bucket, meta.key, start)] += 1
        await self._step()
        data, etag = self._get(meta.bucket, meta.key)
        if etag != meta.etag:
            raise ObjectChanged(meta.bucket, meta.key, meta.etag)
        return data[start:start + length]

    async def list_page(self, bucket: str, prefix: str, token: str = "",
                        limit: int = 1000) -> tuple[list[ObjectMeta], str]:
        """Return objects under `prefix` after key `token`, `limit` at a time."""
        await self._step()
        keys = sorted(k for (b, k) in self.objects if b == bucket and k.startswith(prefix)
                      and k > token)
        page = [ObjectMeta(bucket, k, len(self.objects[(bucket, k)][0]),
                           self.objects[(bucket, k)][1]) for k in keys[:limit]]
        return page, (keys[limit - 1] if len(keys) > limit else "")

    async def _step(self) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail

    def _get(self, bucket: str, key: str) -> tuple[bytes, str]:
        try:
            return self.objects[(bucket, key)]
        except KeyError:
            raise OriginNotFound(bucket, key) from None


def down(bucket: str = "b", key: str = "k") -> OriginUnavailable:
    """Return the error a stopped origin causes."""
    return OriginUnavailable(bucket, key, "connection refused")
