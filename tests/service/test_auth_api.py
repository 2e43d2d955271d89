"""Access keys and cluster trust at a CacheNode's HTTP and gRPC edges (FakeOrigin, real disk)."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from yarl import URL

from cachenode.access import AccessDenied
from cachenode.auth.cluster import BODY_SHA256, HEADER, ClusterKey
from cachenode.auth.grpc_auth import GrpcCredentials
from cachenode.blocks import BlockRef
from cachenode.config import NodeConfig
from cachenode.errors import CacheError, PeerUnavailable
from cachenode.metrics import NodeMetrics
from cachenode.node import CacheNode
from cachenode.pb import blockcache_pb2 as pb
from cachenode.pb import blockcache_pb2_grpc as pb_grpc
from cachenode.peers import PeerClient
from cachenode.peers_http import HttpPeerClient
from tests.fakes import FakeOrigin, blob

pytestmark = pytest.mark.asyncio
BS = 64 * 1024
SECRET_A, SECRET_ALL = "secret-of-team-a-0123", "secret-of-the-admin-0123"
CLUSTER_SECRET = b"cluster-secret-0123456789"
PEER = {"If-Match": "", "X-Blockcache-Size": "", "X-Blockcache-Hops": "1",
        "X-Blockcache-Epoch": "1", "X-Blockcache-Cached-Only": "1"}


@dataclass
class Node:
    node: CacheNode
    origin: FakeOrigin
    http: aiohttp.ClientSession
    base: str
    keys: Path

    def origin_calls(self) -> int:
        return sum(self.origin.heads.values()) + sum(self.origin.gets.values())

    async def get(self, path: str, headers: dict[str, str] | None = None,
                  method: str = "GET", body: bytes | None = None
                  ) -> tuple[int, dict[str, str], bytes]:
        async with self.http.request(method, URL(self.base + path, encoded=True),
                                     headers=headers or {}, data=body) as r:
            return r.status, dict(r.headers), await r.read()


def make_config(tmp_path: Path, keys: bool = True) -> NodeConfig:
    (tmp_path / "keys").write_text(f"# test keys\nAKIDA {SECRET_A} bkt/team-a/\n"
                                   f"AKIDALL {SECRET_ALL}\n")
    (tmp_path / "cluster").write_bytes(CLUSTER_SECRET)
    return NodeConfig(data_dir=tmp_path / "data", block_size_bytes=BS, capacity_bytes=64 * BS,
                      http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0),
                      fill_timeout_s=2.0, access_keys_file=tmp_path / "keys" if keys else None,
                      cluster_secret_file=tmp_path / "cluster")


async def start(tmp_path: Path, keys: bool = True) -> AsyncIterator[Node]:
    origin = FakeOrigin()
    async with (CacheNode(make_config(tmp_path, keys), origin=origin) as n,
                aiohttp.ClientSession() as http):
        yield Node(n, origin, http, f"http://127.0.0.1:{n.http_port}", tmp_path / "keys")


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async for n in start(tmp_path):
        yield n


@pytest_asyncio.fixture
async def open_node(tmp_path: Path) -> AsyncIterator[Node]:
    async for n in start(tmp_path, keys=False):
        yield n


def signed(n: Node, path: str, key_id: str = "AKIDA", secret: str = SECRET_A,
           method: str = "GET", presign: bool = False) -> tuple[str, dict[str, str]]:
    """Return (raw path with query, headers) as botocore's S3 signer signs them."""
    req = AWSRequest(method, n.base + path, headers={})
    creds = Credentials(key_id, secret)
    (S3SigV4QueryAuth(creds, "s3", "us-east-1", 60) if presign
     else S3SigV4Auth(creds, "s3", "us-east-1")).add_auth(req)
    p = req.prepare()
    u = urllib.parse.urlsplit(p.url)
    return u.path + ("?" + u.query if u.query else ""), dict(p.headers)


def cluster_signed(path: str, headers: dict[str, str], method: str = "GET") -> dict[str, str]:
    h = dict(headers)
    h[HEADER] = ClusterKey(CLUSTER_SECRET).sign(method, path, "", h, time.time())
    return h


async def test_signed_and_presigned_reads_in_scope(node: Node) -> None:
    data = blob(3 * BS + 5)
    node.origin.put("bkt", "team-a/m.bin", data)
    status, _, body = await node.get(*signed(node, "/bkt/team-a/m.bin"))
    assert (status, body) == (200, data)
    path, _ = signed(node, "/bkt/team-a/m.bin", presign=True)
    status, _, body = await node.get(path)  # a plain client: no headers but Host
    assert (status, body) == (200, data)
    status, headers, _ = await node.get(*signed(node, "/bkt/team-a/m.bin", method="HEAD"),
                                        method="HEAD")
    assert status == 200 and headers["Content-Length"] == str(len(data))


@pytest.mark.parametrize(("how", "code"), [
    ("none", "AccessDenied"), ("unknown", "InvalidAccessKeyId"),
    ("wrong", "SignatureDoesNotMatch"), ("scope", "AccessDenied")])
async def test_refusals_cost_the_origin_nothing(node: Node, how: str, code: str) -> None:
    node.origin.put("bkt", "team-b/m.bin", blob(BS))
    path, headers = {"none": ("/bkt/team-b/m.bin", {}),
                     "unknown": signed(node, "/bkt/team-a/m.bin", "AKIDX"),
                     "wrong": signed(node, "/bkt/team-a/m.bin", secret=SECRET_A + "x"),
                     "scope": signed(node, "/bkt/team-b/m.bin")}[how]
    for method in ("GET", "HEAD"):
        if how != "none":
            path, headers = signed(node, path.split("?")[0], method=method, **(
                {"key_id": "AKIDX"} if how == "unknown" else
                {"secret": SECRET_A + "x"} if how == "wrong" else {}))
        status, h, body = await node.get(path, headers, method=method)
        assert status == 403 and h["X-Blockcache-Code"] == code
        assert h["X-Blockcache-Error"] == "AccessDenied"
        if method == "GET":
            doc = json.loads(body)
            assert doc["code"] == code and doc["error"] == "AccessDenied"
    assert node.origin_calls() == 0
    assert node.node.metrics.value("blockcache_auth_failures_total", api="http",
                                   code=code) == 2


async def test_out_of_scope_tells_nothing_about_existence(node: Node) -> None:
    node.origin.put("bkt", "team-b/there.bin", blob(BS))
    got = []
    for key in ("team-b/there.bin", "team-b/nothere.bin", "team-b/bad//key", "team-b/../x"):
        status, h, body = await node.get(*signed(node, "/bkt/" + key))
        got.append((status, h["X-Blockcache-Code"], body.decode().replace(key, "K")))
    assert len(set(got)) == 1 and got[0][0] == 403
    assert node.origin_calls() == 0


async def test_listing_needs_a_scope_covering_its_prefix(node: Node) -> None:
    node.origin.put("bkt", "team-a/x", b"1")
    node.origin.put("bkt", "team-b/y", b"2")
    status, _, body = await node.get(*signed(node, "/_list/bkt?prefix=team-a%2F"))
    assert status == 200 and [o["key"] for o in json.loads(body)["objects"]] == ["team-a/x"]
    for query in ("?prefix=team-b%2F", "", "?prefix=team"):
        status, h, _ = await node.get(*signed(node, "/_list/bkt" + query))
        assert status == 403 and h["X-Blockcache-Code"] == "AccessDenied"
    status, _, body = await node.get(*signed(node, "/_list/bkt", "AKIDALL", SECRET_ALL))
    assert status == 200 and len(json.loads(body)["objects"]) == 2


async def test_peer_headers_need_the_cluster_signature(node: Node) -> None:
    data = blob(BS)
    etag = node.origin.put("bkt", "team-b/m.bin", data)
    peer = {**PEER, "If-Match": etag, "X-Blockcache-Size": str(BS), "Range": f"bytes=0-{BS - 1}"}
    path, headers = signed(node, "/bkt/team-a/m.bin", "AKIDALL", SECRET_ALL)
    status, h, _ = await node.get(path, {**headers, **peer})  # a key holder forging a hop
    assert status == 403 and "cluster secret" in h["X-Blockcache-Reason"]
    bad = cluster_signed("/bkt/team-b/m.bin", peer)
    bad[HEADER] = bad[HEADER][:-1] + ("0" if bad[HEADER][-1] != "0" else "1")
    assert (await node.get("/bkt/team-b/m.bin", bad))[0] == 403
    assert node.origin_calls() == 0
    # signed: a handoff question, answered from disk without asking the origin
    status, h, _ = await node.get("/bkt/team-b/m.bin", cluster_signed("/bkt/team-b/m.bin", peer))
    assert status == 404 and h["X-Blockcache-Error"] == "BlockNotCached"
    assert node.origin_calls() == 0
    del peer["X-Blockcache-Cached-Only"]
    status, h, body = await node.get("/bkt/team-b/m.bin", cluster_signed("/bkt/team-b/m.bin",
                                                                         peer))
    assert (status, body) == (206, data) and "X-Blockcache-Crc32c" in h


async def test_warm_and_evict_need_the_cluster_signature(node: Node) -> None:
    body = json.dumps({"bucket": "bkt", "prefix": "team-a/"}).encode()
    path, headers = signed(node, "/_evict", "AKIDALL", SECRET_ALL, method="POST")
    assert (await node.get("/_evict", method="POST", body=body))[0] == 403
    assert (await node.get(path, headers, method="POST", body=body))[0] == 403
    h = cluster_signed("/_evict", {BODY_SHA256: hashlib.sha256(body).hexdigest()}, "POST")
    status, _, doc = await node.get("/_evict", h, method="POST", body=body)
    assert status == 200 and json.loads(doc)["blocks"] == 0
    assert (await node.get("/_evict", h, method="POST", body=body))[0] == 403  # replayed
    h = cluster_signed("/_evict", {BODY_SHA256: hashlib.sha256(body).hexdigest()}, "POST")
    status, headers, _ = await node.get("/_evict", h, method="POST", body=body + b" ")
    assert status == 403 and "body" in headers["X-Blockcache-Reason"]


async def test_without_keys_peer_headers_are_ignored_unsigned(open_node: Node) -> None:
    data = blob(BS)
    etag = open_node.origin.put("bkt", "m.bin", data)
    peer = {**PEER, "If-Match": etag, "X-Blockcache-Size": str(BS), "Range": f"bytes=0-{BS - 1}"}
    status, h, body = await open_node.get("/bkt/m.bin", peer)  # a client: read, not a handoff
    assert (status, body) == (206, data) and sum(open_node.origin.heads.values()) == 1
    status, h, _ = await open_node.get("/bkt/m.bin", cluster_signed("/bkt/m.bin", peer))
    assert status == 206  # signed: the peer's pin is trusted, the block is on disk now
    body = b'{"bucket": "bkt", "prefix": "m"}'
    assert (await open_node.get("/_evict", method="POST", body=body))[0] == 403


async def grpc_call(n: Node, method: str, req: object,
                    creds: GrpcCredentials | None) -> list[object] | grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{n.node.grpc_port}") as ch:
        stub = pb_grpc.BlockCacheStub(ch)
        md = creds.metadata(method, req) if creds is not None else None
        try:
            if method == "Stat":
                return [await stub.Stat(req, metadata=md, timeout=10)]
            return [c async for c in getattr(stub, method)(req, metadata=md, timeout=10)]
        except grpc.aio.AioRpcError as e:
            return e


async def test_grpc_calls_need_credentials_covering_the_read(node: Node) -> None:
    data = blob(2 * BS + 1)
    etag = node.origin.put("bkt", "team-a/m.bin", data)
    node.origin.put("bkt", "team-b/m.bin", data)
    team_a = GrpcCredentials("AKIDA", SECRET_A)
    cases = [("Stat", pb.StatRequest(bucket="bkt", key="team-b/m.bin"), team_a,
              grpc.StatusCode.PERMISSION_DENIED, "AccessDenied"),
             ("ReadRange", pb.ReadRangeRequest(bucket="bkt", key="team-a/m.bin", length=-1),
              None, grpc.StatusCode.PERMISSION_DENIED, "AccessDenied"),
             ("ReadRange", pb.ReadRangeRequest(bucket="bkt", key="team-a/m.bin", length=-1),
              GrpcCredentials("AKIDA", SECRET_ALL), grpc.StatusCode.UNAUTHENTICATED,
              "SignatureDoesNotMatch"),
             ("ReadBlock", pb.ReadBlockRequest(bucket="bkt", key="team-b/m.bin", etag=etag,
                                               object_size=len(data)), team_a,
              grpc.StatusCode.PERMISSION_DENIED, "AccessDenied")]
    for method, req, creds, status, code in cases:
        got = await grpc_call(node, method, req, creds)
        assert isinstance(got, grpc.aio.AioRpcError) and got.code() == status, method
        assert dict(got.trailing_metadata() or ())["blockcache-code"] == code
    assert node.origin_calls() == 0
    got = await grpc_call(node, "ReadRange", pb.ReadRangeRequest(
        bucket="bkt", key="team-a/m.bin", length=-1), team_a)
    assert isinstance(got, list) and b"".join(c.data for c in got) == data  # type: ignore[attr-defined]
    info = await grpc_call(node, "Stat", pb.StatRequest(bucket="bkt", key="team-a/m.bin"),
                           team_a)
    assert isinstance(info, list) and info[0].etag == etag  # type: ignore[attr-defined]


async def test_peer_client_signs_read_block(node: Node) -> None:
    data = blob(BS + 9)
    etag = node.origin.put("bkt", "team-a/m.bin", data)
    meta = await node.node.service.stat("bkt", "team-a/m.bin")
    assert meta.etag == etag
    addr = f"127.0.0.1:{node.node.grpc_port}"
    signed_client = PeerClient(NodeMetrics(), 10.0, GrpcCredentials("AKIDA", SECRET_A))
    plain = PeerClient(NodeMetrics(), 10.0)
    try:
        got = await signed_client.read_block(addr, BlockRef(meta, 1, BS), hops=1, epoch=0)
        assert got == data[BS:]
        with pytest.raises(CacheError) as e:
            await plain.read_block(addr, BlockRef(meta, 0, BS), hops=1, epoch=0)
        assert isinstance(e.value, AccessDenied)
    finally:
        await signed_client.close()
        await plain.close()


async def test_http_peer_client_signs_and_a_refusal_fails_over(node: Node) -> None:
    data = blob(BS + 3)
    node.origin.put("bkt", "team-b/m.bin", data)
    meta = await node.node.service.stat("bkt", "team-b/m.bin")
    addr = f"127.0.0.1:{node.node.http_port}"
    good = HttpPeerClient(NodeMetrics(), 10.0, cluster=ClusterKey(CLUSTER_SECRET))
    wrong = HttpPeerClient(NodeMetrics(), 10.0, cluster=ClusterKey(b"another-secret-0123456"))
    try:
        assert await good.read_block(addr, BlockRef(meta, 1, BS), hops=1, epoch=0) == data[BS:]
        with pytest.raises(PeerUnavailable, match="cluster signature"):  # next owner, origin
            await wrong.read_block(addr, BlockRef(meta, 0, BS), hops=1, epoch=0)
        assert wrong.is_down(addr)
    finally:
        await good.close()
        await wrong.close()
