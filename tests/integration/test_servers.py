"""Prove the test harness: SeaweedFS, the counting proxy, and the S3 facts the node relies on."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.s3proxy import CountingProxy
from tests.servers import MiB, SeaweedFS, aio_s3_client, s3_client

pytestmark = pytest.mark.integration


def error_of(call: Any, **kwargs: Any) -> tuple[int, str]:
    """Return the HTTP status and error code of a call that must fail."""
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(**kwargs)
    return info.value.response["ResponseMetadata"]["HTTPStatusCode"], info.value.response[
        "Error"]["Code"]


def test_round_trip_through_proxy_is_counted(s3: SeaweedFS, bucket: str,
                                             proxy: CountingProxy) -> None:
    data = os.urandom(3 * MiB + 1)
    s3.put_object(bucket, "a/model.bin", data)
    client = s3_client(proxy.endpoint_url)
    assert client.get_object(Bucket=bucket, Key="a/model.bin")["Body"].read() == data
    for start in (0, MiB, 0):
        rng = f"bytes={start}-{start + 99}"
        got = client.get_object(Bucket=bucket, Key="a/model.bin", Range=rng)["Body"].read()
        assert got == data[start:start + 100]
    head = client.head_object(Bucket=bucket, Key="a/model.bin")
    assert head["ContentLength"] == len(data)
    path = f"/{bucket}/a/model.bin"
    assert proxy.requests[("GET", path)] == 4 and proxy.requests[("HEAD", path)] == 1
    assert proxy.range_gets == {(path, "bytes=0-99"): 2, (path, f"bytes={MiB}-{MiB + 99}"): 1}
    assert proxy.total == 5
    proxy.reset()
    assert proxy.total == 0 and not proxy.range_gets


@pytest.mark.parametrize("key", ["plain.bin", "a b/c d.bin", "ünï/日本.bin", "pct%20x%/y.bin",
                                 "plus+sign+.bin", "q?x=1&y#z.bin"])
def test_signed_writes_and_reads_survive_the_proxy(s3: SeaweedFS, bucket: str,
                                                   proxy: CountingProxy, key: str) -> None:
    client = s3_client(proxy.endpoint_url)
    client.put_object(Bucket=bucket, Key=key, Body=key.encode() * 1000)
    assert s3.get_object(bucket, key) == key.encode() * 1000
    listed = client.list_objects_v2(Bucket=bucket, Prefix=key[:3])["Contents"]
    assert [o["Key"] for o in listed] == [key]
    assert proxy.requests[("PUT", f"/{bucket}/{key}")] == 1


def test_stopped_proxy_refuses_connections_then_comes_back(s3: SeaweedFS, bucket: str,
                                                           proxy: CountingProxy) -> None:
    s3.put_object(bucket, "k", b"v")
    client = s3_client(proxy.endpoint_url, timeout_s=5, retries=1)
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        client.get_object(Bucket=bucket, Key="k")
    proxy.start()
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    assert proxy.requests[("GET", f"/{bucket}/k")] == 2


@pytest.mark.asyncio
async def test_aiobotocore_ranged_if_match_through_proxy(s3: SeaweedFS, bucket: str,
                                                         proxy: CountingProxy) -> None:
    data = os.urandom(5 * MiB)
    etag = s3.put_object(bucket, "m.bin", data)
    async with aio_s3_client(proxy.endpoint_url) as client:
        r = await client.get_object(Bucket=bucket, Key="m.bin", Range="bytes=4-1048579",
                                    IfMatch=etag)
        assert r["ResponseMetadata"]["HTTPStatusCode"] == 206 and r["ETag"] == etag
        assert r["ContentRange"] == f"bytes 4-1048579/{len(data)}"
        async with r["Body"] as body:
            assert await body.read() == data[4:1048580]
        with pytest.raises(botocore.exceptions.ClientError) as info:
            await client.get_object(Bucket=bucket, Key="m.bin", Range="bytes=0-9", IfMatch='"x"')
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert proxy.range_gets[(f"/{bucket}/m.bin", "bytes=0-9")] == 1


def test_put_file_uploads_in_parts(s3: SeaweedFS, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom(12 * MiB + 5)
    path.write_bytes(data)
    etag = s3.put_file(bucket, "big.bin", path, part_size_bytes=5 * MiB)
    assert etag.endswith('-3"')
    head = s3.client.head_object(Bucket=bucket, Key="big.bin")
    assert head["ETag"] == etag and head["ContentLength"] == len(data) and head["LastModified"]
    assert s3.get_object(bucket, "big.bin") == data


def test_seaweedfs_s3_facts_the_node_relies_on(s3: SeaweedFS, bucket: str) -> None:
    c = s3.client
    first = s3.put_object(bucket, "o", b"0123456789")
    assert s3.put_object(bucket, "o", b"0123456789") == first  # ETag is the content MD5
    etag = s3.put_object(bucket, "o", b"abcdefghij")
    assert etag != first
    assert error_of(c.get_object, Bucket=bucket, Key="o", Range="bytes=0-1", IfMatch=first) == (
        412, "PreconditionFailed")
    assert error_of(c.get_object, Bucket=bucket, Key="missing") == (404, "NoSuchKey")
    assert error_of(c.head_object, Bucket=bucket, Key="missing") == (404, "404")
    assert error_of(c.get_object, Bucket="no-such-bucket", Key="o") == (404, "NoSuchBucket")
    assert error_of(c.get_object, Bucket=bucket, Key="o", Range="bytes=10-20") == (
        416, "InvalidRange")
    r = c.get_object(Bucket=bucket, Key="o", Range="bytes=8-100")
    assert r["ContentRange"] == "bytes 8-9/10" and r["Body"].read() == b"ij"
    s3.put_object(bucket, "empty", b"")
    assert c.head_object(Bucket=bucket, Key="empty")["ContentLength"] == 0
    assert error_of(c.get_object, Bucket=bucket, Key="empty", Range="bytes=0-0") == (
        416, "InvalidRange")
    s3.put_object(bucket, "a//b", b"x")  # repeated slashes collapse: same object as "a/b"
    assert s3.get_object(bucket, "a/b") == b"x"
    long_key = "/".join(["k" * 200] * 5) + "/" + "k" * 19
    assert len(long_key) == 1024
    s3.put_object(bucket, long_key, b"long")
    assert s3.get_object(bucket, long_key) == b"long"
    assert error_of(c.put_object, Bucket=bucket, Key=long_key + "k", Body=b"")[1] == (
        "KeyTooLongError")


@pytest.mark.asyncio
async def test_second_server_runs_beside_the_first(s3: SeaweedFS, tmp_path: Path) -> None:
    async with SeaweedFS(tmp_path / "other") as other:
        assert set(other.ports.values()).isdisjoint(s3.ports.values())
        other.make_bucket("mine")
        other.put_object("mine", "k", b"v")
        assert other.env()["AWS_ENDPOINT_URL"] == other.endpoint_url
        assert error_of(s3.client.get_object, Bucket="mine", Key="k")[0] == 404
        proc = other.proc
    assert proc is not None and proc.poll() is not None
