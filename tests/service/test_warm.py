"""POST /_warm and /_evict of a CacheNode (FakeOrigin, real DiskStore) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from cachenode import warm
from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.config import NodeConfig
from cachenode.errors import StoreFull
from cachenode.node import CacheNode
from cachenode.warm import MAX_WARM_BLOCKS, Admin
from tests.fakes import FakeOrigin, blob

BS = 64 * 1024


@dataclass
class Node:
    node: CacheNode
    origin: FakeOrigin
    http: aiohttp.ClientSession
    base: str

    async def put(self, key: str, data: bytes, bucket: str = "bkt") -> ObjectMeta:
        self.origin.put(bucket, key, data)
        meta = await self.origin.head(bucket, key)
        self.origin.heads.clear()
        return meta

    async def post(self, path: str, doc: Any) -> tuple[int, dict[str, Any]]:
        body = io.BytesIO(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
        async with self.http.post(self.base + path, data=body,
                                  headers={"Content-Type": "application/json"}) as resp:
            return resp.status, await resp.json()

    async def warm(self, *objects: tuple[ObjectMeta, list[int]], verify: bool = False
                   ) -> list[dict[str, Any]]:
        status, doc = await self.post("/_warm", warm_body(*objects, verify=verify))
        assert status == 200, doc
        assert doc["node"] == self.node.config.node_id
        return doc["results"]  # type: ignore[no-any-return]

    async def read(self, key: str, bucket: str = "bkt") -> bytes:
        async with self.http.get(f"{self.base}/{bucket}/{key}") as resp:
            assert resp.status == 200
            return await resp.read()

    def gets(self) -> int:
        return sum(self.origin.gets.values())

    def stored(self, meta: ObjectMeta, index: int) -> bool:
        return self.node.store.entry(BlockRef(meta, index, BS).block_id) is not None

    def path(self, meta: ObjectMeta, index: int) -> Path:
        bid = BlockRef(meta, index, BS).block_id
        return self.node.store.root / "blocks" / bid[:2] / bid[2:4] / bid

    def metric(self, name: str, **labels: str) -> float:
        return self.node.metrics.value(name, **labels)


def obj_doc(meta: ObjectMeta, indices: list[int]) -> dict[str, Any]:
    return {"bucket": meta.bucket, "key": meta.key, "etag": meta.etag, "size": meta.size,
            "last_modified": meta.last_modified, "indices": indices}


def warm_body(*objects: tuple[ObjectMeta, list[int]], verify: bool = False) -> dict[str, Any]:
    return {"block_size": BS, "verify": verify, "objects": [obj_doc(m, i) for m, i in objects]}


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    cfg = NodeConfig(data_dir=tmp_path, block_size_bytes=BS, capacity_bytes=64 * BS,
                     http_addr=("127.0.0.1", 0), grpc_addr=("127.0.0.1", 0), s3_addr=None,
                     fill_timeout_s=2.0, node_id="node-a")
    origin = FakeOrigin()
    async with CacheNode(cfg, origin=origin) as n, aiohttp.ClientSession() as http:
        yield Node(n, origin, http, f"http://127.0.0.1:{n.http_port}")


@pytest.fixture
def slow_disk(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every block write take 0.2 s, long after the bytes were fetched."""
    write = node.node.store._write_file

    def write_slowly(*args: Any) -> int:
        time.sleep(0.2)
        return write(*args)

    monkeypatch.setattr(node.node.store, "_write_file", write_slowly)


@pytest.mark.asyncio
async def test_warm_fills_missing_blocks_durably_then_reports_present(
        node: Node, slow_disk: None) -> None:
    data = blob(3 * BS + 100)
    meta = await node.put("m/v1/a.bin", data)
    results = await node.warm((meta, [0, 1, 3]))
    assert [(r["index"], r["status"], r["bytes"], r["repaired"]) for r in results] == [
        (0, "filled", BS, False), (1, "filled", BS, False), (3, "filled", 100, False)]
    assert all("error" not in r for r in results)
    # On disk, indexed and checksummed when the answer came, although writes are slow.
    for i in (0, 1, 3):
        assert node.stored(meta, i), i
        assert node.path(meta, i).read_bytes() == data[i * BS:(i + 1) * BS]
    assert not node.stored(meta, 2)
    assert node.origin.gets == {("bkt", "m/v1/a.bin", i * BS): 1 for i in (0, 1, 3)}
    # The fill's length comes from the node's own metadata (one HEAD), never from the request.
    assert node.origin.heads == {("bkt", "m/v1/a.bin"): 1}

    results = await node.warm((meta, [0, 1, 2, 3]))
    assert [r["status"] for r in results] == ["present", "present", "filled", "present"]
    assert node.gets() == 4
    assert node.metric("blockcache_warm_blocks_total", result="filled") == 4
    assert node.metric("blockcache_warm_blocks_total", result="present") == 3
    assert await node.read("m/v1/a.bin") == data
    assert node.gets() == 4  # the read was all hits


@pytest.mark.asyncio
async def test_concurrent_warm_and_read_cause_one_origin_get(node: Node) -> None:
    data = blob(2 * BS)
    meta = await node.put("m", data)
    node.origin.delay_s = 0.1
    reads = [asyncio.ensure_future(node.read("m")) for _ in range(3)]
    await asyncio.sleep(0.03)  # the reads are filling
    warms = [node.warm((meta, [0, 1])) for _ in range(3)]
    got = await asyncio.gather(*warms)
    assert [await r for r in reads] == [data] * 3
    assert all(r["status"] in ("filled", "present") for results in got for r in results)
    assert node.origin.gets == {("bkt", "m", 0): 1, ("bkt", "m", BS): 1}
    assert node.stored(meta, 0) and node.stored(meta, 1)


@pytest.mark.asyncio
async def test_warm_during_a_reads_write_behind_waits_for_it(node: Node, slow_disk: None
                                                             ) -> None:
    data = blob(BS)
    meta = await node.put("m", data)
    got = await node.node.filler.read_block(BlockRef(meta, 0, BS))  # a gRPC or peer read
    assert got == data  # answered before its block reached the disk
    assert not node.stored(meta, 0)
    results = await node.warm((meta, [0]))
    assert results[0]["status"] == "filled"
    assert node.stored(meta, 0)  # the warm waited for the read's write
    assert node.gets() == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("damage", ["flip", "truncate"])
async def test_verify_repairs_a_corrupt_block(node: Node, damage: str) -> None:
    data = blob(2 * BS)
    meta = await node.put("m", data)
    await node.warm((meta, [0, 1]))
    assert [r["status"] for r in await node.warm((meta, [0, 1]), verify=True)] == [
        "present", "present"]
    assert node.gets() == 2  # a good block is read and checked, not fetched
    path = node.path(meta, 1)
    if damage == "flip":  # same size: only the crc can tell
        raw = bytearray(path.read_bytes())
        raw[100] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        os.truncate(path, 1000)
    assert [r["status"] for r in await node.warm((meta, [1]))] == ["present"]  # no check
    results = await node.warm((meta, [0, 1]), verify=True)
    assert [(r["status"], r["repaired"]) for r in results] == [
        ("present", False), ("filled", True)]
    assert node.origin.gets == {("bkt", "m", 0): 1, ("bkt", "m", BS): 2}
    assert zlib.crc32(path.read_bytes()) == zlib.crc32(data[BS:])
    assert node.metric("blockcache_corrupt_blocks_total") == 1


def too_many(meta: ObjectMeta) -> dict[str, Any]:
    big = ObjectMeta(meta.bucket, meta.key, MAX_WARM_BLOCKS * BS, meta.etag)
    return warm_body((big, list(range(MAX_WARM_BLOCKS - 1))), (big, [0, 1]))


@pytest.mark.asyncio
@pytest.mark.parametrize(("change", "reason"), [
    (lambda d, m: {**d, "block_size": 4 * 2**20}, f"block_size 4194304 differs from this "
                                                  f"node's block size {BS}"),
    (lambda d, m: {k: v for k, v in d.items() if k != "block_size"}, "block_size"),
    (lambda d, m: {**d, "block_size": True}, "block_size"),
    (lambda d, m: warm_body((m, [3])), "block index 3 is not in 0..2"),
    (lambda d, m: warm_body((m, [-1])), "block index -1"),
    (lambda d, m: warm_body((m, [True])), "block index True"),
    (lambda d, m: warm_body((m, ["0"])), "block index '0'"),  # type: ignore[list-item]
    (lambda d, m: too_many(m), f"more than {MAX_WARM_BLOCKS} blocks"),
    (lambda d, m: b'{"block_size": 65536, "objects": [', "not valid JSON"),
    (lambda d, m: b"\xff\xfe{}", "not valid JSON"),
    (lambda d, m: b"[" * 100_000, "not valid JSON"),
    (lambda d, m: [d], "must be a JSON object"),
    (lambda d, m: {**d, "objects": {}}, "'objects' must be list"),
    (lambda d, m: {**d, "objects": [1]}, "objects[0]: must be a JSON object"),
    (lambda d, m: {**d, "verify": "yes"}, "'verify' must be bool"),
    (lambda d, m: warm_body((ObjectMeta("bkt", "m", m.size, ""), [0])), "etag"),
    (lambda d, m: warm_body((ObjectMeta("bkt", "m", m.size, '"a"\r\nX: y'), [0])), "etag"),
    (lambda d, m: warm_body((ObjectMeta("bkt", "../etc/passwd", m.size, m.etag), [0])),
     "'..'"),
    (lambda d, m: warm_body((ObjectMeta("bkt", "a/./b", m.size, m.etag), [0])), "'.'"),
    (lambda d, m: warm_body((ObjectMeta("bkt", "a\x00b", m.size, m.etag), [0])), "NUL"),
    (lambda d, m: warm_body((ObjectMeta("b/../c", "k", m.size, m.etag), [0])), "bucket"),
    (lambda d, m: warm_body((ObjectMeta("bkt", "", m.size, m.etag), [0])), "key"),
    (lambda d, m: warm_body((ObjectMeta("bkt", "m", -5, m.etag), [0])), "size -5"),
    (lambda d, m: {**d, "objects": [{**d["objects"][0], "size": "1"}]}, "'size' must be int"),
    (lambda d, m: {**d, "objects": [{**d["objects"][0], "last_modified": float("nan")}]},
     "last_modified"),
])
async def test_bad_warm_requests_get_400_with_a_reason(node: Node, change: Any,
                                                       reason: str) -> None:
    meta = await node.put("m", blob(3 * BS))
    body = change(warm_body((meta, [0])), meta)
    status, doc = await node.post("/_warm", body)
    assert status == 400, doc
    assert doc["error"] == "BadRequest"
    assert reason in doc["reason"]
    assert node.gets() == 0 and not node.origin.heads


@pytest.mark.asyncio
async def test_oversized_warm_body_gets_413(node: Node) -> None:
    status, doc = await node.post("/_warm", b" " * (warm.MAX_BODY_BYTES + 1))
    assert status == 413 and doc["error"] == "PayloadTooLarge"
    assert str(warm.MAX_BODY_BYTES) in doc["reason"]


@pytest.mark.asyncio
@pytest.mark.parametrize("wrong", [1, 5, BS + 7])
async def test_a_warm_with_a_wrong_size_is_refused_and_readers_get_exact_bytes(
        node: Node, wrong: int) -> None:
    data = blob(2 * BS + 300, seed=9)
    meta = await node.put("m/v1/p.bin", data)
    doc = obj_doc(meta, [0])
    doc["size"] = wrong  # the real ETag, a wrong size: it once made a short fill readers joined
    warming = asyncio.ensure_future(node.post("/_warm", {"block_size": BS, "objects": [doc]}))
    got = await node.read("m/v1/p.bin")
    status, answer = await warming
    assert got == data
    assert status == 400 and answer["error"] == "BadRequest"
    assert f"has {meta.size} bytes" in answer["reason"] and f"not {wrong}" in answer["reason"]
    await node.node.filler.flush()
    stored = [e for e in node.node.store._index.entries()]  # type: ignore[union-attr]
    assert sorted((e.index, e.size) for e in stored) == [(0, BS), (1, BS), (2, 300)]
    assert node.metric("blockcache_corrupt_blocks_total") == 0
    assert await node.read("m/v1/p.bin") == data


@pytest.mark.asyncio
async def test_per_block_failures_do_not_fail_the_request(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    old = await node.put("changed", blob(2 * BS))
    node.origin.put("bkt", "changed", blob(2 * BS, seed=2))  # overwritten since listed
    gone = await node.put("gone", blob(BS))
    del node.origin.objects[("bkt", "gone")]
    good = await node.put("good", blob(BS, seed=3))
    results = await node.warm((old, [1]), (gone, [0]), (good, [0]))
    assert [(r["key"], r["status"], r.get("error")) for r in results] == [
        ("changed", "failed", "ObjectChanged"), ("gone", "failed", "OriginNotFound"),
        ("good", "filled", None)]
    assert "changed at origin" in results[0]["reason"]
    assert not node.stored(old, 1) and node.stored(good, 0)
    assert node.metric("blockcache_warm_blocks_total", result="failed") == 2

    async def full(ref: BlockRef, data: bytes, tenant: str = "", warmed: bool = False) -> None:
        raise StoreFull(len(data), 64 * BS)

    monkeypatch.setattr(node.node.store, "put", full)
    fresh = await node.put("fresh", blob(BS, seed=4))
    (r,) = await node.warm((fresh, [0]))
    assert (r["status"], r["error"]) == ("failed", "StoreFull")
    assert "block store full" in r["reason"]


@pytest.mark.asyncio
async def test_not_ready_node_refuses_admin_calls(node: Node) -> None:
    meta = await node.put("m", blob(BS))
    node.node.store.health.fail("disk gone")
    try:
        for path, body in (("/_warm", warm_body((meta, [0]))),
                           ("/_evict", {"bucket": "bkt", "prefix": "m"})):
            status, doc = await node.post(path, body)
            assert status == 503 and doc["error"] == "NotReady", doc
            assert "disk gone" in doc["reason"]
    finally:
        node.node.store.failed = None
    assert node.gets() == 0


@pytest.mark.asyncio
async def test_reader_leaving_mid_warm_leaves_whole_blocks_only(node: Node) -> None:
    data = blob(4 * BS)
    meta = await node.put("m", data)
    node.origin.delay_s = 0.2
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.05):
            await node.warm((meta, [0, 1, 2, 3]))
    await asyncio.sleep(0.4)
    await node.node.filler.flush()
    for i in range(4):
        p = node.path(meta, i)
        assert not p.exists() or p.read_bytes() == data[i * BS:(i + 1) * BS]
    assert not list((node.node.store.root / "tmp").iterdir())
    results = await node.warm((meta, [0, 1, 2, 3]))
    assert all(r["status"] in ("present", "filled") for r in results)
    assert node.gets() == 4  # the fills begun for the reader that left were kept


@pytest.mark.asyncio
async def test_evict_prefix_removes_only_that_prefix(node: Node) -> None:
    sizes = {"m/v1/a.bin": 2 * BS + 5, "m/v1/sub/b.bin": BS, "m/v10/c.bin": BS,
             "m/v2/a.bin": 3 * BS, "m/v1": BS}
    metas = {k: await node.put(k, blob(s, seed=len(k))) for k, s in sizes.items()}
    other = await node.put("m/v1/a.bin", blob(BS), bucket="bkt2")
    old_v1 = metas["m/v1/a.bin"]
    for meta in [*metas.values(), other]:
        await node.warm((meta, list(range((meta.size + BS - 1) // BS))))
    new_v1 = await node.put("m/v1/a.bin", blob(BS, seed=9))  # a second version, also stored
    await node.warm((new_v1, [0]))
    assert await node.read("m/v1/sub/b.bin")  # metadata now cached
    heads = sum(node.origin.heads.values())
    used = node.node.store.used_bytes
    gets = node.gets()

    status, doc = await node.post("/_evict", {"bucket": "bkt", "prefix": "m/v1/"})
    assert status == 200, doc
    gone = 2 * BS + 5 + BS + BS  # both versions of a.bin, and sub/b.bin
    assert doc == {"node": "node-a", "blocks": 3 + 1 + 1, "bytes": gone}
    assert node.node.store.used_bytes == used - gone
    assert not any(node.stored(old_v1, i) for i in range(3))
    assert not node.stored(new_v1, 0) and not node.stored(metas["m/v1/sub/b.bin"], 0)
    assert not node.path(old_v1, 0).exists()
    for key in ("m/v10/c.bin", "m/v2/a.bin", "m/v1"):
        assert node.stored(metas[key], 0), key
    assert node.stored(other, 0)
    assert node.metric("blockcache_evict_prefix_blocks_total") == 5
    assert node.metric("blockcache_evict_prefix_bytes_total") == gone
    assert node.metric("blockcache_store_bytes") == used - gone

    status, doc = await node.post("/_evict", {"bucket": "bkt", "prefix": "m/v1/"})
    assert (status, doc) == (200, {"node": "node-a", "blocks": 0, "bytes": 0})
    assert await node.read("m/v1/sub/b.bin") == blob(BS, seed=len("m/v1/sub/b.bin"))
    assert node.gets() == gets + 1  # evicted: filled again
    assert sum(node.origin.heads.values()) == heads + 1  # its metadata was forgotten too


@pytest.mark.asyncio
async def test_evict_yields_to_the_loop_between_slices(node: Node,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    meta = await node.put("m/big", blob(12 * BS))
    await node.warm((meta, list(range(12))))
    monkeypatch.setattr(warm, "EVICT_SLICE_BLOCKS", 2)
    admin = Admin("x", node.node.service, node.node.store, node.node.metrics)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    before = ticks
    assert await admin.evict_prefix("bkt", "m/") == (12, 12 * BS)
    t.cancel()
    assert ticks - before >= 5  # other tasks ran between the six slices
    assert node.node.store.block_count == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "reason"), [
    ({"bucket": "bkt", "prefix": ""}, "prefix must not be empty"),
    ({"bucket": "bkt"}, "missing field 'prefix'"),
    ({"prefix": "m/"}, "missing field 'bucket'"),
    ({"bucket": "b/..", "prefix": "m/"}, "invalid bucket"),
    ({"bucket": "bkt", "prefix": "m\x00"}, "NUL"),
    ({"bucket": "bkt", "prefix": 5}, "'prefix' must be str"),
    (b"nope", "not valid JSON"),
])
async def test_bad_evict_requests_get_400(node: Node, body: Any, reason: str) -> None:
    meta = await node.put("m/a", blob(BS))
    await node.warm((meta, [0]))
    status, doc = await node.post("/_evict", body)
    assert status == 400 and doc["error"] == "BadRequest", doc
    assert reason in doc["reason"]
    assert node.stored(meta, 0)
