"""The tenant of a fill travels to the owner signed; the --access-keys file gives tenants."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from cachenode.access import TenantLimits
from cachenode.auth.cluster import HEADER, ClusterKey
from cachenode.blocks import BlockRef
from cachenode.config import NodeConfig
from cachenode.errors import TenantThrottled
from cachenode.metrics import NodeMetrics
from cachenode.node import CacheNode
from cachenode.peers_http import TENANT, TENANT_WAIT, HttpPeerClient
from cachenode.qos import Charge
from tests.fakes import FakeOrigin, blob

pytestmark = pytest.mark.asyncio
BS = 64 * 1024
SECRET = "secret-of-team-b-0123"
CLUSTER = b"cluster-secret-0123456789"


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[CacheNode]:
    (tmp_path / "keys").write_text(
        f"AKIDB {SECRET} bkt tenant=team-b quota=8MiB origin-rate={BS // 8}\n")
    (tmp_path / "cluster").write_bytes(CLUSTER)
    cfg = NodeConfig(data_dir=tmp_path / "data", block_size_bytes=BS, capacity_bytes=64 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None,
                     access_keys_file=tmp_path / "keys", cluster_secret_file=tmp_path / "cluster")
    async with CacheNode(cfg, origin=FakeOrigin()) as n:
        yield n


async def test_the_owner_charges_the_tenant_a_peer_names_and_refuses_over_budget(
        node: CacheNode) -> None:
    assert node.tenant_limits.quota_bytes("team-b") == 8 * 2**20  # alone: the whole site's
    origin = node.origin
    assert isinstance(origin, FakeOrigin)
    origin.put("bkt", "m.bin", blob(4 * BS))
    meta = await node.service.stat("bkt", "m.bin")
    addr = f"127.0.0.1:{node.http_port}"
    peer = HttpPeerClient(NodeMetrics(), 10.0, cluster=ClusterKey(CLUSTER))
    try:
        got = await peer.read_block(addr, BlockRef(meta, 0, BS), hops=1, epoch=0,
                                    charge=Charge("team-b", 0.5))  # the burst
        assert len(got) == BS
        await node.filler.flush()
        e = node.store.entry(BlockRef(meta, 0, BS).block_id)
        assert e is not None and (e.tenant, e.warmed) == ("team-b", False)
        with pytest.raises(TenantThrottled) as err:  # 8 s a block, asked to wait 0.5 s
            await peer.read_block(addr, BlockRef(meta, 1, BS), hops=1, epoch=0,
                                  charge=Charge("team-b", 0.5))
        assert err.value.tenant == "team-b" and err.value.retry_after_s >= 7
        assert not peer.is_down(addr)  # the tenant's budget, not the peer's trouble
        got = await peer.read_block(addr, BlockRef(meta, 1, BS), hops=1, epoch=0)
        assert len(got) == BS  # the cluster's own read: nobody's budget
    finally:
        await peer.close()


async def test_the_tenant_header_is_signed(node: CacheNode) -> None:
    origin = node.origin
    assert isinstance(origin, FakeOrigin)
    origin.put("bkt", "n.bin", blob(BS))
    meta = await node.service.stat("bkt", "n.bin")
    path = "/bkt/n.bin"
    headers = {"Range": f"bytes=0-{BS - 1}", "If-Match": meta.etag,
               "X-Blockcache-Size": str(BS), "X-Blockcache-Hops": "1",
               "X-Blockcache-Epoch": "0", TENANT: "team-b", TENANT_WAIT: "1"}
    headers[HEADER] = ClusterKey(CLUSTER).sign("GET", path, "", headers, time.time())
    async with aiohttp.ClientSession() as http:
        url = URL(f"http://127.0.0.1:{node.http_port}{path}", encoded=True)
        async with http.get(url, headers={**headers, TENANT: "someone-else"}) as r:
            assert r.status == 403  # the signature covers whose fill it is
        async with http.get(url, headers=headers) as r:
            assert r.status == 206
    assert origin.gets and node.metrics.value("blockcache_tenant_fills_total",
                                              tenant="team-b") == 1


async def test_a_key_files_tenant_limits_follow_the_file(node: CacheNode, tmp_path: Path
                                                         ) -> None:
    keys = node.config.access_keys_file
    assert keys is not None
    keys.write_text(f"AKIDB {SECRET} bkt tenant=team-b quota=1MiB\n")
    directory = node.tenant_limits.directory
    assert hasattr(directory, "poll") and directory.poll()
    assert directory.limits("team-b") == TenantLimits(quota_bytes=2**20)
    assert node.tenant_limits.origin_rate("team-b") is None
