"""Every API asks the node's Authenticator first: refusals are 403 and cost the origin nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
import pytest_asyncio
from yarl import URL

from cachenode.access import AccessDenied, Principal, RequestView, Scope
from cachenode.config import NodeConfig
from cachenode.node import CacheNode
from cachenode.pb import blockcache_pb2 as pb
from cachenode.pb import blockcache_pb2_grpc as pb_grpc
from tests.fakes import FakeOrigin, blob

BS = 64 * 1024
DATA = blob(2 * BS + 1)


@dataclass
class Recorder:
    """An authenticator that records what it saw: denies with `code`, or grants `scopes`."""

    code: str = ""
    scopes: tuple[Scope, ...] = ()
    seen: list[RequestView] = field(default_factory=list)
    enabled = True

    def authenticate(self, request: RequestView, now: float) -> Principal:
        self.seen.append(request)
        if self.code:
            raise AccessDenied(self.code, f"refused by the test ({self.code})")
        return Principal("tenant", self.scopes)


@dataclass
class Env:
    node: CacheNode
    origin: FakeOrigin
    auth: Recorder
    http: aiohttp.ClientSession
    etag: str

    async def get(self, port: int, raw: str, headers: dict[str, str] | None = None
                  ) -> tuple[int, bytes]:
        url = URL(f"http://127.0.0.1:{port}{raw}", encoded=True)
        async with self.http.get(url, headers=headers or {}) as r:
            return r.status, await r.read()

    def origin_calls(self) -> int:
        o = self.origin
        return sum(o.heads.values()) + sum(o.gets.values()) + sum(o.lists.values())


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=64 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0),
                     s3_addr=("127.0.0.1", 0), fill_timeout_s=2.0)
    origin = FakeOrigin()
    etag = origin.put("bkt", "m/a.bin", DATA)
    origin.put("bkt", "secret.bin", DATA)
    origin.put("other", "x.bin", DATA)
    auth = Recorder()
    node = CacheNode(cfg, origin=origin, authenticator=auth)
    async with node, aiohttp.ClientSession() as http:
        yield Env(node, origin, auth, http, etag)


@pytest.mark.asyncio
async def test_a_refused_credential_is_403_everywhere_and_costs_the_origin_nothing(
        env: Env) -> None:
    env.auth.code = "SignatureDoesNotMatch"
    s3, http = env.node.s3_port, env.node.http_port
    for raw in ("/bkt/m/a.bin", "/bkt/nope", "/bkt?list-type=2", "/", "/bkt?location"):
        status, body = await env.get(s3, raw, {"Authorization": "AWS4-HMAC-SHA256 x"})
        assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body, raw
    for raw in ("/bkt/m/a.bin", "/bkt/nope", "/_list/bkt?prefix=m/"):
        status, body = await env.get(http, raw)
        assert status == 403 and b'"code": "SignatureDoesNotMatch"' in body, raw
    assert env.origin_calls() == 0
    assert (await env.get(http, "/healthz"))[0] == 200  # stays open
    assert (await env.get(http, "/readyz"))[0] == 200
    # A credential that does not verify is UNAUTHENTICATED (a scope refusal: PERMISSION_DENIED).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.node.grpc_port}") as ch:
        stub = pb_grpc.BlockCacheStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Stat(pb.StatRequest(bucket="bkt", key="m/a.bin"), timeout=5,
                            metadata=(("authorization", "Bearer t"),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            call = stub.ReadRange(pb.ReadRangeRequest(bucket="bkt", key="m/a.bin", length=-1),
                                  timeout=5)
            await call.read()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ReadBlock(pb.ReadBlockRequest(bucket="bkt", key="m/a.bin", etag=env.etag,
                                                     object_size=len(DATA)), timeout=5).read()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert env.origin_calls() == 0
    views = {v.transport for v in env.auth.seen}
    assert views == {"s3", "http", "grpc"}
    grpc_view = next(v for v in env.auth.seen if v.transport == "grpc")
    assert grpc_view.headers["authorization"] == "Bearer t"
    assert grpc_view.raw_path == "/blockcache.v1.BlockCache/Stat"
    s3_view = next(v for v in env.auth.seen if v.transport == "s3" and v.raw_query)
    assert (s3_view.raw_path, s3_view.raw_query) == ("/bkt", "list-type=2")
    assert s3_view.headers["authorization"] == "AWS4-HMAC-SHA256 x"


@pytest.mark.asyncio
async def test_scopes_decide_reads_listings_and_buckets(env: Env) -> None:
    env.auth.scopes = (Scope("bkt", "m/"),)
    s3 = env.node.s3_port
    assert await env.get(s3, "/bkt/m/a.bin") == (200, DATA)
    before = env.origin_calls()
    for raw in ("/bkt/secret.bin", "/bkt/nope", "/other/x.bin", "/bkt?list-type=2",
                "/bkt?list-type=2&prefix=s", "/other?location"):
        status, body = await env.get(s3, raw)
        assert status == 403 and b"<Code>AccessDenied</Code>" in body, raw
    assert env.origin_calls() == before  # refused before any lookup: existence not told
    status, body = await env.get(s3, "/bkt?list-type=2&prefix=m/")
    assert status == 200 and b"<Key>m/a.bin</Key>" in body
    status, body = await env.get(s3, "/")
    assert status == 200 and b"<Name>bkt</Name>" in body and b"<Name>other</Name>" not in body
    assert (await env.get(env.node.http_port, "/bkt/secret.bin"))[0] == 403
