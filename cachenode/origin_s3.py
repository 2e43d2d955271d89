"""The S3 origin through aiobotocore: HEAD for metadata, ranged GET with If-Match per block."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from cachenode.blocks import ObjectMeta
from cachenode.config import NodeConfig
from cachenode.errors import (CacheError, ObjectChanged, OriginDenied, OriginNotFound,
                              OriginUnavailable)
from cachenode.metrics import NodeMetrics

log = logging.getLogger(__name__)
SLOW_FETCH_S = 2.0


class S3Origin:
    """Read object metadata and byte ranges from an S3-compatible store."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics) -> None:
        self._config, self._metrics = config, metrics
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        """Create the S3 client (credentials from the usual AWS sources)."""
        c = self._config
        cfg = AioConfig(
            connect_timeout=c.origin_connect_timeout_s, read_timeout=c.origin_read_timeout_s,
            retries={"max_attempts": c.origin_max_attempts, "mode": "standard"},
            max_pool_connections=c.max_concurrent_fills + 16,
            s3={"addressing_style": "path"},
        )
        session = get_session()
        self._client = await self._stack.enter_async_context(session.create_client(
            "s3", endpoint_url=c.origin_endpoint_url or None, region_name=c.origin_region,
            config=cfg))

    async def close(self) -> None:
        """Close the client and its connections."""
        await self._stack.aclose()

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        """Return the size, ETag and modification time of an object."""
        self._metrics.origin_requests.labels("head").inc()
        try:
            r = await self._client.head_object(Bucket=bucket, Key=key)
        except Exception as e:
            raise self._error("head", bucket, key, e) from e
        lm = r.get("LastModified")
        return ObjectMeta(bucket, key, int(r["ContentLength"]), r["ETag"],
                          lm.timestamp() if lm else 0.0)

    async def get_range(self, meta: ObjectMeta, start: int, length: int) -> bytes:
        """Return `length` bytes at `start` of the pinned object version (If-Match)."""
        self._metrics.origin_requests.labels("get").inc()
        t0 = time.monotonic()
        try:
            r = await self._client.get_object(
                Bucket=meta.bucket, Key=meta.key, IfMatch=meta.etag,
                Range=f"bytes={start}-{start + length - 1}")
            async with r["Body"] as body:
                data: bytes = await body.read()
        except Exception as e:
            raise self._error("get", meta.bucket, meta.key, e, meta.etag) from e
        elapsed = time.monotonic() - t0
        if elapsed > SLOW_FETCH_S:
            log.warning("slow origin GET s3://%s/%s bytes=%d-%d: %.2fs", meta.bucket, meta.key,
                        start, start + length - 1, elapsed)
        if len(data) != length:
            self._metrics.origin_errors.labels("get", "short_read").inc()
            raise OriginUnavailable(meta.bucket, meta.key,
                                    f"short read: got {len(data)} of {length} bytes at {start}")
        self._metrics.origin_bytes.inc(length)
        return data

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
        if not isinstance(err, OriginNotFound):
            log.warning("origin %s s3://%s/%s failed: %s", op, bucket, key, err)
        self._metrics.origin_errors.labels(op, kind).inc()
        return err
