"""POST /_warm and /_evict on a cachenode process in front of SeaweedFS (counting proxy)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachenode.blocks import block_id
from tests.integration.test_node_s3 import pattern, range_gets
from tests.nodeproc import NodeProcess
from tests.s3proxy import CountingProxy
from tests.servers import SeaweedFS

pytestmark = pytest.mark.integration
MiB = 2**20
BS = MiB


@pytest.fixture
def node(tmp_path: Path, proxy: CountingProxy, s3: SeaweedFS) -> Iterator[NodeProcess]:
    """Start a node (1 MiB blocks) whose origin is the counting proxy in front of SeaweedFS."""
    n = NodeProcess(tmp_path / "node", {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                    "--capacity", "256MiB", "--block-size", "1MiB", "--node-id", "warm-0")
    n.start()
    yield n
    n.stop()


def post(n: NodeProcess, path: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", n.http_port, timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(doc).encode(),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def listed(s3: SeaweedFS, bucket: str, key: str, indices: list[int]) -> dict[str, Any]:
    """Return a warm request's entry for an object, from the origin's HEAD (as listed)."""
    h = s3.client.head_object(Bucket=bucket, Key=key)
    return {"bucket": bucket, "key": key, "etag": h["ETag"], "size": h["ContentLength"],
            "last_modified": h["LastModified"].timestamp(), "indices": indices}


def warm(n: NodeProcess, *objects: dict[str, Any], verify: bool = False) -> list[dict[str, Any]]:
    status, doc = post(n, "/_warm", {"block_size": BS, "verify": verify,
                                     "objects": list(objects)})
    assert status == 200, doc
    assert doc["node"] == "warm-0"
    return doc["results"]  # type: ignore[no-any-return]


def test_warm_then_read_without_origin_then_evict(node: NodeProcess, proxy: CountingProxy,
                                                  s3: SeaweedFS, bucket: str) -> None:
    body = pattern(3 * MiB + 12345, 21)
    other = pattern(MiB // 2, 22)
    s3.put_object(bucket, "m/v1/model.bin", body)
    s3.put_object(bucket, "m/v2/model.bin", other)
    v1 = listed(s3, bucket, "m/v1/model.bin", [0, 1, 2, 3])
    v2 = listed(s3, bucket, "m/v2/model.bin", [0])
    proxy.reset()

    results = warm(node, v1, v2)
    assert [(r["key"], r["index"], r["status"], r["bytes"]) for r in results] == [
        ("m/v1/model.bin", 0, "filled", MiB), ("m/v1/model.bin", 1, "filled", MiB),
        ("m/v1/model.bin", 2, "filled", MiB), ("m/v1/model.bin", 3, "filled", 12345),
        ("m/v2/model.bin", 0, "filled", MiB // 2)]
    assert range_gets(proxy, bucket, "m/v1/model.bin") == 4
    assert node.metric("blockcache_warm_blocks_total", result="filled") == 5
    assert node.metric("blockcache_store_bytes") == len(body) + len(other)

    proxy.reset()
    assert [r["status"] for r in warm(node, v1, v2)] == ["present"] * 5
    assert proxy.total == 0  # present blocks cost no origin call at all

    fills = node.metric("blockcache_fills_total")
    status, _, got = node.get(f"/{bucket}/m/v1/model.bin")
    assert status == 200 and got == body
    assert range_gets(proxy, bucket, "m/v1/model.bin") == 0  # every block was a hit
    assert node.metric("blockcache_fills_total") == fills
    assert node.metric("blockcache_block_hits_total") >= 4

    # verify: a block damaged on disk is found, dropped and filled again (If-Match holds).
    bid = block_id(bucket, "m/v1/model.bin", v1["etag"], v1["size"], 2, BS)
    path = node.data_dir / "blocks" / bid[:2] / bid[2:4] / bid
    raw = bytearray(path.read_bytes())
    raw[7] ^= 0xFF
    path.write_bytes(bytes(raw))
    results = warm(node, v1, verify=True)
    assert [(r["status"], r["repaired"]) for r in results] == [
        ("present", False), ("present", False), ("filled", True), ("present", False)]
    assert range_gets(proxy, bucket, "m/v1/model.bin") == 1
    assert path.read_bytes() == body[2 * MiB:3 * MiB]

    (stale,) = warm(node, {**v1, "etag": '"0123456789abcdef0123456789abcdef"', "indices": [0]})
    assert (stale["status"], stale["error"]) == ("failed", "ObjectChanged")

    status, doc = post(node, "/_evict", {"bucket": bucket, "prefix": "m/v1/"})
    assert (status, doc) == (200, {"node": "warm-0", "blocks": 4, "bytes": len(body)})
    assert not path.exists()
    assert node.metric("blockcache_store_bytes") == len(other)
    assert node.metric("blockcache_evict_prefix_blocks_total") == 4
    assert node.metric("blockcache_evict_prefix_bytes_total") == len(body)
    status, doc = post(node, "/_evict", {"bucket": bucket, "prefix": "m/v1/"})
    assert (status, doc) == (200, {"node": "warm-0", "blocks": 0, "bytes": 0})

    proxy.reset()
    assert [r["status"] for r in warm(node, v2)] == ["present"]  # the other prefix stayed
    status, _, got = node.get(f"/{bucket}/m/v1/model.bin")
    assert status == 200 and got == body
    assert range_gets(proxy, bucket, "m/v1/model.bin") == 4  # evicted: filled again


def test_bad_warm_request_is_400(node: NodeProcess, bucket: str) -> None:
    status, doc = post(node, "/_warm", {"block_size": 4 * MiB, "objects": []})
    assert status == 400 and doc["error"] == "BadRequest"
    assert "4194304" in doc["reason"] and str(BS) in doc["reason"]
    status, doc = post(node, "/_evict", {"bucket": bucket, "prefix": ""})
    assert status == 400 and "prefix" in doc["reason"]
