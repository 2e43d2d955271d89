"""Block GETs through aiohttp + SigV4 against a real SeaweedFS: resumed cuts, checks, keys."""

from __future__ import annotations

import dataclasses
import os

import pytest
from botocore.credentials import ReadOnlyCredentials

from cachenode.config import NodeConfig
from cachenode.errors import ObjectChanged, OriginDenied, OriginUnavailable
from cachenode.metrics import NodeMetrics
from cachenode.origin_http import RangeReader
from cachenode.origin_s3 import S3Origin
from tests.s3proxy import CountingProxy
from tests.servers import ACCESS_KEY, SECRET_KEY, SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]
MiB = 2**20


def origin_for(s3: SeaweedFS, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Origin:
    """Return an S3Origin for `endpoint` with the test credentials."""
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    return S3Origin(NodeConfig(origin_endpoint_url=endpoint, capacity_bytes=2**30),
                    NodeMetrics())


async def test_a_cut_body_is_resumed_where_it_stopped(s3: SeaweedFS, bucket: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(4 * MiB)
    s3.put_object(bucket, "dir/a b+ü%~.bin", data)
    with CountingProxy(s3.endpoint_url) as proxy:
        origin = origin_for(s3, proxy.endpoint_url, monkeypatch)
        await origin.start()
        try:
            meta = await origin.head(bucket, "dir/a b+ü%~.bin")
            proxy.reset()
            proxy.cut_next(1, after_bytes=MiB + 12345)
            buf, seen = bytearray(len(data)), list[int]()
            await origin.read_into(meta, 0, memoryview(buf), seen.append)
            assert bytes(buf) == data and seen[-1] == len(data)
            assert seen == sorted(seen)  # landed only grows, across the two GETs
            ranges = sorted(r for (_, r) in proxy.range_gets)
            assert len(ranges) == 2 and ranges[0] == f"bytes=0-{len(data) - 1}"
            resumed = int(ranges[1].removeprefix("bytes=").split("-")[0])
            assert 0 < resumed <= MiB + 12345  # asked again from where it stopped
            assert await origin.get_range(meta, 10, 20) == data[10:30]
        finally:
            await origin.close()


async def test_a_body_cut_every_time_fails_within_the_attempts(
        s3: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(bucket, "k", os.urandom(MiB))
    with CountingProxy(s3.endpoint_url) as proxy:
        origin = origin_for(s3, proxy.endpoint_url, monkeypatch)
        await origin.start()
        try:
            meta = await origin.head(bucket, "k")
            proxy.reset()
            proxy.cut_next(3, after_bytes=1000)
            with pytest.raises(OriginUnavailable, match="body cut"):
                await origin.read_into(meta, 0, memoryview(bytearray(MiB)), lambda n: None)
            assert sum(proxy.range_gets.values()) == 3  # every attempt, each cut
        finally:
            await origin.close()


async def test_the_pinned_size_and_version_are_checked(s3: SeaweedFS, bucket: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(bucket, "k", b"0123456789")
    origin = origin_for(s3, s3.endpoint_url, monkeypatch)
    await origin.start()
    try:
        meta = await origin.head(bucket, "k")
        wrong_size = dataclasses.replace(meta, size=11)  # Content-Range names 10
        with pytest.raises(ObjectChanged):
            await origin.read_into(wrong_size, 0, memoryview(bytearray(4)), lambda n: None)
        s3.put_object(bucket, "k", b"abcdefghij")  # a new version: If-Match fails (412)
        with pytest.raises(ObjectChanged):
            await origin.get_range(meta, 0, 4)
    finally:
        await origin.close()


class Rotating:
    """Refreshable credentials as botocore's: frozen anew for every request."""

    def __init__(self, secret: str) -> None:
        self.secret, self.frozen = secret, 0

    async def get_frozen_credentials(self) -> ReadOnlyCredentials:
        self.frozen += 1
        return ReadOnlyCredentials(ACCESS_KEY, self.secret, None)


async def test_credentials_are_frozen_per_request_so_a_refresh_is_used(
        s3: SeaweedFS, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(bucket, "k", b"0123456789")
    origin = origin_for(s3, s3.endpoint_url, monkeypatch)
    await origin.start()
    try:
        meta = await origin.head(bucket, "k")
    finally:
        await origin.close()
    creds = Rotating("not-the-secret")
    reader = RangeReader(s3.endpoint_url, "us-east-1", creds, NodeMetrics(), 3.0, 10.0, 4)
    try:
        buf = bytearray(4)
        with pytest.raises(OriginDenied):
            await reader.read(meta, 2, memoryview(buf), lambda n: None)
        creds.secret = SECRET_KEY  # the chain refreshed them: the next GET signs with these
        await reader.read(meta, 2, memoryview(buf), lambda n: None)
        assert bytes(buf) == b"2345" and creds.frozen == 2
    finally:
        await reader.close()
