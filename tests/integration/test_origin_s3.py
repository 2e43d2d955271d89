"""S3Origin against a real SeaweedFS: metadata, ranged GETs, If-Match, retries, fail-fast."""

from __future__ import annotations

import time

import pytest

from cachenode.config import NodeConfig
from cachenode.errors import ObjectChanged, OriginNotFound, OriginUnavailable
from cachenode.metrics import NodeMetrics
from cachenode.origin_s3 import S3Origin
from tests.s3proxy import CountingProxy
from tests.servers import SeaweedFS, free_port

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


def origin_for(s3: SeaweedFS, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Origin:
    """Return an S3Origin for `endpoint` with the test credentials."""
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    cfg = NodeConfig(origin_endpoint_url=endpoint, capacity_bytes=2**30,
                     origin_connect_timeout_s=1.0)
    return S3Origin(cfg, NodeMetrics())


async def test_head_and_ranged_get_pin_the_etag(s3: SeaweedFS, bucket: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(bucket, "dir/a b+ü%.bin", b"0123456789")
    origin = origin_for(s3, s3.endpoint_url, monkeypatch)
    await origin.start()
    try:
        meta = await origin.head(bucket, "dir/a b+ü%.bin")
        assert meta.size == 10 and meta.etag.startswith('"') and meta.last_modified > 0
        assert await origin.get_range(meta, 3, 4) == b"3456"
        s3.put_object(bucket, "dir/a b+ü%.bin", b"abcdefghij")
        with pytest.raises(ObjectChanged):
            await origin.get_range(meta, 0, 4)
        with pytest.raises(OriginNotFound, match="no such key"):
            await origin.head(bucket, "missing")
        with pytest.raises(OriginNotFound, match="no such bucket"):
            await origin.head("no-such-bucket-xyz", "k")
    finally:
        await origin.close()


async def test_throttling_and_5xx_are_retried(s3: SeaweedFS, bucket: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(bucket, "k", b"payload")
    with CountingProxy(s3.endpoint_url) as proxy:
        origin = origin_for(s3, proxy.endpoint_url, monkeypatch)
        await origin.start()
        try:
            meta = await origin.head(bucket, "k")
            proxy.fail_next(1, 503, "SlowDown")
            proxy.fail_next(1, 500, "InternalError")
            proxy.reset()
            assert await origin.get_range(meta, 0, 7) == b"payload"
            assert proxy.total == 3  # two injected failures, then the real GET
            proxy.fail_next(3, 503, "SlowDown")
            with pytest.raises(OriginUnavailable, match="503"):
                await origin.get_range(meta, 0, 7)
        finally:
            await origin.close()


async def test_unreachable_origin_fails_fast_then_recovers(s3: SeaweedFS, bucket: str,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    s3.put_object(bucket, "k", b"payload")
    with CountingProxy(s3.endpoint_url, port=free_port()) as proxy:
        origin = origin_for(s3, proxy.endpoint_url, monkeypatch)
        await origin.start()
        try:
            meta = await origin.head(bucket, "k")
            proxy.stop()
            t0 = time.monotonic()
            with pytest.raises(OriginUnavailable, match="connect"):
                await origin.get_range(meta, 0, 7)
            with pytest.raises(OriginUnavailable, match="unreachable"):
                await origin.get_range(meta, 0, 7)  # no new attempt while held down
            other = meta.__class__(bucket, "secret/other-key", 7, meta.etag)
            with pytest.raises(OriginUnavailable) as held:  # another reader's object...
                await origin.get_range(other, 0, 7)
            assert "/k" not in str(held.value)  # ...is not told this request's key
            assert "EndpointConnectionError from http://127.0.0.1" in str(held.value)
            assert time.monotonic() - t0 < 1.0
            proxy.start()
            time.sleep(1.05)
            assert await origin.get_range(meta, 0, 7) == b"payload"
        finally:
            await origin.close()
