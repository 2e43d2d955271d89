"""No request and no damaged disk makes a node process serve wrong bytes (real SeaweedFS).

Two findings of an outside probe, injected as they were found: a `/_warm` with the real ETag
and a wrong size once started a short fill that real readers joined (wrong bytes, then a
hang), and a block file damaged on disk (size kept) reached every plain HTTP reader.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachenode.blocks import block_id
from tests.integration.test_node_s3 import pattern
from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.integration
MiB = 2**20
BS = MiB


@pytest.fixture
def node(tmp_path: Path, proxy, s3) -> Iterator[NodeProcess]:  # type: ignore[no-untyped-def]
    n = NodeProcess(tmp_path / "node", {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                    "--capacity", "256MiB", "--block-size", "1MiB", "--node-id", "w0")
    n.start()
    yield n
    n.stop()


def post(n: NodeProcess, path: str, doc: object) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", n.http_port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(doc),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def stored_sizes(n: NodeProcess) -> list[int]:
    return sorted(p.stat().st_size for p in (n.data_dir / "blocks").rglob("*") if p.is_file())


@pytest.mark.parametrize("delay_s", [0.0, 0.002, 0.01, 0.05])
def test_a_warm_with_a_wrong_size_never_reaches_a_reader(node: NodeProcess, s3, bucket,  # type: ignore[no-untyped-def]
                                                          proxy, delay_s: float) -> None:
    data = pattern(3 * BS + 777, seed=5)
    s3.put_object(bucket, "m/x.bin", data)
    etag = s3.client.head_object(Bucket=bucket, Key="m/x.bin")["ETag"]
    poison = {"block_size": BS, "objects": [{"bucket": bucket, "key": "m/x.bin", "etag": etag,
                                             "size": 5, "indices": [0]}]}
    answers: list[tuple[int, dict[str, object]]] = []
    warm = threading.Thread(target=lambda: answers.append(post(node, "/_warm", poison)))
    warm.start()
    time.sleep(delay_s)
    t0 = time.monotonic()
    status, _, body = node.get(f"/{bucket}/m/x.bin", timeout_s=20)
    took = time.monotonic() - t0
    warm.join(20)
    assert status == 200 and body == data and took < 10
    ((wstatus, doc),) = answers
    assert wstatus == 400 and doc["error"] == "BadRequest", doc
    assert f"has {len(data)} bytes" in str(doc["reason"]) and "not 5" in str(doc["reason"])
    deadline = time.monotonic() + 5
    while len(stored_sizes(node)) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stored_sizes(node) == [777, BS, BS, BS]  # no short block stayed behind
    status, _, body = node.get(f"/{bucket}/m/x.bin", {"Range": "bytes=0-99"})
    assert status == 206 and body == data[:100]
    assert node.metric("blockcache_corrupt_blocks_total") == 0


@pytest.mark.parametrize(("rng", "lo", "hi"), [
    (None, 0, 3 * BS - 1),  # the whole object
    (f"bytes={BS}-{2 * BS - 1}", BS, 2 * BS - 1),  # exactly the damaged block
    (f"bytes={BS + 4000}-{BS + 4031}", BS + 4000, BS + 4031),  # a sub-range over the damage
])
def test_a_block_damaged_on_disk_never_reaches_a_plain_reader(node: NodeProcess, s3, bucket,  # type: ignore[no-untyped-def]
                                                               proxy, rng: str | None,
                                                               lo: int, hi: int) -> None:
    data = pattern(3 * BS, seed=6)
    s3.put_object(bucket, "d.bin", data)
    assert node.get(f"/{bucket}/d.bin")[2] == data
    etag = node.get(f"/{bucket}/d.bin", method="HEAD")[1]["etag"]
    path = node.data_dir / "blocks"
    bid = block_id(bucket, "d.bin", etag, len(data), 1, BS)
    files = list(path.rglob(bid))
    assert len(files) == 1
    with open(files[0], "r+b") as f:  # 16 bytes overwritten, size kept (as a torn write)
        f.seek(4000)
        f.write(b"\x00" * 16)
    gets = proxy.range_gets.copy()
    status, headers, body = node.get(f"/{bucket}/d.bin", {"Range": rng} if rng else None)
    assert status == (206 if rng else 200)
    assert body == data[lo:hi + 1]  # what plain HTTP (curl, fsspec, boto3) gets is exact
    assert node.metric("blockcache_corrupt_blocks_total") == 1
    assert sum((proxy.range_gets - gets).values()) == 1  # dropped and filled again, once
    deadline = time.monotonic() + 5
    while not files[0].exists() or files[0].read_bytes() != data[BS:2 * BS]:
        # (the reader may have its bytes before the refilled block's file is written)
        assert time.monotonic() < deadline, "the damaged block was not replaced"
        time.sleep(0.02)
