"""Access keys on node processes in front of SeaweedFS (counting proxy): boto3, presigned URLs
for plain HTTP clients, every refusal with its code and no origin request, key file reloads,
and a 3-node group with a cluster secret."""

from __future__ import annotations

import datetime
import http.client
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import botocore.config
import pytest
from botocore.exceptions import ClientError

from tests.cluster import LocalGroup
from tests.integration.test_node_s3 import pattern, range_gets
from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB
SECRET_A, SECRET_B, SECRET_ALL = ("team-a-secret-0123456789", "team-b-secret-0123456789",
                                  "all-reader-secret-0123456789")
RELOAD_BOUND_S = 5.0  # the README's: a change takes effect within ~2 s (poll) plus a read


def write_keys(path: Path, text: str) -> None:
    """Replace the keys file atomically, as a config tool or a Secret update would."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def client(node: NodeProcess, key_id: str, secret: str, version: str = "s3v4") -> Any:
    """Return a boto3 S3 client on the node's HTTP range port (path-style GETs are the same).

    boto3 presigns with signature version 2 for a custom endpoint unless told s3v4.
    """
    return boto3.client("s3", endpoint_url=node.url, aws_access_key_id=key_id,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=botocore.config.Config(s3={"addressing_style": "path"},
                                                      signature_version=version,
                                                      retries={"max_attempts": 1}))


def refusal(call: Callable[[], object]) -> tuple[int, str]:
    """Return (status, X-Blockcache-Code) of a boto3 call that must fail."""
    with pytest.raises(ClientError) as e:
        call()
    meta = e.value.response["ResponseMetadata"]
    return meta["HTTPStatusCode"], meta["HTTPHeaders"].get("x-blockcache-code", "")


def plain_get(node: NodeProcess, target: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], bytes]:
    """GET with http.client, as curl would: the target exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    try:
        conn.request("GET", target, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def target_of(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    return u.path + "?" + u.query


@pytest.fixture
def signed_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Make botocore sign as if its clock were `offset_s` seconds off."""
    def at(offset_s: float) -> None:
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset_s)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    return at


@pytest.fixture
def keys_file(tmp_path: Path, bucket: str) -> Path:
    path = tmp_path / "keys"
    write_keys(path, f"# test keys\nAKIDA {SECRET_A} {bucket}/team-a/\n"
                     f"AKIDALL {SECRET_ALL}\n")
    return path


@pytest.fixture
def node(tmp_path: Path, proxy, s3, keys_file: Path) -> Iterator[NodeProcess]:  # type: ignore[no-untyped-def]
    n = NodeProcess(tmp_path / "node", {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                    "--capacity", "1GiB", "--access-keys", str(keys_file))
    n.start()
    yield n
    n.stop()


def test_boto3_and_presigned_urls_read_in_scope(node: NodeProcess, s3, bucket: str,  # type: ignore[no-untyped-def]
                                                proxy) -> None:
    data = pattern(2 * BS + 17, 3)
    s3.put_object(bucket, "team-a/m.bin", data)
    a = client(node, "AKIDA", SECRET_A)
    assert a.get_object(Bucket=bucket, Key="team-a/m.bin")["Body"].read() == data
    got = a.get_object(Bucket=bucket, Key="team-a/m.bin", Range=f"bytes={BS - 3}-{BS + 3}")
    assert got["Body"].read() == data[BS - 3:BS + 4] and got["ContentRange"].endswith(
        f"/{len(data)}")
    assert a.head_object(Bucket=bucket, Key="team-a/m.bin")["ContentLength"] == len(data)
    url = a.generate_presigned_url("get_object", Params={"Bucket": bucket,
                                                         "Key": "team-a/m.bin"}, ExpiresIn=600)
    status, _, body = plain_get(node, target_of(url))  # curl "$url"
    assert (status, body) == (200, data)
    status, _, body = plain_get(node, target_of(url), {"Range": "bytes=5-9"})  # curl -r 5-9
    assert (status, body) == (206, data[5:10])
    assert range_gets(proxy, bucket, "team-a/m.bin") == 3  # each block once
    assert node.metric("blockcache_access_keys") == 2


def test_refusals_have_their_code_and_reach_no_origin(node: NodeProcess, s3, bucket: str,  # type: ignore[no-untyped-def]
                                                      proxy, signed_at) -> None:
    s3.put_object(bucket, "team-a/m.bin", b"a" * 100)
    s3.put_object(bucket, "team-b/m.bin", b"b" * 100)
    presigned = client(node, "AKIDA", SECRET_A).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "team-a/m.bin"}, ExpiresIn=600)
    signed_at(-120)  # an URL that lived 60 s, two minutes ago
    expired = client(node, "AKIDA", SECRET_A).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "team-a/m.bin"}, ExpiresIn=60)
    signed_at(-20 * 60)
    skewed = client(node, "AKIDA", SECRET_A)
    proxy.reset()
    key = "team-a/m.bin"
    assert refusal(lambda: skewed.get_object(Bucket=bucket, Key=key)) == (
        403, "RequestTimeTooSkewed")
    signed_at(0)
    assert refusal(lambda: client(node, "AKIDA", SECRET_B).get_object(Bucket=bucket, Key=key)
                   ) == (403, "SignatureDoesNotMatch")
    assert refusal(lambda: client(node, "AKIDX", SECRET_A).head_object(Bucket=bucket, Key=key)
                   ) == (403, "InvalidAccessKeyId")
    a = client(node, "AKIDA", SECRET_A)
    for other in ("team-b/m.bin", "team-b/missing.bin"):  # the same answer, there or not
        assert refusal(lambda: a.get_object(Bucket=bucket, Key=other)) == (403, "AccessDenied")
        assert refusal(lambda: a.head_object(Bucket=bucket, Key=other)) == (403, "AccessDenied")
    tampered = presigned.replace("team-a/m.bin", "team-a/m.bim")
    bad_expiry = presigned.replace("X-Amz-Expires=600", "X-Amz-Expires=6000")
    v2 = client(node, "AKIDA", SECRET_A, version="s3").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key})
    bodies = []
    for target, code in [(target_of(v2), "InvalidRequest"),
                         (target_of(tampered), "SignatureDoesNotMatch"),
                         (target_of(bad_expiry), "SignatureDoesNotMatch"),
                         (target_of(expired), "AccessDenied"),
                         (f"/{bucket}/{key}", "AccessDenied")]:
        status, headers, body = plain_get(node, target)
        assert (status, headers["x-blockcache-code"]) == (403, code), target
        bodies.append(body)
    assert b"expired" in bodies[3] and b"s3v4" in bodies[0]
    assert proxy.total == 0  # not one HEAD, GET or listing reached the origin
    assert node.metric("blockcache_auth_failures_total") == 12
    log = node.log_path.read_text()
    for secret in (s3.secret_key, SECRET_A, SECRET_B, SECRET_ALL):  # never leaves the node
        assert secret not in log and all(secret.encode() not in b for b in bodies)


def test_key_file_changes_take_effect_without_a_restart(node: NodeProcess, s3, bucket: str,  # type: ignore[no-untyped-def]
                                                        keys_file: Path) -> None:
    s3.put_object(bucket, "team-b/m.bin", b"b" * 10)
    b = client(node, "AKIDB", SECRET_B)
    a = client(node, "AKIDA", SECRET_A)
    assert refusal(lambda: b.get_object(Bucket=bucket, Key="team-b/m.bin"))[1] == (
        "InvalidAccessKeyId")
    t0 = time.monotonic()
    write_keys(keys_file, f"AKIDA {SECRET_A} {bucket}/team-a/\nAKIDB {SECRET_B} {bucket}\n")
    until(lambda: ok(lambda: b.get_object(Bucket=bucket, Key="team-b/m.bin")))
    added_s = time.monotonic() - t0
    write_keys(keys_file, f"AKIDB {SECRET_B} {bucket}\nAKIDC tooshort\n")  # invalid: kept
    time.sleep(2.5)
    assert ok(lambda: a.head_object(Bucket=bucket, Key="team-a/x")) is not None
    t0 = time.monotonic()
    write_keys(keys_file, f"AKIDB {SECRET_B} {bucket}\n")  # revoke AKIDA
    until(lambda: refusal_code(lambda: a.head_object(Bucket=bucket, Key="team-a/x"))
          == "InvalidAccessKeyId")
    revoked_s = time.monotonic() - t0
    print(f"key added in {added_s:.2f}s, revoked in {revoked_s:.2f}s")
    assert added_s < RELOAD_BOUND_S and revoked_s < RELOAD_BOUND_S, (added_s, revoked_s)
    log = node.log_path.read_text()
    assert "line 2" in log and "tooshort" not in log and SECRET_B not in log
    assert node.metric("blockcache_access_key_reloads_total", result="invalid") == 1


def ok(call: Callable[[], object]) -> object | None:
    """Return the call's result, or None if it failed with a 403 (404 counts as allowed)."""
    try:
        return call()
    except ClientError as e:
        return None if e.response["ResponseMetadata"]["HTTPStatusCode"] == 403 else e


def refusal_code(call: Callable[[], object]) -> str:
    try:
        call()
    except ClientError as e:
        return str(e.response["ResponseMetadata"]["HTTPHeaders"].get("x-blockcache-code"))
    return ""


def until(cond: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.1)


@pytest.fixture
def auth_group(tmp_path: Path, proxy, s3, etcd, bucket: str) -> Iterator[LocalGroup]:  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    write_keys(keys, f"AKIDA {SECRET_A} {bucket}/team-a/\n")
    (tmp_path / "cluster").write_text("the-cluster-secret-0123456789\n")
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
    with LocalGroup(tmp_path / "g", env, etcd.endpoint, 3, "--capacity", "2GiB",
                    "--access-keys", str(keys), "--cluster-secret-file",
                    str(tmp_path / "cluster")) as g:
        yield g


def test_a_group_with_keys_and_a_cluster_secret(auth_group: LocalGroup, s3, bucket: str,  # type: ignore[no-untyped-def]
                                                proxy) -> None:
    data = pattern(6 * BS + 99, 5)
    s3.put_object(bucket, "team-a/model.bin", data)
    for node in auth_group.nodes:  # any node serves any range, reading blocks from owners
        got = client(node, "AKIDA", SECRET_A).get_object(Bucket=bucket, Key="team-a/model.bin")
        assert got["Body"].read() == data
    assert range_gets(proxy, bucket, "team-a/model.bin") == 7  # once per block, group-wide
    assert auth_group.metric("blockcache_peer_reads_total", result="ok") > 0
    assert auth_group.metric("blockcache_auth_failures_total") == 0
    proxy.reset()
    owner = auth_group.nodes[1]
    etag = s3.client.head_object(Bucket=bucket, Key="team-a/model.bin")["ETag"]
    forged = {"X-Blockcache-Hops": "1", "X-Blockcache-Cached-Only": "1", "If-Match": etag,
              "X-Blockcache-Size": str(len(data)), "Range": f"bytes=0-{BS - 1}"}
    for extra in ({}, {"X-Blockcache-Auth": "t=1,n=0000000000000000,sig=" + "0" * 64}):
        status, headers, _ = plain_get(owner, f"/{bucket}/team-a/model.bin", {**forged, **extra})
        assert status == 403 and headers["x-blockcache-code"] == "AccessDenied"
    presigned = client(owner, "AKIDA", SECRET_A).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "team-a/model.bin"})
    status, _, _ = plain_get(owner, target_of(presigned), forged)  # a key holder forging a hop
    assert status == 403
    status, _, _ = plain_get(owner, "/_evict")
    assert status in (403, 405)
    assert proxy.total == 0
