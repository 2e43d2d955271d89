"""Two CacheNodes in this process, registered in a real etcd, over one FakeOrigin."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.config import NodeConfig
from cachenode.node import CacheNode
from tests.fakes import FakeOrigin
from tests.servers import Etcd

pytestmark = pytest.mark.integration
BS = 64 * 1024
_ids = itertools.count()


def blob(size: int, seed: int) -> bytes:
    return bytes((seed * 13 + i * 31 + (i >> 9)) % 251 for i in range(size))


@pytest_asyncio.fixture
async def pair(tmp_path: Path, etcd: Etcd) -> AsyncIterator[tuple[CacheNode, CacheNode,
                                                                   FakeOrigin]]:
    """Node a trusts metadata for a minute; node b asks the origin every time."""
    origin = FakeOrigin()
    cluster = f"inproc{next(_ids)}"

    def config(name: str, ttl: float) -> NodeConfig:
        return NodeConfig(data_dir=tmp_path / name, block_size_bytes=BS,
                          capacity_bytes=64 * BS, http_addr=("127.0.0.1", 0),
                          grpc_addr=("127.0.0.1", 0), s3_addr=None, metadata_ttl_s=ttl,
                          etcd_endpoints=(etcd.endpoint,), cluster=cluster, site="s",
                          node_id=name, lease_ttl_s=4.0)

    async with CacheNode(config("a", 60.0), origin=origin) as a, \
            CacheNode(config("b", 0.0), origin=origin) as b:
        for _ in range(100):
            if all(n.router.ring is not None and len(n.router.ring) == 2 for n in (a, b)):
                break
            await asyncio.sleep(0.05)
        yield a, b, origin


@pytest.mark.asyncio
async def test_stale_metadata_on_the_entry_node_never_fails_or_mixes(
        pair: tuple[CacheNode, CacheNode, FakeOrigin]) -> None:
    a, b, origin = pair
    old, new = blob(32 * BS, 1), blob(32 * BS, 2)
    etag = origin.put("bkt", "m.bin", old)
    meta = ObjectMeta("bkt", "m.bin", len(old), etag)
    owned_by_b = [i for i in range(32) if a.router.owners(BlockRef(meta, i, BS))[0] == "b"]
    assert owned_by_b, "b must own some of the 32 blocks"
    url = f"http://127.0.0.1:{a.http_port}/bkt/m.bin"
    async with aiohttp.ClientSession() as http:
        async with http.head(url) as r:  # a now pins the old ETag (no block read yet)
            assert r.status == 200 and r.headers["ETag"] == etag
        origin.put("bkt", "m.bin", new)  # a still trusts the old ETag for a minute; b does not
        i = owned_by_b[0]
        async with http.get(url, headers={"Range": f"bytes={i * BS}-{(i + 1) * BS - 1}"}) as r:
            body = await r.read()
            # b refused a's pin (412): a looked again and serves the new version, whole
            assert r.status == 206, body[:200]
            assert body == new[i * BS:(i + 1) * BS]
            assert r.headers["ETag"] != etag
