"""Tenants on one CacheNode (FakeOrigin, real DiskStore): attribution, quotas, QoS, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from cachenode.access import OPEN, Principal, RequestView, Scope, TenantLimits
from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.config import NodeConfig
from cachenode.node import CacheNode
from cachenode.qos import Charge
from cachenode.store.classes import Usage
from tests.fakes import FakeOrigin, FakeTenants, blob

BS = 64 * 1024


@dataclass
class ByHeader:
    """An authenticator: `X-Test-Tenant: t` is tenant t (not internal; scoped to bkt/p/ if
    its name starts with 'p'); none is OPEN."""

    enabled = True
    seen: list[str] = field(default_factory=list)

    def authenticate(self, request: RequestView, now: float) -> Principal:
        tenant = request.headers.get("x-test-tenant")
        self.seen.append(tenant or "")
        if tenant is None:
            return OPEN
        if tenant.startswith("p"):
            return Principal(f"key-{tenant}", (Scope("bkt", "p/"),), tenant=tenant)
        return Principal(f"key-{tenant}", (), True, tenant=tenant)


@dataclass
class Env:
    node: CacheNode
    origin: FakeOrigin
    tenants: FakeTenants
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.node.http_port}"

    async def put(self, key: str, blocks: int, seed: int = 1) -> ObjectMeta:
        self.origin.put("bkt", key, blob(blocks * BS, seed))
        meta = await self.origin.head("bkt", key)
        self.origin.heads.clear()
        return meta

    async def read(self, key: str, tenant: str | None, rng: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        h = dict(headers or {})
        if tenant is not None:
            h["X-Test-Tenant"] = tenant
        if rng:
            h["Range"] = rng
        async with self.http.get(f"{self.base}/bkt/{key}", headers=h) as r:
            return r.status, dict(r.headers), await r.read()

    async def warm(self, meta: ObjectMeta, tenant: object) -> tuple[int, dict[str, object]]:
        doc = {"block_size": BS, "tenant": tenant, "objects": [
            {"bucket": "bkt", "key": meta.key, "etag": meta.etag, "size": meta.size,
             "indices": list(range(meta.size // BS))}]}
        async with self.http.post(self.base + "/_warm", json=doc) as r:
            return r.status, await r.json()

    def holders(self, meta: ObjectMeta) -> list[tuple[str, bool] | None]:
        out = []
        for i in range(meta.size // BS):
            e = self.node.store.entry(BlockRef(meta, i, BS).block_id)
            out.append(None if e is None else (e.tenant, e.warmed))
        return out

    def m(self, name: str, **labels: str) -> float:
        return self.node.metrics.value(name, **labels)


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=40 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None,
                     fill_timeout_s=5.0, readahead_blocks=2)
    origin, tenants = FakeOrigin(), FakeTenants()
    node = CacheNode(cfg, origin=origin, authenticator=ByHeader(), tenants=tenants)
    async with node, aiohttp.ClientSession() as http:
        yield Env(node, origin, tenants, http)


@pytest.mark.asyncio
async def test_blocks_count_against_the_first_filler_and_a_warm_claims_them(env: Env) -> None:
    meta = await env.put("m/v1", 3)
    status, _, body = await env.read("m/v1", "b", rng=f"bytes=0-{2 * BS - 1}")
    assert status == 206 and len(body) == 2 * BS
    await env.node.filler.flush()
    assert env.holders(meta) == [("b", False), ("b", False), None]
    await env.read("m/v1", "c")  # c reads b's blocks free, and fills the third one
    await env.node.filler.flush()
    assert env.holders(meta) == [("b", False), ("b", False), ("c", False)]
    status, doc = await env.warm(meta, "a")
    assert status == 200 and {r["status"] for r in doc["results"]} == {"present"}  # type: ignore[attr-defined]
    assert env.holders(meta) == [("a", True)] * 3  # a's warm upgrades them: warmed, a's
    status, _ = await env.warm(meta, "d")
    assert env.holders(meta) == [("a", True)] * 3  # warmed already: stays with a
    assert [r[:3] for r in env.node.store.quota.rows()] == [("a", 3 * BS, 0)]
    env.node.store.close()  # the tenant and the class survive a restart (index format 3)
    env.node.store.open()
    assert env.node.store._lru.usage("a") == Usage(3 * BS, 0)


@pytest.mark.asyncio
async def test_warm_names_its_tenant_or_nobody_and_is_checked(env: Env) -> None:
    meta = await env.put("m/v2", 2)
    status, _ = await env.warm(meta, "")
    assert status == 200 and env.holders(meta) == [("", True)] * 2
    for bad in ("a b", 3, None):
        status, doc = await env.warm(meta, bad)
        assert status == 400 and "tenant" in str(doc["reason"])


@pytest.mark.asyncio
async def test_a_tenant_over_its_quota_evicts_its_own_read_through_not_others(env: Env) -> None:
    env.tenants.tenants["b"] = TenantLimits(quota_bytes=6 * BS)
    a = await env.put("a/v1", 8)
    status, _ = await env.warm(a, "a")
    assert status == 200
    other = await env.put("x/one", 4, seed=2)
    await env.read("x/one", None)  # nobody's read-through
    for i in range(10):  # b reads 20 blocks cold: far past its 6
        await env.put(f"b/{i}", 2, seed=10 + i)
        status, _, _ = await env.read(f"b/{i}", "b")
        assert status == 200
    await env.node.filler.flush()
    assert env.node.store._lru.usage("b") == Usage(0, 6 * BS)
    assert env.holders(a) == [("a", True)] * 8  # every warmed block still there
    assert env.holders(other) == [("", False)] * 4  # and nobody's blocks too
    assert env.m("blockcache_tenant_evicted_bytes_total", tenant="b", reason="quota") == 14 * BS
    assert env.m("blockcache_evictions_total") == 0  # a quota, not the capacity
    text = await (await env.http.get(env.base + "/metrics")).text()
    assert f'blockcache_tenant_quota_used_bytes{{class="read",tenant="b"}} {6 * BS}.0' in text
    assert f'blockcache_tenant_quota_limit_bytes{{tenant="b"}} {6 * BS}.0' in text
    assert f'blockcache_tenant_quota_used_bytes{{class="warmed",tenant="a"}} {8 * BS}.0' in text


@pytest.mark.asyncio
async def test_capacity_pressure_takes_read_through_before_any_warmed_block(env: Env) -> None:
    a = await env.put("a/v1", 20)
    await env.warm(a, "a")
    for i in range(15):  # 30 blocks of nobody's reads into the 20 blocks left
        await env.put(f"r/{i}", 2, seed=30 + i)
        assert (await env.read(f"r/{i}", None))[0] == 200
    await env.node.filler.flush()
    assert env.holders(a) == [("a", True)] * 20
    assert env.m("blockcache_evictions_total") == 10
    assert env.m("blockcache_tenant_evicted_bytes_total", tenant="_none",
                 reason="capacity") == 10 * BS


@pytest.mark.asyncio
async def test_fill_concurrency_over_budget_is_slowdown_and_others_keep_going(env: Env) -> None:
    env.tenants.tenants["b"] = TenantLimits(origin_fills=1)
    metas = [await env.put(f"b/{i}", 1, seed=50 + i) for i in range(3)]
    await env.put("a/1", 1, seed=60)
    env.origin.delay_s = 1.5  # each origin call; one fill of b outlasts the 1 s first-block wait
    t0 = time.monotonic()
    results = await asyncio.gather(*(env.read(m.key, "b") for m in metas),
                                   env.read("a/1", "a"))
    statuses = sorted(r[0] for r in results[:3])
    assert statuses == [200, 503, 503]  # one fill in flight; the others waited 1 s, refused
    for status, headers, body in results[:3]:
        if status == 503:
            assert headers["X-Blockcache-Error"] == "TenantThrottled"
            assert headers["Retry-After"] == "1" and b"tenant b" in body
    assert results[3][0] == 200  # a is not behind b
    assert time.monotonic() - t0 < 4.5  # HEAD + GET, 1.5 s each; nobody queued behind b
    assert env.m("blockcache_tenant_throttled_total", tenant="b", outcome="refused") == 2
    assert env.m("blockcache_tenant_fills_total", tenant="b") == 1
    assert env.m("blockcache_tenant_fills_total", tenant="a") == 1


@pytest.mark.asyncio
async def test_origin_rate_over_budget_waits_then_refuses_with_retry_after(env: Env) -> None:
    env.tenants.tenants["b"] = TenantLimits(origin_bytes_per_s=2 * BS)  # 2 blocks/s here
    await env.put("b/big", 6, seed=70)
    t0 = time.monotonic()
    status, _, body = await env.read("b/big", "b")  # later blocks wait: no cut body
    took = time.monotonic() - t0
    assert status == 200 and len(body) == 6 * BS
    assert 1.5 < took < 4.0  # 1 block of burst, then 5 at 2/s: ~2.5 s
    assert env.m("blockcache_tenant_origin_bytes_total", tenant="b") == 6 * BS
    assert env.m("blockcache_tenant_throttled_total", tenant="b", outcome="waited") >= 4
    await env.put("q/more", 4, seed=71)
    env.tenants.tenants["q"] = TenantLimits(origin_bytes_per_s=BS // 4)  # 4 s a block
    first = await env.read("q/more", "q", rng="bytes=0-0")  # the burst
    assert first[0] == 206
    t0 = time.monotonic()
    status, headers, _ = await env.read("q/more", "q", rng=f"bytes={BS}-{BS}")
    assert status == 503 and int(headers["Retry-After"]) >= 3
    assert time.monotonic() - t0 < 0.9  # refused at once: it would have waited ~4 s
    assert env.m("blockcache_tenant_throttled_total", tenant="q", outcome="refused") == 1
    assert (await env.read("q/more", None, rng=f"bytes={BS}-{BS}"))[0] == 206  # '' is free


@pytest.mark.asyncio
async def test_a_joiner_of_another_tenant_rides_free_or_refills_when_refused(env: Env) -> None:
    env.tenants.tenants["b"] = TenantLimits(origin_fills=1)
    hold = await env.put("b/hold", 1, seed=80)
    shared = await env.put("shared", 1, seed=81)
    env.origin.delay_s = 0.6
    filler = env.node.filler
    holder = asyncio.ensure_future(filler.read_block(BlockRef(hold, 0, BS), Charge("b")))
    await asyncio.sleep(0.05)  # b's one fill slot is taken
    b_wait = asyncio.ensure_future(filler.read_block(BlockRef(shared, 0, BS),
                                                     Charge("b", wait_s=0.2)))
    await asyncio.sleep(0.05)
    a_join = asyncio.ensure_future(filler.read_block(BlockRef(shared, 0, BS), Charge("a")))
    got = await asyncio.gather(holder, b_wait, a_join, return_exceptions=True)
    assert type(got[1]).__name__ == "TenantThrottled"  # b's own budget
    assert not isinstance(got[2], BaseException)  # a started its own fill, charged to a
    for g in (got[0], got[2]):
        if not isinstance(g, (bytes, BaseException)):
            g.close()
    assert env.m("blockcache_tenant_fills_total", tenant="a") == 1
    await filler.flush()
    assert env.holders(shared) == [("a", False)]


@pytest.mark.asyncio
async def test_the_tenant_header_counts_only_from_the_cluster(env: Env) -> None:
    one = await env.put("h/1", 1, seed=90)
    two = await env.put("h/2", 1, seed=91)
    hdr = {"X-Blockcache-Tenant": "b", "X-Blockcache-Tenant-Wait": "5"}
    await env.read("h/1", None, headers=hdr)  # OPEN: internal (no auth), honoured
    await env.read("h/2", "c", headers=hdr)  # a tenant's own request: ignored
    await env.node.filler.flush()
    assert env.holders(one) == [("b", False)] and env.holders(two) == [("c", False)]
    status, _, _ = await env.read("h/1", None, headers={"X-Blockcache-Tenant": "no/such"})
    assert status == 400


@pytest.mark.asyncio
async def test_per_tenant_request_and_byte_metrics(env: Env) -> None:
    await env.put("p/1", 2, seed=95)
    await env.read("p/1", "a")
    await env.node.filler.flush()  # cut-through: the response can end before the write does
    await env.read("p/1", "a")
    await env.read("p/1", None)
    m = env.m
    assert m("blockcache_tenant_requests_total", tenant="a", api="http") == 2
    assert m("blockcache_tenant_requests_total", tenant="_none", api="http") == 1
    assert m("blockcache_tenant_served_bytes_total", tenant="a", source="origin") == 2 * BS
    assert m("blockcache_tenant_served_bytes_total", tenant="a", source="disk") == 2 * BS
    assert m("blockcache_tenant_served_bytes_total", tenant="_none", source="disk") == 2 * BS
    await env.put("q/secret", 1, seed=96)
    assert (await env.read("q/secret", "p1"))[0] == 403  # p1 reads only bkt/p/
    assert (await env.read("p/1", "p1"))[0] == 200
    assert m("blockcache_tenant_denied_total", tenant="p1", api="http") == 1
    assert m("blockcache_tenant_requests_total", tenant="p1", api="http") == 2
