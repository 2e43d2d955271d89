"""A cachenode process whose origin accepts requests but never answers them (a hung S3)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.nodeproc import NodeProcess
from tests.s3proxy import CountingProxy
from tests.servers import SeaweedFS

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB
TTL_S = 1.0  # --metadata-ttl; also how long the node holds the origin as down after a timeout


@pytest.fixture
def node(tmp_path: Path, proxy: CountingProxy, s3: SeaweedFS) -> Iterator[NodeProcess]:
    """Start a node with short origin timeouts, its origin the counting proxy."""
    n = NodeProcess(tmp_path / "node", {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                    "--capacity", "1GiB", "--origin-read-timeout", "1s",
                    "--origin-connect-timeout", "1s", "--metadata-ttl", f"{TTL_S:g}s",
                    "--fill-timeout", "3s")
    n.start()
    yield n
    proxy.hang(False)  # a failed test must not leave the node's shutdown waiting on the origin
    n.stop()


def timed_get(node: NodeProcess, path: str, headers: Mapping[str, str], budget_s: float
              ) -> tuple[int, dict[str, str], bytes, float]:
    """GET and return (status, headers, body, seconds); fail if no answer in 10x the budget."""
    t0 = time.monotonic()
    try:
        status, got_headers, body = node.get(path, headers, timeout_s=max(10 * budget_s, 10.0))
    except OSError as e:
        pytest.fail(f"GET {path} {dict(headers)}: no answer after "
                    f"{time.monotonic() - t0:.2f}s (budget {budget_s:g}s): {e!r}")
    return status, got_headers, body, time.monotonic() - t0


def test_hung_origin_serves_hits_fails_misses_in_bounded_time(
        node: NodeProcess, proxy: CountingProxy, s3: SeaweedFS, bucket: str) -> None:
    body = random.Random(12).randbytes(3 * BS)
    key = "hang.bin"
    path = f"/{bucket}/{key}"
    s3.put_object(bucket, key, body)
    cached = {"Range": f"bytes=0-{2 * BS - 1}"}
    uncached = {"Range": f"bytes={2 * BS}-{3 * BS - 1}"}
    status, _, got = node.get(path, cached)
    assert status == 206 and got == body[:2 * BS]
    deadline = time.monotonic() + 10
    while node.blocks_on_disk() < 2 * BS:  # written behind the response
        assert time.monotonic() < deadline, f"blocks never reached disk: {node.blocks_on_disk()}"
        time.sleep(0.02)

    proxy.hang()
    proxy.reset()
    time.sleep(TTL_S + 0.2)  # the metadata has expired: serving a hit needs the origin first

    # (a) Hits: the HEAD hangs until the read timeout, then the last known metadata serves.
    status, headers, got, took = timed_get(node, path, cached, 4.0)
    assert status == 206 and took < 4.0, (status, f"{took:.2f}s", got[:300])
    assert headers["content-range"] == f"bytes 0-{2 * BS - 1}/{3 * BS}"
    assert got == body[:2 * BS]
    assert proxy.requests[("HEAD", path)] >= 1, f"the hung origin saw no HEAD: {proxy.requests}"
    status, _, got, took = timed_get(node, path, cached, 0.5)
    assert status == 206 and took < 0.5, (status, f"{took:.2f}s", got[:300])
    assert got == body[:2 * BS]

    # (b) Misses: the first meets the hung origin and times out; the next fails at once.
    time.sleep(TTL_S + 0.2)  # (a)'s timeout no longer holds the origin down
    for budget_s in (4.0, 0.5):
        status, headers, got, took = timed_get(node, path, uncached, budget_s)
        assert status in (502, 503) and took < budget_s, (status, f"{took:.2f}s", got[:300])
        try:
            reason = json.loads(got).get("reason")
        except ValueError:
            reason = None
        assert isinstance(reason, str) and reason, (status, headers, got[:300])

    # (c) The origin answers again: after the hold, the miss is filled and served whole.
    proxy.hang(False)
    time.sleep(TTL_S + 0.2)
    status, headers, got, took = timed_get(node, path, uncached, 10.0)
    assert status == 206, (status, f"{took:.2f}s", got[:300])
    assert headers["content-range"] == f"bytes {2 * BS}-{3 * BS - 1}/{3 * BS}"
    assert got == body[2 * BS:]
