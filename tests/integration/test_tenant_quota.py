"""Quotas on a 3-node group (etcd, cluster secret, access keys with tenants, SeaweedFS).

Tenant A's version is warmed (POST /_warm, signed, naming team-a) onto its owners; then B
(quota 12 MiB for the site) and a key of nobody (no quota) read cold through one node far past
what the disks hold. A's version must stay 100% resident, B must stay within its share on
every node, and the disks within their capacity.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from cachenode.auth.cluster import BODY_SHA256, HEADER, ClusterKey
from cachenode.blocks import BlockRef, ObjectMeta
from cachenode.ring import Ring
from tests.cluster import LocalGroup
from tests.integration.test_node_s3 import pattern
from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.integration
MiB = 2**20
BS = MiB
CAPACITY = 32 * MiB  # per node
B_QUOTA = 12 * MiB  # site: ~4 MiB a node
SECRET_A, SECRET_B, SECRET_C = ("secret-of-team-a-0123", "secret-of-team-b-0123",
                                "secret-of-nobody-0123")
CLUSTER = "the-cluster-secret-0123456789"


@pytest.fixture
def tenant_group(tmp_path: Path, proxy, s3, etcd, bucket: str) -> Iterator[LocalGroup]:  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    keys.write_text(f"AKIDA {SECRET_A} {bucket} tenant=team-a quota=1GiB\n"
                    f"AKIDB {SECRET_B} {bucket} tenant=team-b quota={B_QUOTA}\n"
                    f"AKIDC {SECRET_C} {bucket}\n")
    (tmp_path / "cluster").write_text(CLUSTER + "\n")
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
    with LocalGroup(tmp_path / "g", env, etcd.endpoint, 3, "--capacity", str(CAPACITY),
                    "--block-size", "1MiB", "--access-keys", str(keys),
                    "--cluster-secret-file", str(tmp_path / "cluster"),
                    "--scrub-rate", "0") as g:
        yield g


def warm(node: NodeProcess, tenant: str, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST a signed /_warm naming `tenant` to `node`; return its results."""
    body = json.dumps({"block_size": BS, "tenant": tenant, "objects": objects}).encode()
    headers = {"Content-Type": "application/json",
               BODY_SHA256: hashlib.sha256(body).hexdigest()}
    headers[HEADER] = ClusterKey(CLUSTER.encode()).sign("POST", "/_warm", "", headers,
                                                        time.time())
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=60)
    try:
        conn.request("POST", "/_warm", body=body, headers=headers)
        r = conn.getresponse()
        doc = json.loads(r.read())
        assert r.status == 200, doc
        return doc["results"]  # type: ignore[no-any-return]
    finally:
        conn.close()


def reader(node: NodeProcess, key_id: str, secret: str) -> Any:
    return boto3.client("s3", endpoint_url=node.s3_url, aws_access_key_id=key_id,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=botocore.config.Config(s3={"addressing_style": "path"},
                                                      retries={"max_attempts": 3}))


def block_file(node: NodeProcess, block_id: str) -> Path:
    return node.data_dir / "blocks" / block_id[:2] / block_id[2:4] / block_id


def test_a_herd_never_pushes_a_warmed_version_off_and_b_keeps_to_its_share(  # type: ignore[no-untyped-def]
        tenant_group: LocalGroup, s3, bucket: str) -> None:
    g = tenant_group
    a_meta: list[ObjectMeta] = []
    for i in range(6):  # A's version: 6 files of 4 blocks, ~8 blocks a node
        key = f"team-a/v1/part-{i}.bin"
        etag = s3.put_object(bucket, key, pattern(4 * BS, 100 + i))
        a_meta.append(ObjectMeta(bucket, key, 4 * BS, etag))
    herd = {f"herd/{who}/{i}.bin": pattern(3 * BS, 200 + i + (50 if who == "b" else 0))
            for who in ("b", "c") for i in range(20 if who == "b" else 24)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: s3.put_object(bucket, *kv), herd.items()))

    view = g.nodes[0].ring()
    ring = Ring({m["id"]: m["weight"] for m in view["members"]})
    shares = {m["id"]: m["share"] for m in view["members"]}
    by_id = {n.args[n.args.index("--node-id") + 1]: n for n in g.nodes}
    owned: dict[str, list[BlockRef]] = {n: [] for n in by_id}
    for meta in a_meta:
        for i in range(4):
            ref = BlockRef(meta, i, BS)
            owned[ring.owner(ref.block_id)].append(ref)
    for nid, refs in owned.items():
        objs: dict[str, dict[str, Any]] = {}
        for r in refs:
            objs.setdefault(r.obj.key, {"bucket": bucket, "key": r.obj.key,
                                        "etag": r.obj.etag, "size": r.obj.size,
                                        "indices": []})["indices"].append(r.index)
        if objs:
            results = warm(by_id[nid], "team-a", list(objs.values()))
            assert {r["status"] for r in results} == {"filled"}

    entry = g.nodes[0]
    b, c = reader(entry, "AKIDB", SECRET_B), reader(entry, "AKIDC", SECRET_C)

    def read(item: tuple[str, bytes]) -> None:
        key, data = item
        client = b if key.startswith("herd/b/") else c
        got = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert got == data, key

    with ThreadPoolExecutor(4) as pool:  # B 60 MiB (5x its quota), nobody 72 MiB, mixed
        list(pool.map(read, sorted(herd.items(), key=lambda kv: kv[0][::-1])))

    for nid, node in by_id.items():  # every block of A's version still on its owner's disk
        missing = [r for r in owned[nid] if not block_file(node, r.block_id).is_file()]
        assert not missing, f"{nid} lost {len(missing)} of A's {len(owned[nid])} blocks"
        assert node.metric("blockcache_tenant_quota_used_bytes", tenant="team-a",
                           **{"class": "warmed"}) == len(owned[nid]) * BS
        share = node.metric("blockcache_tenant_quota_limit_bytes", tenant="team-b")
        assert share == pytest.approx(B_QUOTA * shares[nid], rel=1e-5)  # /ring rounds
        held = node.metric("blockcache_tenant_quota_used_bytes", tenant="team-b")
        assert held <= share + BS, (nid, held, share)  # its share, give or take the last block
        assert node.blocks_on_disk() <= CAPACITY
    assert g.metric("blockcache_tenant_evicted_bytes_total", tenant="team-b",
                    reason="quota") >= 60 * MiB - B_QUOTA - 3 * BS
    assert g.metric("blockcache_evictions_total") > 0  # nobody's herd pressed on capacity
    assert g.metric("blockcache_tenant_evicted_bytes_total", tenant="team-a") == 0
    assert g.metric("blockcache_tenant_fills_total", tenant="team-b") >= 60
