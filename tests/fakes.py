"""Fakes for narrow tests: an in-memory origin with call counts and failure injection."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable

from cachenode.access import NO_LIMITS, TenantLimits
from cachenode.blocks import Headers, ObjectMeta
from cachenode.errors import CacheError, ObjectChanged, OriginNotFound, OriginUnavailable
from cachenode.listing import BucketInfo, ListedObject, ListPage, ListQuery


def blob(size: int, seed: int = 1) -> bytes:
    """Return `size` deterministic bytes that differ per seed."""
    return bytes((seed * 7 + i * 31 + (i >> 8)) % 256 for i in range(size))


class FakeOrigin:
    """A dict of objects behaving like the S3 origin, counting every call."""

    def __init__(self, delay_s: float = 0.0, piece_bytes: int = 0,
                 piece_delay_s: float = 0.0) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.described: dict[tuple[str, str], tuple[str, Headers, Headers]] = {}
        self.buckets: dict[str, str] = {}  # bucket -> region; put() adds "" (us-east-1)
        self.heads: Counter[tuple[str, str]] = Counter()
        self.lists: Counter[ListQuery] = Counter()  # every listing call
        self.gets: Counter[tuple[str, str, int]] = Counter()  # (bucket, key, start)
        self.delay_s = delay_s
        # A GET's body arrives in pieces of `piece_bytes` (0: at once), `piece_delay_s` apart;
        # with `cut_after` set, every body is cut after that many bytes (OriginUnavailable).
        self.piece_bytes, self.piece_delay_s = piece_bytes, piece_delay_s
        self.cut_after: int | None = None
        self.fail: CacheError | None = None  # raised by every call while set

    def put(self, bucket: str, key: str, data: bytes, content_type: str = "",
            headers: Headers = (), checksums: Headers = ()) -> str:
        """Store an object (with what a HEAD describes it by) and return its new ETag."""
        etag = '"' + hashlib.md5(data + str(time.monotonic_ns()).encode()).hexdigest() + '"'
        self.objects[(bucket, key)] = (data, etag)
        self.described[(bucket, key)] = (content_type, headers, checksums)
        self.buckets.setdefault(bucket, "")
        return etag

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        """Return the metadata of an object."""
        self.heads[(bucket, key)] += 1
        await self._step()
        data, etag = self._get(bucket, key)
        ctype, headers, sums = self.described.get((bucket, key), ("", (), ()))
        return ObjectMeta(bucket, key, len(data), etag, 1_700_000_000.0, ctype, headers, sums)

    async def get_range(self, meta: ObjectMeta, start: int, length: int) -> bytes:
        """Return bytes of the pinned version, or raise ObjectChanged."""
        self.gets[(meta.bucket, meta.key, start)] += 1
        await self._step()
        data, etag = self._get(meta.bucket, meta.key)
        if etag != meta.etag:
            raise ObjectChanged(meta.bucket, meta.key, meta.etag)
        return data[start:start + length]

    async def read_into(self, meta: ObjectMeta, start: int, into: memoryview,
                        landed: Callable[[int], None]) -> None:
        """Land the bytes of the pinned version in `into`, piece by piece, or raise."""
        data = await self.get_range(meta, start, len(into))
        step = self.piece_bytes or len(data) or 1
        for pos in range(0, len(data), step):
            if pos and self.piece_delay_s:
                await asyncio.sleep(self.piece_delay_s)
            end = min(len(data), pos + step)
            if self.cut_after is not None and end > self.cut_after:
                into[pos:self.cut_after] = data[pos:self.cut_after]
                landed(self.cut_after)
                raise OriginUnavailable(meta.bucket, meta.key, "body cut mid-block")
            into[pos:end] = data[pos:end]
            landed(end)

    async def list_objects(self, query: ListQuery) -> ListPage:
        """Return a page of keys after start-after/token, rolled up at the delimiter.

        The continuation token is the last key or common prefix returned, as SeaweedFS's is.
        """
        self.lists[query] += 1
        await self._step()
        q = query
        if q.bucket not in self.buckets:
            raise OriginNotFound(q.bucket, q.prefix, "bucket")
        after = max(q.start_after, q.token)
        entries: list[ListedObject | str] = []
        for k in sorted(k for (b, k) in self.objects if b == q.bucket):
            cut = k.find(q.delimiter, len(q.prefix)) if q.delimiter else -1
            name = k[:cut + len(q.delimiter)] if cut >= 0 else k
            if not k.startswith(q.prefix) or k <= after or name == after or name in entries:
                continue
            if len(entries) == q.limit:
                last = entries[-1]
                return self._page(entries, last if isinstance(last, str) else last.key)
            data, etag = self.objects[(q.bucket, k)]
            owner = ("fake-owner", "Fake Owner") if q.fetch_owner else ("", "")
            entries.append(name if cut >= 0 else ListedObject(
                k, len(data), etag, 1_700_000_000.0, "STANDARD", *owner))
        return self._page(entries, "")

    @staticmethod
    def _page(entries: list[ListedObject | str], token: str) -> ListPage:
        return ListPage(tuple(e for e in entries if isinstance(e, ListedObject)),
                        tuple(e for e in entries if isinstance(e, str)), token)

    async def list_buckets(self) -> list[BucketInfo]:
        """Return every bucket that holds an object (or was added to `buckets`)."""
        await self._step()
        return [BucketInfo(b, 1_600_000_000.0) for b in sorted(self.buckets)]

    async def bucket_region(self, bucket: str) -> str:
        """Return the bucket's region, or raise OriginNotFound."""
        await self._step()
        if bucket not in self.buckets:
            raise OriginNotFound(bucket, "", "bucket")
        return self.buckets[bucket]

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


class FakeTenants:
    """A TenantDirectory from a dict: tenant -> its site limits; change `tenants` at will."""

    def __init__(self, tenants: dict[str, TenantLimits] | None = None) -> None:
        self.tenants = dict(tenants or {})
        self.asked = 0  # limits() calls

    def limits(self, tenant: str) -> TenantLimits:
        """Return the tenant's limits (NO_LIMITS for '' or an unknown tenant)."""
        self.asked += 1
        return self.tenants.get(tenant, NO_LIMITS)


def down(bucket: str = "b", key: str = "k") -> OriginUnavailable:
    """Return the error a stopped origin causes."""
    return OriginUnavailable(bucket, key, "connection refused")
