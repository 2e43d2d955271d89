"""The S3 API of a CacheNode (FakeOrigin, real DiskStore) on 127.0.0.1, with boto3 and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import botocore.config
import botocore.exceptions
import pytest
import pytest_asyncio
from multidict import CIMultiDict
from yarl import URL

from cachenode.config import NodeConfig
from cachenode.node import CacheNode
from tests.fakes import FakeOrigin, blob

BS = 64 * 1024
DATA = blob(3 * BS + 5)


@dataclass
class Node:
    node: CacheNode
    origin: FakeOrigin
    http: aiohttp.ClientSession
    s3: Any  # a sync boto3 client, used through call()
    etag: str

    def url(self, raw: str) -> URL:
        return URL(f"http://127.0.0.1:{self.node.s3_port}{raw}", encoded=True)

    def origin_calls(self) -> int:
        o = self.origin
        return sum(o.heads.values()) + sum(o.gets.values()) + sum(o.lists.values())


def s3_client(port: int) -> Any:
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="k", aws_secret_access_key="s",
                        config=botocore.config.Config(s3={"addressing_style": "path"},
                                                      retries={"max_attempts": 1}))


async def call(fn: Callable[..., Any], **kw: Any) -> Any:
    """Run a boto3 call in a thread (the node runs on this loop)."""
    return await asyncio.to_thread(fn, **kw)


async def get_object(n: Node, **kw: Any) -> tuple[dict[str, Any], bytes]:
    """Return a GetObject answer and its body, read (and checksum-checked) in the thread."""

    def run() -> tuple[dict[str, Any], bytes]:
        r = n.s3.get_object(Bucket="bkt", **kw)
        return r, r["Body"].read()

    return await asyncio.to_thread(run)


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=64 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0),
                     s3_addr=("127.0.0.1", 0), s3_domain="s3.test", fill_timeout_s=2.0)
    origin = FakeOrigin()
    crc = base64.b64encode(zlib.crc32(DATA).to_bytes(4, "big")).decode()
    etag = origin.put("bkt", "m/a.bin", DATA, "text/x-test",
                      (("cache-control", "max-age=9"), ("x-amz-meta-colour", "blue")),
                      (("x-amz-checksum-crc32", crc), ("x-amz-checksum-type", "FULL_OBJECT")))
    async with CacheNode(cfg, origin=origin) as n, aiohttp.ClientSession() as http:
        yield Node(n, origin, http, s3_client(n.s3_port), etag)


async def raw(n: Node, path: str, method: str = "GET", headers: dict[str, str] | None = None
              ) -> tuple[int, CIMultiDict[str], bytes]:
    async with n.http.request(method, n.url(path), headers=headers or {}) as r:
        return r.status, r.headers.copy(), await r.read()


def code_of(e: botocore.exceptions.ClientError) -> str:
    return str(e.response["Error"]["Code"])


@pytest.mark.asyncio
async def test_get_and_head_carry_the_origin_headers(node: Node) -> None:
    r, body = await get_object(node, Key="m/a.bin")
    assert body == DATA
    assert (r["ContentType"], r["CacheControl"], r["Metadata"]) == (
        "text/x-test", "max-age=9", {"colour": "blue"})
    assert r["ETag"] == node.etag and r["ContentLength"] == len(DATA)
    assert r["ResponseMetadata"]["HTTPHeaders"]["x-amz-checksum-crc32"]  # checked by botocore
    h = await call(node.s3.head_object, Bucket="bkt", Key="m/a.bin")
    assert h["ContentLength"] == len(DATA) and h["ETag"] == node.etag
    assert len(h["ResponseMetadata"]["RequestId"]) == 16


@pytest.mark.asyncio
async def test_ranges_suffix_past_eof_multi_and_416(node: Node) -> None:
    r, body = await get_object(node, Key="m/a.bin", Range="bytes=-7")
    assert body == DATA[-7:] and r["ContentRange"].endswith(f"/{len(DATA)}")
    assert "x-amz-checksum-crc32" not in r["ResponseMetadata"]["HTTPHeaders"]  # a part
    r, body = await get_object(node, Key="m/a.bin", Range=f"bytes={BS}-{10 * BS}")
    assert body == DATA[BS:] and r["ResponseMetadata"]["HTTPStatusCode"] == 206
    status, headers, body = await raw(node, "/bkt/m/a.bin", headers={"Range": "bytes=0-1,5-9"})
    assert status == 200 and body == DATA  # as S3: several ranges get the whole object
    with pytest.raises(botocore.exceptions.ClientError) as e:
        await call(node.s3.get_object, Bucket="bkt", Key="m/a.bin", Range="bytes=999999-")
    assert code_of(e.value) == "InvalidRange"
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["content-range"] == (
        f"bytes */{len(DATA)}")


@pytest.mark.asyncio
async def test_a_checksum_that_disagrees_is_caught_by_botocore(node: Node) -> None:
    wrong = base64.b64encode(b"\0\0\0\0").decode()
    node.origin.put("bkt", "bad.bin", DATA, checksums=(("x-amz-checksum-crc32", wrong),))
    with pytest.raises(botocore.exceptions.FlexibleChecksumError):
        await get_object(node, Key="bad.bin")  # the whole-object GET is checked by botocore
    _, body = await get_object(node, Key="bad.bin", Range="bytes=0-")
    assert body == DATA  # a range carries no whole-object checksum to fail


@pytest.mark.asyncio
async def test_errors_have_s3_codes(node: Node) -> None:
    with pytest.raises(node.s3.exceptions.NoSuchKey):
        await call(node.s3.get_object, Bucket="bkt", Key="missing")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        await call(node.s3.head_object, Bucket="bkt", Key="missing")
    assert code_of(e.value) == "404"  # HEAD: no body, as S3
    with pytest.raises(node.s3.exceptions.NoSuchBucket):
        await call(node.s3.list_objects_v2, Bucket="nobucket")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        await call(node.s3.get_object, Bucket="bkt", Key="m/a.bin", IfMatch='"other"')
    assert code_of(e.value) == "PreconditionFailed"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        await call(node.s3.get_object, Bucket="bkt", Key="m/a.bin", IfNoneMatch=node.etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    status, headers, body = await raw(node, "/bkt/m/a.bin?partNumber=1")
    assert status == 501 and b"<Code>NotImplemented</Code>" in body
    assert b"<Resource>/bkt/m/a.bin</Resource>" in body and b"<RequestId>" in body
    status, _, body = await raw(node, "/bkt/a//b")
    assert status == 400 and b"<Code>InvalidArgument</Code>" in body


@pytest.mark.asyncio
async def test_writes_are_refused_and_reach_no_origin(node: Node) -> None:
    calls = node.origin_calls()
    for fn, kw in ((node.s3.put_object, {"Key": "w", "Body": b"x" * 1000}),
                   (node.s3.delete_object, {"Key": "m/a.bin"}),
                   (node.s3.create_multipart_upload, {"Key": "w"}),
                   (node.s3.put_object_acl, {"Key": "m/a.bin", "ACL": "private"}),
                   (node.s3.delete_bucket, {}),
                   (node.s3.put_bucket_tagging, {"Tagging": {"TagSet": []}})):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            await call(fn, Bucket="bkt", **kw)
        assert code_of(e.value) == "NotImplemented", fn
    for method in ("PATCH", "OPTIONS"):
        status, headers, body = await raw(node, "/bkt/m/a.bin", method)
        assert status == 405 and b"MethodNotAllowed" in body and headers["Allow"]
    assert node.origin_calls() == calls


@pytest.mark.asyncio
async def test_listing_v2_v1_buckets_and_location(node: Node) -> None:
    for k in ("m/b/c.bin", "m/b/d.bin", "m/x y+z.bin", "n.bin"):
        node.origin.put("bkt", k, b"1")
    pages = await call(lambda: list(node.s3.get_paginator("list_objects_v2").paginate(
        Bucket="bkt", Prefix="m/", Delimiter="/", PaginationConfig={"PageSize": 1})))
    names = [o["Key"] for p in pages for o in p.get("Contents", [])]
    prefixes = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
    assert (names, prefixes, len(pages)) == (["m/a.bin", "m/x y+z.bin"], ["m/b/"], 3)
    r = await call(node.s3.list_objects_v2, Bucket="bkt", StartAfter="m/b/d.bin", FetchOwner=True)
    assert [o["Key"] for o in r["Contents"]] == ["m/x y+z.bin", "n.bin"]
    assert r["Contents"][0]["Owner"]["ID"] == "fake-owner"
    v1 = await call(lambda: list(node.s3.get_paginator("list_objects").paginate(
        Bucket="bkt", PaginationConfig={"PageSize": 2})))
    assert [o["Key"] for p in v1 for o in p.get("Contents", [])] == [
        "m/a.bin", "m/b/c.bin", "m/b/d.bin", "m/x y+z.bin", "n.bin"]
    status, _, body = await raw(node, "/bkt?list-type=2&prefix=m/&encoding-type=url")
    assert b"<Key>m/x%20y%2Bz.bin</Key>" in body
    status, _, body = await raw(node, "/bkt?list-type=2&max-keys=x")
    assert status == 400 and b"InvalidArgument" in body
    assert [b["Name"] for b in (await call(node.s3.list_buckets))["Buckets"]] == ["bkt"]
    assert (await call(node.s3.get_bucket_location, Bucket="bkt"))["LocationConstraint"] is None
    h = await call(node.s3.head_bucket, Bucket="bkt")
    assert h["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == "us-east-1"


@pytest.mark.asyncio
async def test_identical_concurrent_listings_are_one_origin_call(node: Node) -> None:
    node.origin.delay_s = 0.2
    got = await asyncio.gather(*(raw(node, "/bkt?list-type=2&prefix=m/") for _ in range(20)))
    assert {g[0] for g in got} == {200} and len({g[2].count(b"<Key>") for g in got}) == 1
    assert sum(node.origin.lists.values()) == 1


@pytest.mark.asyncio
async def test_response_overrides_and_virtual_hosted_addressing(node: Node) -> None:
    status, headers, body = await raw(
        node, "/bkt/m/a.bin?response-content-type=x/y&response-content-disposition=inline"
        "&response-cache-control=no-store")
    assert status == 200 and body == DATA
    assert (headers["Content-Type"], headers["Content-Disposition"],
            headers.getall("Cache-Control")) == ("x/y", "inline", ["no-store"])
    status, _, body = await raw(node, "/m/a.bin", headers={"Host": "bkt.s3.test:9000"})
    assert status == 200 and body == DATA
    status, _, body = await raw(node, "/?list-type=2", headers={"Host": "bkt.s3.test"})
    assert status == 200 and b"<Key>m/a.bin</Key>" in body
    status, _, body = await raw(node, "/bkt/m/a.bin", headers={"Host": "s3.test"})
    assert status == 200 and body == DATA  # the bare domain is path-style


@pytest.mark.asyncio
async def test_a_warm_get_object_leaves_from_disk(node: Node) -> None:
    await get_object(node, Key="m/a.bin")  # cold: filled, then sent from the stored files
    disk = node.node.metrics.value("blockcache_served_bytes_total", source="disk")
    gets = sum(node.origin.gets.values())
    _, body = await get_object(node, Key="m/a.bin")
    assert body == DATA and sum(node.origin.gets.values()) == gets
    # every byte from block files: BodySender's sendfile path, as for the range API
    assert node.node.metrics.value("blockcache_served_bytes_total", source="disk") == (
        disk + len(DATA))


@pytest.mark.asyncio
async def test_the_metadata_cache_is_bounded_by_bytes(node: Node,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import cachenode.service as service

    monkeypatch.setattr(service, "METADATA_CACHE_BYTES", 20_000)
    meta = tuple((f"x-amz-meta-k{i}", "v" * 100) for i in range(16))  # ~2 KB each
    for i in range(40):
        node.origin.put("bkt", f"many/{i}", b"1", headers=meta)
        await node.node.service.stat("bkt", f"many/{i}")
    svc = node.node.service
    assert 5 <= len(svc._meta) <= 10 and svc._meta_bytes <= 20_000
    assert svc._meta_bytes == sum(service.entry_bytes(m) for _, m in svc._meta.values())
