"""List a prefix of the object store (aiobotocore), page by page, into a warmup manifest."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from cachenode.blocks import ObjectMeta
from coordinator.errors import EmptyPrefix, OriginFailed

PAGE = 1000


class Lister:
    """Lists objects under a prefix; credentials from the usual AWS sources."""

    def __init__(self, endpoint_url: str = "", region: str = "",
                 timeout_s: float = 10.0) -> None:
        self._endpoint, self._region, self._timeout_s = endpoint_url, region, timeout_s
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        """Create the S3 client."""
        cfg = AioConfig(connect_timeout=self._timeout_s, read_timeout=self._timeout_s,
                        retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"})
        self._client = await self._stack.enter_async_context(get_session().create_client(
            "s3", endpoint_url=self._endpoint or None, region_name=self._region or None,
            config=cfg))

    async def close(self) -> None:
        """Close the client."""
        await self._stack.aclose()

    async def pages(self, bucket: str, prefix: str,
                    limit: int = PAGE) -> AsyncGenerator[list[ObjectMeta], None]:
        """Yield the objects under `prefix` a page at a time (directory markers skipped)."""
        token = ""
        while True:
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": limit}
            if token:
                kw["ContinuationToken"] = token
            try:
                r = await self._client.list_objects_v2(**kw)
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                if code == "NoSuchBucket":
                    raise EmptyPrefix(f"bucket {bucket!r} does not exist at the origin") from None
                raise OriginFailed(f"listing s3://{bucket}/{prefix} failed: {code}: "
                                   f"{e}") from None
            except (BotoCoreError, OSError, TimeoutError) as e:
                raise OriginFailed(f"listing s3://{bucket}/{prefix} failed: "
                                   f"{type(e).__name__}: {e}") from None
            yield [ObjectMeta(bucket, o["Key"], int(o["Size"]), o.get("ETag", ""),
                              o["LastModified"].timestamp() if o.get("LastModified") else 0.0)
                   for o in r.get("Contents", []) if not o["Key"].endswith("/")]
            token = (r.get("NextContinuationToken") or "") if r.get("IsTruncated") else ""
            if not token:
                return

    async def manifest(self, bucket: str, prefix: str, max_objects: int) -> list[ObjectMeta]:
        """Return every object under `prefix` (EmptyPrefix if none, OriginFailed if too many)."""
        out: list[ObjectMeta] = []
        async for page in self.pages(bucket, prefix):
            out += page
            if len(out) > max_objects:
                raise OriginFailed(f"s3://{bucket}/{prefix} holds more than {max_objects} "
                                   "objects (raise --max-objects, or warm a narrower prefix)")
        if not out:
            raise EmptyPrefix(f"no objects under s3://{bucket}/{prefix}")
        return out
