"""A cache group: real etcd + SeaweedFS (through a counting proxy) + node processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cachenode.blocks import block_id
from cachenode.ring import Ring, moved_fraction
from client import CacheClient, open_object
from client.cli_get import Tags
from tests.cluster import LocalGroup
from tests.integration.test_node_s3 import pattern, range_gets
from tests.servers import Etcd

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB
CACHECTL = str(Path(sys.executable).parent / "cachectl")


def put(s3, bucket: str, key: str, size: int, seed: int = 1) -> bytes:  # type: ignore[no-untyped-def]
    data = pattern(size, seed)
    s3.put_object(bucket, key, data)
    return data


def test_every_node_sees_the_group_and_cachectl_shows_it(group: LocalGroup) -> None:
    views = group.wait_view(3)
    assert {tuple(sorted(m["id"] for m in v["members"])) for v in views} == {("n0", "n1", "n2")}
    assert len({v["epoch"] for v in views}) == 1  # same membership revision everywhere
    out = subprocess.run([CACHECTL, "--nodes", group.seeds[0], "ring", "--json"],
                         capture_output=True, text=True, check=True).stdout
    ring = json.loads(out)
    assert [m["id"] for m in ring["members"]] == ["n0", "n1", "n2"]
    assert abs(sum(m["share"] for m in ring["members"]) - 1.0) < 1e-6
    assert all(0.2 < m["share"] < 0.47 for m in ring["members"])
    text = subprocess.run([CACHECTL, "--nodes", ",".join(group.seeds), "ring"],
                          capture_output=True, text=True, check=True).stdout
    assert "3 nodes, 3 up" in text


def test_random_ranges_exact_via_every_node_and_the_client(group: LocalGroup, s3, bucket,  # type: ignore[no-untyped-def]
                                                           proxy) -> None:
    data = put(s3, bucket, "m/model.safetensors", 40 * MiB + 123)
    rnd = random.Random(7)
    for i in range(24):
        node = group.nodes[i % 3]
        a = rnd.randrange(len(data))
        b = min(len(data) - 1, a + rnd.randrange(3 * BS))
        status, _, got = node.get(f"/{bucket}/m/model.safetensors", {"Range": f"bytes={a}-{b}"})
        assert status == 206 and got == data[a:b + 1], (i, a, b)

    async def via_client() -> None:
        async with CacheClient(group.seeds[:1], concurrency=4) as c:
            info = await c.stat(bucket, "m/model.safetensors")
            assert info.size == len(data)
            assert await c.read_range(info) == data
            for _ in range(10):
                a = rnd.randrange(len(data))
                n = rnd.randrange(1, 2 * BS)
                assert await c.read_range(info, a, n) == data[a:a + n]

    asyncio.run(via_client())
    assert range_gets(proxy, bucket, "m/model.safetensors") == 11  # one GET per block

    f = open_object(f"s3://{bucket}/m/model.safetensors", group.seeds[1:2])
    try:
        f.seek(BS - 10)
        assert f.read(20) == data[BS - 10:BS + 10]
        f.seek(-5, 2)
        assert f.read() == data[-5:]
    finally:
        f.close()


def test_64_cold_readers_over_3_nodes_make_one_origin_get_per_block(group: LocalGroup, s3,  # type: ignore[no-untyped-def]
                                                                    bucket, proxy) -> None:
    data = put(s3, bucket, "herd.bin", 100 * MiB)
    want = hashlib.sha256(data).hexdigest()
    barrier = threading.Barrier(64)

    def read(i: int) -> str:
        barrier.wait()
        status, _, got = group.nodes[i % 3].get(f"/{bucket}/herd.bin")
        assert status == 200
        return hashlib.sha256(got).hexdigest()

    with ThreadPoolExecutor(64) as pool:
        assert set(pool.map(read, range(64))) == {want}
    assert range_gets(proxy, bucket, "herd.bin") == 25
    assert group.metric("blockcache_fills_total") == 25
    assert group.metric("blockcache_peer_reads_total", result="ok") > 0
    assert group.metric("blockcache_handoffs_total", result="hit") == 0  # formed together:
    assert group.metric("blockcache_handoffs_total", result="miss") == 0  # no one was asked


def test_kill9_of_a_node_while_8_clients_read_1gib_fails_no_read(group: LocalGroup, s3,  # type: ignore[no-untyped-def]
                                                                 bucket, tmp_path: Path) -> None:
    size = 1024 * MiB
    src = tmp_path / "big.bin"
    h = hashlib.sha256()
    with open(src, "wb") as f:
        for i in range(size // (16 * MiB)):
            chunk = pattern(16 * MiB, 100 + i)
            h.update(chunk)
            f.write(chunk)
    s3.put_file(bucket, "big.bin", src)
    src.unlink()
    want = h.hexdigest()
    victim = group.nodes[1]
    progress = [0] * 8
    failovers = [0] * 8

    async def reader(i: int) -> str:
        seeds = [group.seeds[i % 3]] + group.seeds
        async with CacheClient(seeds, concurrency=4, refresh_s=1.0) as c:
            info = await c.stat(bucket, "big.bin")
            digest = hashlib.sha256()
            async for chunk in c.iter_range(info):
                digest.update(chunk)
                progress[i] += len(chunk)
            assert progress[i] == size
            failovers[i] = c.failovers
            return digest.hexdigest()

    async def main() -> list[str]:
        tasks = [asyncio.create_task(reader(i)) for i in range(8)]
        while sum(progress) < 8 * size // 4:  # a quarter read: kill a node mid-read
            await asyncio.sleep(0.05)
            assert not any(t.done() and t.exception() for t in tasks)
        victim.kill9()
        return await asyncio.gather(*tasks)

    t0 = time.monotonic()
    assert asyncio.run(main()) == [want] * 8
    assert time.monotonic() - t0 < 300
    assert sum(failovers) > 0  # some reads were on the victim when it died
    group.wait_view(2)  # the dead node's lease ran out: it left the ring


def test_a_fourth_node_takes_about_a_quarter_by_handoff(group: LocalGroup, s3, bucket,  # type: ignore[no-untyped-def]
                                                        proxy) -> None:
    data = put(s3, bucket, "warm.bin", 200 * MiB)
    assert group.nodes[0].get(f"/{bucket}/warm.bin")[2] == data
    assert range_gets(proxy, bucket, "warm.bin") == 50
    etag = group.nodes[0].get(f"/{bucket}/warm.bin", method="HEAD")[1]["etag"]
    ids = [block_id(bucket, "warm.bin", etag, len(data), i, BS) for i in range(50)]
    before = Ring({"n0": 100, "n1": 100, "n2": 100})
    after = Ring({"n0": 100, "n1": 100, "n2": 100, "n3": 100})
    moved = [b for b in ids if after.owner(b) == "n3"]
    sample = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(20000)]
    frac = moved_fraction(before, after, sample)
    print(f"owner changed for {len(moved)}/50 blocks of the object, {frac:.3f} of 20000 ids "
          "(ideal 0.25)")
    assert 0.2 < frac < 0.3
    new = group.add()
    group.wait_view(4)
    for node in group.nodes:
        assert node.get(f"/{bucket}/warm.bin")[2] == data
    assert range_gets(proxy, bucket, "warm.bin") == 50  # nothing refetched from origin
    assert new.metric("blockcache_handoffs_total", result="hit") == len(moved)


def test_etcd_down_nodes_keep_serving_and_rejoin(tmp_path: Path, proxy, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
    with Etcd(tmp_path / "etcd") as etcd, \
            LocalGroup(tmp_path, env, etcd.endpoint, 3) as g:
        data = put(s3, bucket, "e.bin", 30 * MiB)
        assert g.nodes[0].get(f"/{bucket}/e.bin")[2] == data
        etcd.stop()
        time.sleep(5)  # longer than the 4 s lease: nobody may drop the others meanwhile
        for node in g.nodes:
            assert node.get(f"/{bucket}/e.bin")[2] == data
            view = node.ring()
            assert view["etcd_healthy"] is False and len(view["members"]) == 3
        assert range_gets(proxy, bucket, "e.bin") == 8  # all hits or peer reads
        etcd.start()
        deadline = time.monotonic() + 20
        while not all(n.ring()["etcd_healthy"] for n in g.nodes):
            assert time.monotonic() < deadline, [n.ring() for n in g.nodes]
            time.sleep(0.2)
        g.wait_view(3)
        g.add()
        g.wait_view(4)


def test_cachectl_get_downloads_a_prefix_resumes_and_skips(group: LocalGroup, s3, bucket,  # type: ignore[no-untyped-def]
                                                           etcd, tmp_path: Path) -> None:
    files = {"llm/v1/config.json": put(s3, bucket, "llm/v1/config.json", 321, 1),
             "llm/v1/model-1.safetensors": put(s3, bucket, "llm/v1/model-1.safetensors",
                                               3 * BS + 17, 2),
             "llm/v1/sub/tok.json": put(s3, bucket, "llm/v1/sub/tok.json", 0, 3)}
    put(s3, bucket, "llm/v10/other.bin", 5, 4)  # shares the string prefix, not the folder
    out = tmp_path / "dl"
    # --etcd: learn the group from etcd instead of seeds
    cmd = [CACHECTL, "--etcd", etcd.endpoint, "--cluster", group.cluster, "--site", group.site,
           "get", f"s3://{bucket}/llm/v1/", str(out), "--json"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    for key, data in files.items():
        assert (out / key[len("llm/v1/"):]).read_bytes() == data
    # The model folder holds the model's files only: the resume state is kept elsewhere.
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "config.json", "model-1.safetensors", "sub/tok.json"]
    tags = Tags(out, tmp_path / "cache" / "blockcache" / "get")
    summary = json.loads(r.stdout)
    assert summary["files"] == 3 and summary["fetched_bytes"] == sum(map(len, files.values()))
    # A re-run skips complete files; a cut-short part resumes at its last whole block.
    big = out / "model-1.safetensors"
    part = big.with_name(big.name + ".part")
    big.rename(part)
    with open(part, "r+b") as f:
        f.truncate(BS + 5)
    tags.set(part, tags.get(big))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert big.read_bytes() == files["llm/v1/model-1.safetensors"]
    assert json.loads(r.stdout)["fetched_bytes"] == 2 * BS + 17
    human = subprocess.run(cmd[:-1], capture_output=True, text=True, env=env)
    assert human.returncode == 0 and human.stdout.startswith("3 files, "), human
    assert "(0 B fetched, the rest already there)" in human.stdout, human
    bad = subprocess.run([CACHECTL, "--nodes", group.seeds[0], "get", f"s3://{bucket}/nope/",
                          str(out)], capture_output=True, text=True)
    assert bad.returncode == 1 and "nothing under" in bad.stderr


def test_client_errors_are_clear(group: LocalGroup, bucket) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run([CACHECTL, "--nodes", group.seeds[2], "cat", f"s3://{bucket}/missing"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "404" in r.stderr and "no such key" in r.stderr
    r = subprocess.run([CACHECTL, "--nodes", "127.0.0.1:1", "ring"], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "no seed node answered" in r.stderr


@pytest.fixture
def slow_lease_group(tmp_path: Path, proxy, s3, etcd) -> Iterator[LocalGroup]:  # type: ignore[no-untyped-def]
    """Three nodes whose leases last 20 s, so leaving early can only be a clean leave."""
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
    with LocalGroup(tmp_path, env, etcd.endpoint, 3, "--lease-ttl", "20s") as g:
        yield g


def test_restart_keeps_ownership_and_blocks_and_shutdown_leaves_at_once(  # type: ignore[no-untyped-def]
        slow_lease_group: LocalGroup, s3, bucket, proxy) -> None:
    group = slow_lease_group
    data = put(s3, bucket, "r.bin", 40 * MiB)
    assert group.nodes[0].get(f"/{bucket}/r.bin")[2] == data
    node = group.nodes[2]
    t0 = time.monotonic()
    node.stop()  # SIGTERM: draining, then the key is deleted (no wait for the lease)
    views = group.wait_view(2)
    assert time.monotonic() - t0 < 12, "a clean shutdown must not wait for the 20 s lease"
    assert all({m["id"] for m in v["members"]} == {"n0", "n1"} for v in views)
    node.start()
    group.wait_view(3)
    for n in group.nodes:
        assert n.get(f"/{bucket}/r.bin")[2] == data
    assert range_gets(proxy, bucket, "r.bin") == 10  # n2 came back with its blocks


def test_a_node_without_etcd_fails_to_start_with_a_clear_error(tmp_path: Path, s3) -> None:  # type: ignore[no-untyped-def]
    from tests.nodeproc import NodeProcess
    from tests.servers import free_port

    node = NodeProcess(tmp_path / "n", s3.env(), "--etcd", f"http://127.0.0.1:{free_port()}",
                       "--etcd-connect-timeout", "1s")
    with pytest.raises(RuntimeError, match="cannot start: etcd at .* not reachable within 1s"):
        node.start()
    assert node.proc is not None and node.proc.wait(5) == 1


def test_a_corrupt_block_is_caught_on_its_owner_before_it_is_sent(group: LocalGroup, s3,  # type: ignore[no-untyped-def]
                                                                  bucket, proxy) -> None:
    data = put(s3, bucket, "c.bin", 2 * BS)

    async def read() -> tuple[bytes, int]:
        async with CacheClient(group.seeds, concurrency=2) as c:
            info = await c.stat(bucket, "c.bin")
            return await c.read_range(info), c.corrupt

    assert asyncio.run(read()) == (data, 0)
    etag = group.nodes[0].get(f"/{bucket}/c.bin", method="HEAD")[1]["etag"]
    bid = block_id(bucket, "c.bin", etag, len(data), 0, BS)
    files = [f for n in group.nodes for f in (n.data_dir / "blocks").rglob(bid)]
    assert len(files) == 1  # stored once, on its owner
    with open(files[0], "r+b") as f:  # bit rot: same size, other bytes
        f.seek(1000)
        f.write(b"\xff" * 16)
    got, corrupt = asyncio.run(read())
    # The owner checks the block's CRC-32C before it sends it: the client never sees the bad
    # bytes (its own check of X-Blockcache-Crc32c finds nothing), the owner refilled it once.
    assert got == data and corrupt == 0
    assert range_gets(proxy, bucket, "c.bin") == 3
    for n in group.nodes:
        n.get("/healthz")
    deadline = time.monotonic() + 5
    while files[0].read_bytes() != data[:BS]:  # the owner's copy is good again
        assert time.monotonic() < deadline, "the owner kept its corrupt block"
        time.sleep(0.05)
    assert sum(n.metric("blockcache_corrupt_blocks_total") for n in group.nodes) == 1
