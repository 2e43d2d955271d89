"""The S3 origin: aiobotocore for HEAD and listings, signed aiohttp GETs for block bytes.

Block GETs (ranged, If-Match) go through cachenode/origin_http.py, which lands each body in
the fill's buffer as it arrives; a cut body is resumed where it stopped (same pinned ETag).
Retries, backoff and the fail-fast hold after a refused or silent origin are here, for both.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from cachenode.blocks import ObjectMeta
from cachenode.config import NodeConfig
from cachenode.errors import (
    CacheError,
    ObjectChanged,
    OriginDenied,
    OriginNotFound,
    OriginUnavailable,
)
from cachenode.listing import BucketInfo, ListedObject, ListPage, ListQuery
from cachenode.meta_headers import kept_headers
from cachenode.metrics import NodeMetrics
from cachenode.origin_http import RETRYABLE_CODES, RangeReader, Retryable

log = logging.getLogger(__name__)
T = TypeVar("T")
SLOW_FETCH_S = 2.0
DOWN_HOLD_S = 1.0  # after a refused or timed-out call, misses fail at once for this long
RETRY_BASE_S = 0.1  # backoff before retry n is RETRY_BASE_S * 2**n, jittered


_DOWN = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, TimeoutError,
         aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError, ConnectionRefusedError)


class S3Origin:
    """Read object metadata and byte ranges from an S3-compatible store."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics) -> None:
        self._config, self._metrics = config, metrics
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._ranges: RangeReader | None = None  # block GETs, set at start
        self._down_until = 0.0  # monotonic time until which the origin counts as unreachable
        self._down_reason = ""
        self._where = config.origin_endpoint_url or "the AWS S3 endpoint"

    async def start(self) -> None:
        """Create the S3 client (credentials from the usual AWS sources)."""
        c = self._config
        cfg = AioConfig(
            connect_timeout=c.origin_connect_timeout_s, read_timeout=c.origin_read_timeout_s,
            retries={"total_max_attempts": 1},  # retries are ours: see _call
            max_pool_connections=c.max_concurrent_fills + 16,
            s3={"addressing_style": "path"},
        )
        session = get_session()
        self._client = await self._stack.enter_async_context(session.create_client(
            "s3", endpoint_url=c.origin_endpoint_url or None,
            region_name=c.origin_region or None,
            config=cfg))
        meta = self._client.meta  # the endpoint and region botocore resolved; its credentials
        self._ranges = RangeReader(meta.endpoint_url, meta.region_name,
                                   await session.get_credentials(), self._metrics,
                                   c.origin_connect_timeout_s, c.origin_read_timeout_s,
                                   c.max_concurrent_fills + 16)
        self._stack.push_async_callback(self._ranges.close)

    async def close(self) -> None:
        """Close the client and its connections."""
        await self._stack.aclose()

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        """Return the size, ETag, modification time, type, headers and checksums of an object.

        The checksums are asked for (x-amz-checksum-mode) in the same HEAD as the ETag, so
        they are the ones of that version.
        """

        async def once() -> ObjectMeta:
            r = await self._client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            lm = r.get("LastModified")
            raw = r.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            content_type, headers, checksums = kept_headers(raw)
            return ObjectMeta(bucket, key, int(r["ContentLength"]), r["ETag"],
                              lm.timestamp() if lm else 0.0, content_type, headers, checksums)

        try:
            return await self._call("head", bucket, key, "", once)
        except OriginNotFound as e:
            # A HEAD's 404 has no body to say which is missing: ask the bucket.
            if e.what == "key" and not await self._bucket_exists(bucket):
                raise OriginNotFound(bucket, key, "bucket") from None
            raise

    async def _bucket_exists(self, bucket: str) -> bool:
        """Return False only if the origin says the bucket does not exist (HeadBucket 404)."""

        async def once() -> None:
            await self._client.head_bucket(Bucket=bucket)

        try:
            await self._call("head_bucket", bucket, "", "", once)
        except OriginNotFound:
            return False
        except CacheError:
            return True  # cannot tell: the key's 404 stands
        return True

    async def get_range(self, meta: ObjectMeta, start: int, length: int) -> bytes:
        """Return `length` bytes at `start` of the pinned object version (If-Match)."""
        buf = bytearray(length)
        await self.read_into(meta, start, memoryview(buf), lambda n: None)
        return bytes(buf)

    async def read_into(self, meta: ObjectMeta, start: int, into: memoryview,
                        landed: Callable[[int], None]) -> None:
        """Land `len(into)` bytes at `start` of the pinned version (If-Match) in `into`.

        A body cut short is asked for again from where it stopped, within the attempts.
        """
        assert self._ranges is not None, "call start() first"
        ranges, got = self._ranges, 0

        async def once() -> None:
            base = got

            def at(n: int) -> None:
                nonlocal got
                got = base + n
                landed(got)

            await ranges.read(meta, start + base, into[base:], at)

        t0 = time.monotonic()
        await self._call("get", meta.bucket, meta.key, meta.etag, once)
        elapsed = time.monotonic() - t0
        if elapsed > SLOW_FETCH_S:
            log.warning("slow origin GET s3://%s/%s bytes=%d-%d: %.2fs", meta.bucket, meta.key,
                        start, start + len(into) - 1, elapsed)
        self._metrics.origin_bytes.inc(len(into))

    async def list_objects(self, query: ListQuery) -> ListPage:
        """Return one page of a bucket listing (ListObjectsV2 at the origin)."""
        q = query
        kw: dict[str, Any] = {"Bucket": q.bucket, "Prefix": q.prefix, "MaxKeys": q.limit}
        for name, value in (("Delimiter", q.delimiter), ("StartAfter", q.start_after),
                            ("ContinuationToken", q.token)):
            if value:
                kw[name] = value
        if q.fetch_owner:
            kw["FetchOwner"] = True

        async def once() -> ListPage:
            r = await self._client.list_objects_v2(**kw)
            objs = tuple(_listed(o) for o in r.get("Contents", []))
            prefixes = tuple(p["Prefix"] for p in r.get("CommonPrefixes", []))
            token = (r.get("NextContinuationToken") or "") if r.get("IsTruncated") else ""
            return ListPage(objs, prefixes, token)

        return await self._call("list", q.bucket, q.prefix, "", once)

    async def list_buckets(self) -> list[BucketInfo]:
        """Return the buckets the node's credentials can see."""

        async def once() -> list[BucketInfo]:
            r = await self._client.list_buckets()
            return [BucketInfo(b["Name"], b["CreationDate"].timestamp() if b.get(
                "CreationDate") else 0.0) for b in r.get("Buckets", [])]

        return await self._call("list_buckets", "", "", "", once)

    async def bucket_region(self, bucket: str) -> str:
        """Return a bucket's region ('' for us-east-1), or raise OriginNotFound."""

        async def once() -> str:
            r = await self._client.get_bucket_location(Bucket=bucket)
            return str(r.get("LocationConstraint") or "")

        return await self._call("location", bucket, "", "", once)

    async def _call(self, op: str, bucket: str, key: str, etag: str,
                    once: Callable[[], Awaitable[T]]) -> T:
        """Run one origin call with bounded retries; fail at once while the origin is down."""
        attempts = self._config.origin_max_attempts
        for attempt in range(attempts):
            wait = self._down_until - time.monotonic()
            if wait > 0:
                raise OriginUnavailable(bucket, key, f"origin unreachable ({self._down_reason}); "
                                        f"next try in {wait:.1f}s")
            self._metrics.origin_requests.labels(op).inc()
            try:
                return await once()
            except Retryable as r:
                err = r.err
            except Exception as e:
                if isinstance(e, _DOWN):  # refused, or accepted but silent: don't queue on it
                    self._down_until = time.monotonic() + DOWN_HOLD_S
                    # Told to later requests for other objects: the kind of failure only,
                    # never this request's URL (its bucket and key are not theirs to see).
                    self._down_reason = f"{type(e).__name__} from {self._where}"
                    raise self._error(op, bucket, key, e, etag) from e
                err = self._error(op, bucket, key, e, etag)
                if not _retryable(e):
                    raise err from e
            if attempt + 1 < attempts:
                await asyncio.sleep(RETRY_BASE_S * 2**attempt * (0.5 + random.random()))
        raise err

    def _error(self, op: str, bucket: str, key: str, e: Exception,
               etag: str = "") -> CacheError:
        """Return the cache error for an origin failure, counting it."""
        err: CacheError
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchBucket",):
                err = OriginNotFound(bucket, key, "bucket")
            elif status == 404 or code in ("404", "NoSuchKey", "NotFound"):
                err = OriginNotFound(bucket, key)
            elif status == 412 or code == "PreconditionFailed":
                err = ObjectChanged(bucket, key, etag)
            elif status == 403 or code in ("AccessDenied", "403"):
                err = OriginDenied(bucket, key, code or "403")
            else:
                err = OriginUnavailable(bucket, key, f"{op} failed: HTTP {status} {code}")
            kind = code or str(status)
        elif isinstance(e, (BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError)):
            err = OriginUnavailable(bucket, key, f"{op} failed: {e}")
            kind = type(e).__name__
        else:
            raise e
        if not isinstance(err, (OriginNotFound, ObjectChanged)):
            log.warning("origin %s s3://%s/%s failed: %s", op, bucket, key, err)
        self._metrics.origin_errors.labels(op, kind).inc()
        return err


def _listed(o: dict[str, Any]) -> ListedObject:
    """Return one Contents entry of an aiobotocore listing as a ListedObject."""
    owner = o.get("Owner") or {}
    lm = o.get("LastModified")
    return ListedObject(o["Key"], int(o["Size"]), o.get("ETag", ""),
                        lm.timestamp() if lm else 0.0, o.get("StorageClass") or "STANDARD",
                        owner.get("ID", ""), owner.get("DisplayName", ""))


def _retryable(e: Exception) -> bool:
    """Return whether an origin failure may succeed if tried again soon."""
    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = str(e.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in RETRYABLE_CODES
    return isinstance(e, (BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError))
