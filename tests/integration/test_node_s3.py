"""A cachenode process in front of a real SeaweedFS, through a counting proxy."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.nodeproc import NodeProcess

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB


def pattern(size: int, seed: int) -> bytes:
    """Return `size` deterministic bytes that differ at every 4 MiB block and per seed."""
    unit = hashlib.sha256(f"{seed}".encode()).digest() * (MiB // 32)
    out = bytearray()
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{len(out)}".encode()).digest() + unit[: MiB - 32]
    return bytes(out[:size])


@pytest.fixture
def node(tmp_path: Path, proxy, s3) -> Iterator[NodeProcess]:  # type: ignore[no-untyped-def]
    """Start a node whose origin is the counting proxy in front of SeaweedFS."""
    n = NodeProcess(tmp_path / "node", {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                    "--capacity", "1GiB", "--metadata-ttl", "1s")
    n.start()
    yield n
    n.stop()


def range_gets(proxy, bucket: str, key: str) -> int:  # type: ignore[no-untyped-def]
    """Return how many ranged GETs of one object the origin saw."""
    return sum(n for (path, _rng), n in proxy.range_gets.items() if path == f"/{bucket}/{key}")


OBJECTS = {"empty": 0, "one": 1, "block": BS, "block_plus_one": BS + 1, "big": 100 * MiB + 7}


@pytest.fixture(scope="module")
def objects(s3) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Upload the size corner cases once per module."""
    s3.make_bucket("exact")
    data = {name: pattern(size, i) for i, (name, size) in enumerate(OBJECTS.items())}
    for name, body in data.items():
        s3.put_object("exact", f"sizes/{name}.bin", body)
    return data


def test_every_size_reads_back_whole(node: NodeProcess, objects: dict[str, bytes]) -> None:
    for name, body in objects.items():
        status, headers, got = node.get(f"/exact/sizes/{name}.bin")
        assert status == 200, (name, got[:200])
        assert got == body, name
        assert int(headers["content-length"]) == len(body)
        assert headers["accept-ranges"] == "bytes" and headers["etag"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_ranges_are_byte_exact(node: NodeProcess, objects: dict[str, bytes],
                                      data: st.DataObject) -> None:
    name = data.draw(st.sampled_from([n for n in OBJECTS if OBJECTS[n] > 0]))
    body = objects[name]
    start = data.draw(st.integers(0, len(body) - 1))
    end = data.draw(st.integers(start, min(len(body) + BS, start + 3 * BS)))
    status, headers, got = node.get(f"/exact/sizes/{name}.bin",
                                    {"Range": f"bytes={start}-{end}"})
    assert status == 206
    last = min(end, len(body) - 1)
    assert headers["content-range"] == f"bytes {start}-{last}/{len(body)}"
    assert got == body[start:last + 1]


def test_64_cold_readers_cause_one_origin_get_per_block(node: NodeProcess, proxy, s3) -> None:  # type: ignore[no-untyped-def]
    body = pattern(100 * MiB, 7)
    s3.make_bucket("herd")
    s3.put_object("herd", "model.bin", body)
    proxy.reset()
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda _: node.get("/herd/model.bin"), range(64)))
    assert all(r[0] == 200 and r[2] == body for r in results)
    assert range_gets(proxy, "herd", "model.bin") == 25
    # GETs only: with a 1 s metadata TTL a slow run re-HEADs the object any number of times.
    assert node.metric("blockcache_origin_requests_total", op="get") == 25
    assert node.metric("blockcache_fills_total") == 25


def test_reading_three_times_capacity_stays_under_it(tmp_path: Path, proxy, s3) -> None:  # type: ignore[no-untyped-def]
    body = pattern(96 * MiB + 3, 11)
    s3.make_bucket("cap")
    s3.put_object("cap", "big.bin", body)
    n = NodeProcess(tmp_path / "n", {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url},
                    "--capacity", "32MiB", "--max-concurrent-fills", "8")
    n.start()
    try:
        stop = threading.Event()
        peak = [0]

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], n.blocks_on_disk())
                time.sleep(0.01)

        t = threading.Thread(target=watch)
        t.start()
        with ThreadPoolExecutor(8) as pool:
            parts = list(pool.map(
                lambda s: n.get("/cap/big.bin", {"Range": f"bytes={s}-{s + 6 * MiB}"}),
                range(0, len(body), 6 * MiB)))
        stop.set()
        t.join()
        for i, (status, _, got) in enumerate(parts):
            assert status == 206 and got == body[i * 6 * MiB:i * 6 * MiB + 6 * MiB + 1]
        assert peak[0] <= 32 * MiB
        assert n.metric("blockcache_store_bytes") <= 32 * MiB
        assert n.metric("blockcache_evictions_total") > 0
        assert n.get("/cap/big.bin")[2] == body  # evicted blocks refill correctly
    finally:
        n.stop()


def test_restart_keeps_blocks(node: NodeProcess, proxy, s3) -> None:  # type: ignore[no-untyped-def]
    body = pattern(20 * MiB + 5, 3)
    s3.make_bucket("restart")
    s3.put_object("restart", "a.bin", body)
    assert node.get("/restart/a.bin")[2] == body
    node.stop()
    node.start()
    proxy.reset()
    assert node.get("/restart/a.bin")[2] == body
    assert range_gets(proxy, "restart", "a.bin") == 0
    assert node.metric("blockcache_block_hits_total") == 6


def test_kill9_during_fills_leaves_only_good_blocks(node: NodeProcess, proxy, s3) -> None:  # type: ignore[no-untyped-def]
    body = pattern(200 * MiB, 5)
    s3.make_bucket("crash")
    s3.put_object("crash", "a.bin", body)
    with ThreadPoolExecutor(16) as pool:
        futs = [pool.submit(node.get, "/crash/a.bin",
                            {"Range": f"bytes={s}-{s + BS - 1}"}, "GET", 30)
                for s in range(0, len(body), BS)]
        deadline = time.monotonic() + 20
        while node.metric("blockcache_store_blocks") < 1:  # kill once some are indexed
            assert time.monotonic() < deadline, "no block was stored in 20 s"
            time.sleep(0.01)
        node.kill9()
        for f in futs:
            try:
                f.result()
            except (OSError, Exception):
                pass
    stored = node.blocks_on_disk()
    assert stored < len(body), "the kill came too late to interrupt any fill"
    node.start()
    assert not any((node.data_dir / "tmp").iterdir())
    proxy.reset()
    status, _, got = node.get("/crash/a.bin")
    assert status == 200 and got == body
    assert 0 < range_gets(proxy, "crash", "a.bin") < 50


def test_overwrite_is_served_after_the_metadata_ttl(node: NodeProcess, s3) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = pattern(12 * MiB, 1), pattern(12 * MiB, 2)
    s3.make_bucket("ttl")
    s3.put_object("ttl", "w.bin", v1)
    assert node.get("/ttl/w.bin")[2] == v1  # every block cached under v1's ETag
    s3.put_object("ttl", "w.bin", v2)
    status, headers, got = node.get("/ttl/w.bin")
    assert got == v1  # within the TTL: still the pinned, complete v1
    time.sleep(1.2)
    status, headers, got = node.get("/ttl/w.bin")
    assert status == 200 and got == v2


def test_overwrite_mid_response_cuts_it_rather_than_mixing(node: NodeProcess, s3) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = pattern(12 * MiB, 3), pattern(12 * MiB, 4)
    s3.make_bucket("mix")
    s3.put_object("mix", "w.bin", v1)
    assert node.get("/mix/w.bin", {"Range": f"bytes=0-{BS - 1}"})[2] == v1[:BS]
    s3.put_object("mix", "w.bin", v2)
    # Block 0 is cached under v1, so the headers go out; block 1 can only be filled with
    # If-Match v1, which the origin refuses: the response must be cut, not stitched.
    with pytest.raises(http_client_errors()):
        node.get("/mix/w.bin")
    status, _, got = node.get("/mix/w.bin")  # the change was noticed: v2, whole
    assert status == 200 and got == v2
    assert node.metric("blockcache_origin_errors_total") >= 1


def http_client_errors() -> tuple[type[BaseException], ...]:
    """Return the errors a truncated HTTP response raises in http.client."""
    import http.client
    return (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError)


def test_origin_down_serves_hits_and_fails_misses_fast(node: NodeProcess, proxy, s3) -> None:  # type: ignore[no-untyped-def]
    body = pattern(12 * MiB, 9)
    s3.make_bucket("down")
    s3.put_object("down", "a.bin", body)
    s3.put_object("down", "b.bin", body)
    assert node.get("/down/a.bin", {"Range": f"bytes=0-{2 * BS - 1}"})[0] == 206
    node.get("/down/b.bin", method="HEAD")  # metadata cached, blocks not
    proxy.stop()
    try:
        status, _, got = node.get("/down/a.bin", {"Range": f"bytes=0-{2 * BS - 1}"})
        assert status == 206 and got == body[:2 * BS]
        t0 = time.monotonic()
        status, headers, got = node.get("/down/b.bin", {"Range": "bytes=0-99"})
        assert status in (502, 503) and b"origin unavailable" in got
        assert time.monotonic() - t0 < 2.0, "a miss must fail fast while the origin is down"
        time.sleep(1.1)  # metadata expired: hits are still served with the last known ETag
        status, _, got = node.get("/down/a.bin", {"Range": f"bytes=0-{2 * BS - 1}"})
        assert status == 206 and got == body[:2 * BS]
        t0 = time.monotonic()
        status, _, got = node.get("/down/c.bin")  # never seen: no metadata to fall back on
        assert status in (502, 503) and b"origin unavailable" in got
        assert time.monotonic() - t0 < 2.0
    finally:
        proxy.start()
    time.sleep(1.1)  # the node retries the origin at most once a second while it is down
    assert node.get("/down/b.bin")[2] == body


def raw_request(port: int, line: str) -> tuple[int, bytes]:
    """Send a hand-written request line (no client-side normalisation); return status, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{line}\r\nHost: x\r\nConnection: close\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("line,status", [
    ("GET /exact/../exact/sizes/one.bin HTTP/1.1", 400),
    ("GET /exact/sizes/../../etc/passwd HTTP/1.1", 400),
    ("GET /exact/%2e%2e/sizes/one.bin HTTP/1.1", 400),
    ("GET /exact/sizes/%2E%2E/%2E%2E/x HTTP/1.1", 400),
    ("GET /exact/" + "k" * 1100 + " HTTP/1.1", 400),
    ("GET /no-such-bucket-here/x HTTP/1.1", 404),
    ("GET /exact/no/such/key HTTP/1.1", 404),
    ("GET /ex HTTP/1.1", 400),
    ("GET /exact/%ff%fe HTTP/1.1", 400),
    ("GET /exact/sizes/%ZZ HTTP/1.1", 400),  # was sent to the origin as the key '%ZZ'
    ("GET /exact/sizes\\one.bin HTTP/1.1", 400),  # SeaweedFS reads a backslash as '/': was served
    ("GET /exact/sizes/..\\..\\x HTTP/1.1", 400),  # SeaweedFS: '..' segments, was a 502
    ("GET /exact/sizes//one.bin HTTP/1.1", 400),  # SeaweedFS: sizes/one.bin, new block ids
    ("GET /exact//sizes/one.bin HTTP/1.1", 400),
    ("GET /exact/sizes/ HTTP/1.1", 400),  # SeaweedFS: a directory, 200 with an empty body
    ("GET /exact/sizes/one.bin HTTP/2.0", 505),  # was answered as HTTP/2.0 200
])
def test_bad_paths_get_a_clear_4xx(node: NodeProcess, objects: dict[str, bytes], line: str,
                                   status: int) -> None:
    got_status, body = raw_request(node.http_port, line)
    assert got_status == status, body
    assert b'"reason"' in body
    assert node.get("/exact/sizes/one.bin")[2] == objects["one"]  # still serving


@pytest.mark.parametrize("rng", ["bytes=abc", "bytes=0-1,5-9", "bytes=9-1", "lines=0-1",
                                 "bytes=" + "9" * 40, "bytes=200000000-"])
def test_bad_ranges_get_416_with_size(node: NodeProcess, objects: dict[str, bytes],
                                      rng: str) -> None:
    status, headers, body = node.get("/exact/sizes/block.bin", {"Range": rng})
    assert status == 416, body
    assert headers["content-range"] == f"bytes */{BS}"
    assert b"reason" in body


def test_cachectl_stat_and_cat(node: NodeProcess, objects: dict[str, bytes]) -> None:
    import json
    import subprocess
    import sys
    cachectl = [str(Path(sys.executable).parent / "cachectl"), "--node", node.url]
    out = subprocess.run([*cachectl, "stat", "s3://exact/sizes/block_plus_one.bin", "--json"],
                         capture_output=True, check=True, text=True).stdout
    assert json.loads(out)["size"] == BS + 1
    line = subprocess.run([*cachectl, "stat", "s3://exact/sizes/block_plus_one.bin"],
                          capture_output=True, check=True, text=True).stdout
    assert line.startswith("s3://exact/sizes/block_plus_one.bin  4.0 MiB (4194305 bytes)  etag")
    got = subprocess.run([*cachectl, "cat", "s3://exact/sizes/block_plus_one.bin", "--range",
                          f"{BS - 2}-"], capture_output=True, check=True).stdout
    assert got == objects["block_plus_one"][BS - 2:]
    r = subprocess.run([*cachectl, "cat", "s3://exact/nope"], capture_output=True, text=True)
    assert r.returncode == 1 and "404" in r.stderr and "no such key" in r.stderr
    r = subprocess.run([*cachectl, "stat", "s3://no-such-bucket-xyz/k"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "no such bucket" in r.stderr, r.stderr
