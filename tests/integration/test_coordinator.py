"""The coordinator against real etcd + SeaweedFS (through a counting proxy) + node processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import CacheClient
from tests.cluster import LocalGroup
from tests.coordproc import CoordinatorProcess
from tests.integration.test_node_s3 import pattern

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB
CACHECTL = str(Path(sys.executable).parent / "cachectl")


def coordinator(tmp_path: Path, s3, etcd, group: LocalGroup, replica: str,  # type: ignore[no-untyped-def]
                *args: str) -> CoordinatorProcess:
    """Start a coordinator replica for the group's cluster (it lists SeaweedFS directly)."""
    return CoordinatorProcess(tmp_path, s3.env(), etcd.endpoint, group.cluster, replica,
                              *args).start()


@pytest.fixture
def coord(tmp_path: Path, s3, etcd, group: LocalGroup) -> Iterator[CoordinatorProcess]:  # type: ignore[no-untyped-def]
    c = coordinator(tmp_path, s3, etcd, group, "c1")
    try:
        c.wait_leader()
        yield c
    finally:
        c.stop()


def upload(s3, bucket: str, prefix: str, sizes: dict[str, int], seed: int = 0) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    out = {}
    for i, (name, size) in enumerate(sorted(sizes.items())):
        out[prefix + name] = data = pattern(size, seed * 100 + i)
        s3.put_object(bucket, prefix + name, data)
    return out


def gets(proxy) -> int:  # type: ignore[no-untyped-def]
    """Return the ranged GETs the origin has seen (block fills)."""
    return sum(proxy.range_gets.values())


def read_all(group: LocalGroup, bucket: str, files: dict[str, bytes]) -> None:
    async def go() -> None:
        async with CacheClient(group.seeds, concurrency=4) as c:
            for key, data in files.items():
                info = await c.stat(bucket, key)
                assert await c.read_range(info) == data, key

    asyncio.run(go())


def warm(coord: CoordinatorProcess, prefix: str, sites: list[str] | None = None,
         **extra: object) -> dict[str, object]:
    status, body = coord.call("POST", "/v1/jobs", {"prefix": prefix, "sites": sites or ["s1"],
                                                   **extra})
    assert status == 201, body
    return body["job"]  # type: ignore[no-any-return]


def blocks_of(files: dict[str, bytes]) -> int:
    return sum((len(d) + BS - 1) // BS for d in files.values())


def test_a_warmed_prefix_reads_with_zero_origin_gets_and_a_rerun_reads_nothing(
        group: LocalGroup, coord: CoordinatorProcess, s3, bucket: str, proxy) -> None:  # type: ignore[no-untyped-def]
    files = upload(s3, bucket, "org/llm/v1/", {"a.safetensors": 3 * BS + 77,
                                               "b.safetensors": 2 * BS, "config.json": 321,
                                               "empty.txt": 0})
    n = blocks_of(files)
    proxy.reset()
    job = coord.wait_job(warm(coord, f"s3://{bucket}/org/llm/v1/")["id"])
    p = job["progress"]
    assert job["state"] == "complete", job
    assert (p["blocks_total"], p["blocks_done"], p["blocks_failed"]) == (n, n, 0)
    assert (p["origin_fills"], p["present"], p["objects"]) == (n, 0, 4)
    assert p["bytes_done"] == p["bytes_total"] == sum(map(len, files.values()))
    assert gets(proxy) == n  # every block fetched from origin exactly once
    assert max(proxy.range_gets.values()) == 1
    assert (job["model"], job["version"]) == (f"{bucket}/org/llm", "v1")

    proxy.reset()
    read_all(group, bucket, files)
    assert gets(proxy) == 0  # everything was on its owner
    assert group.metric("blockcache_handoffs_total", result="hit") == 0  # formed together:
    assert group.metric("blockcache_handoffs_total", result="miss") == 0  # no one was asked

    again = coord.wait_job(warm(coord, f"s3://{bucket}/org/llm/v1", verify=True)["id"])
    assert again["state"] == "complete"
    assert (again["progress"]["origin_fills"], again["progress"]["present"]) == (0, n)
    assert gets(proxy) == 0  # a rerun (with --verify) reads nothing from origin

    _, models = coord.call("GET", "/v1/models?site=s1")
    [v] = models["versions"]
    assert (v["state"], v["bytes"], v["objects"], v["version"]) == (
        "ready", sum(map(len, files.values())), 4, "v1")
    _, jobs = coord.call("GET", "/v1/jobs")
    assert [j["id"] for j in jobs["jobs"]] == [again["id"], job["id"]]
    assert "blockcache_coordinator_warm_blocks" in coord.call("GET", "/metrics")[1].decode()


def test_bad_warmups_get_a_clear_error_and_change_nothing(
        group: LocalGroup, coord: CoordinatorProcess, s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    upload(s3, bucket, "m/v1/", {"x": 10})
    cases = [
        ({"prefix": f"s3://{bucket}/m/nothing/", "sites": ["s1"]}, 404, "no objects under"),
        ({"prefix": "s3://no-such-bucket-here/m/v1/", "sites": ["s1"]}, 404, "does not exist"),
        ({"prefix": f"s3://{bucket}/m/v1/", "sites": ["mars"]}, 400, "site 'mars' has no cache"),
        ({"prefix": f"s3://{bucket}/m/v1/", "sites": []}, 400, "site"),
        ({"prefix": f"s3://{bucket}/m/v1/", "sites": ["s1"], "pattern": "{model}"}, 400,
         "needs {model} and {version}"),
        ({"prefix": f"s3://{bucket}/m/v1/", "sites": ["s1"], "pattern": "{model}/{version}/x"},
         400, "does not split"),
        ({"prefix": f"s3://{bucket}/m/v1/", "sites": ["s1"], "pattern": 7}, 400, "string"),
        ({"prefix": f"{bucket}/m/v1/", "sites": ["s1"]}, 400, "is not s3://"),
        ({"prefix": f"s3://{bucket}/m/v1/", "sites": ["s1"], "verify": "no"}, 400, "verify"),
    ]
    for body, status, reason in cases:
        got, answer = coord.call("POST", "/v1/jobs", body)
        assert (got, reason in answer["reason"]) == (status, True), (body, answer)
    assert coord.call("POST", "/v1/jobs", b"[1]")[0] == 400
    assert coord.call("POST", "/v1/jobs", b"[" * 60000)[0] == 400
    assert coord.call("GET", "/v1/jobs")[1] == {"jobs": []}
    assert coord.call("GET", "/v1/models")[1] == {"versions": []}
    assert coord.call("GET", "/v1/jobs/w-nope")[0] == 404


def test_a_killed_leader_is_replaced_and_the_job_finishes_without_refetching(
        tmp_path: Path, group: LocalGroup, s3, etcd, bucket: str, proxy) -> None:  # type: ignore[no-untyped-def]
    files = upload(s3, bucket, "big/v1/", {f"shard-{i}": 6 * BS for i in range(4)})
    n = blocks_of(files)
    slow = ("--batch-blocks", "1", "--site-inflight-blocks", "1", "--site-origin-rate", "12MiB")
    c1 = coordinator(tmp_path, s3, etcd, group, "c1", *slow)
    c2 = None
    try:
        c1.wait_leader()
        c2 = coordinator(tmp_path, s3, etcd, group, "c2", *slow)
        assert not c2.leading()
        proxy.reset()
        job_id = warm(c2, f"s3://{bucket}/big/v1/")["id"]  # any replica takes requests
        deadline = time.monotonic() + 60
        while c1.job(job_id)["progress"]["blocks_done"] < 4:
            assert time.monotonic() < deadline, c1.job(job_id)
            time.sleep(0.05)
        assert c1.job(job_id)["state"] == "running"  # the rate cap keeps it going ~8 s
        c1.kill9()
        c2.wait_leader(timeout_s=15)
        job = c2.wait_job(job_id)
        assert job["state"] == "complete", job
        assert (job["runs"], job["leader"]) == (2, "c2")
        assert job["progress"]["blocks_done"] == n
        # a block's origin GET is never repeated, except by a retry the job counts
        assert gets(proxy) <= n + job["progress"]["retries"]
        if job["progress"]["retries"] == 0:
            assert max(proxy.range_gets.values()) == 1
        proxy.reset()
        read_all(group, bucket, files)
        assert gets(proxy) == 0
    finally:
        c1.stop()
        if c2 is not None:
            c2.stop()


def test_a_node_killed_mid_warmup_leaves_its_blocks_to_the_new_owners(
        tmp_path: Path, group: LocalGroup, s3, etcd, bucket: str, proxy) -> None:  # type: ignore[no-untyped-def]
    files = upload(s3, bucket, "nd/v1/", {f"shard-{i}": 5 * BS for i in range(4)})
    n = blocks_of(files)
    c = coordinator(tmp_path, s3, etcd, group, "c1", "--batch-blocks", "1",
                    "--site-inflight-blocks", "2", "--site-origin-rate", "8MiB")
    try:
        c.wait_leader()
        job_id = warm(c, f"s3://{bucket}/nd/v1/")["id"]
        deadline = time.monotonic() + 60
        while c.job(job_id)["progress"]["blocks_done"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        group.nodes[2].kill9()
        assert c.job(job_id)["state"] == "running"  # the rate cap keeps it going ~10 s
        job = c.wait_job(job_id)
        assert job["state"] == "complete", job
        p = job["progress"]
        assert p["blocks_done"] == p["origin_fills"] + p["present"] == n
        group.wait_view(2)
        proxy.reset()
        read_all(group, bucket, files)
        assert gets(proxy) == 0  # every block sits on its owner among the two left
    finally:
        c.stop()


def test_keep_two_evicts_the_oldest_version_and_a_pinned_one_stays(
        group: LocalGroup, coord: CoordinatorProcess, s3, bucket: str, proxy) -> None:  # type: ignore[no-untyped-def]
    versions = {v: upload(s3, bucket, f"llm/{v}/", {"w.bin": 2 * BS + 1}, seed=i)
                for i, v in enumerate(("v1", "v2", "v3"))}
    pinned = upload(s3, bucket, "other/p1/", {"w.bin": BS}, seed=9)
    assert coord.wait_job(warm(coord, f"s3://{bucket}/other/p1/")["id"])["state"] == "complete"
    status, body = coord.call("POST", "/v1/pin", {"prefix": f"s3://{bucket}/other/p1/",
                                                  "site": "s1"})
    assert status == 200 and body["version"]["pinned"] is True
    for v in ("v1", "v2", "v3"):
        assert coord.wait_job(warm(coord, f"s3://{bucket}/llm/{v}/")["id"])["state"] == \
            "complete"
    for v in ("p2", "p3"):  # newer versions of the pinned model
        upload(s3, bucket, f"other/{v}/", {"w.bin": 100}, seed=10)
        assert coord.wait_job(warm(coord, f"s3://{bucket}/other/{v}/")["id"])["state"] == \
            "complete"
    deadline = time.monotonic() + 30
    while True:
        states = {(v["model"].split("/")[-1], v["version"]): v["state"]
                  for v in coord.call("GET", "/v1/models?site=s1")[1]["versions"]}
        if states[("llm", "v1")] == "evicted":
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    assert states == {("llm", "v1"): "evicted", ("llm", "v2"): "ready", ("llm", "v3"): "ready",
                      ("other", "p1"): "ready", ("other", "p2"): "ready",
                      ("other", "p3"): "ready"}
    assert group.metric("blockcache_evict_prefix_bytes_total") == 2 * BS + 1
    proxy.reset()
    read_all(group, bucket, {**versions["v2"], **versions["v3"], **pinned})
    assert gets(proxy) == 0  # the kept and the pinned versions are still hits
    read_all(group, bucket, versions["v1"])
    assert gets(proxy) == 3  # v1's blocks had left the disks

    # by hand: evict v3 (a pinned version is refused until unpinned; a prefix that is no
    # version is refused with the versions under it)
    assert coord.call("POST", "/v1/evict", {"prefix": f"s3://{bucket}/other/p1/",
                                            "site": "s1"})[0] == 409
    status, body = coord.call("POST", "/v1/evict", {"prefix": f"s3://{bucket}/llm/",
                                                    "site": "s1"})
    assert status == 404 and body["versions"] == [
        f"s3://{bucket}/llm/{v}/" for v in ("v1", "v2", "v3")], body
    assert coord.call("POST", "/v1/evict", {"prefix": f"s3://{bucket}/llm/v3/",
                                            "site": "s1"})[0] == 202
    deadline = time.monotonic() + 30
    while not any(v["version"] == "v3" and v["state"] == "evicted"
                  for v in coord.call("GET", "/v1/models?site=s1")[1]["versions"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proxy.reset()
    read_all(group, bucket, versions["v3"])
    assert gets(proxy) == 3


def cachectl(coord: CoordinatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CACHECTL, "--coordinator", coord.url, *args], capture_output=True,
                          text=True, timeout=120)


def test_cachectl_drives_the_real_coordinator(
        tmp_path: Path, group: LocalGroup, s3, etcd, bucket: str) -> None:  # type: ignore[no-untyped-def]
    upload(s3, bucket, "tool/v1/", {"w.bin": 2 * BS})
    upload(s3, bucket, "slow/v1/", {f"w{i}.bin": 4 * BS for i in range(3)})
    coord = coordinator(tmp_path, s3, etcd, group, "c1", "--site-origin-rate", "4MiB",
                        "--batch-blocks", "1", "--site-inflight-blocks", "1")
    try:
        coord.wait_leader()
        r = cachectl(coord, "warmup", f"s3://{bucket}/tool/v1/", "--site", "s1", "--wait",
                     "--json")
        assert r.returncode == 0, r.stderr
        job = json.loads(r.stdout)["job"]
        assert (job["state"], job["progress"]["blocks_done"]) == ("complete", 2)
        assert job["id"] in cachectl(coord, "jobs").stdout
        r = cachectl(coord, "job", "cancel", job["id"])
        assert r.returncode == 1 and "already ended (complete)" in r.stderr
        assert cachectl(coord, "pin", f"s3://{bucket}/tool/v1/", "--site", "s1").returncode == 0
        models = json.loads(cachectl(coord, "models", "--site", "s1", "--json").stdout)
        assert [(v["version"], v["state"], v["pinned"]) for v in models["versions"]] == [
            ("v1", "ready", True)]
        assert cachectl(coord, "policy", "--site", "s1", "--keep", "3").returncode == 0
        assert json.loads(cachectl(coord, "policy", "--site", "s1", "--json").stdout)[
            "keep"] == 3
        r = cachectl(coord, "warmup", f"s3://{bucket}/none/", "--site", "s1")
        assert r.returncode == 1 and "no objects under" in r.stderr, r.stderr

        # a cancelled job stops, says so, and its version is not ready
        r = cachectl(coord, "warmup", f"s3://{bucket}/slow/v1/", "--site", "s1")
        slow_id = r.stdout.split()[0]
        deadline = time.monotonic() + 30
        while coord.job(slow_id)["progress"]["blocks_done"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert cachectl(coord, "job", "cancel", slow_id).returncode == 0
        job = coord.wait_job(slow_id, timeout_s=30)
        assert job["state"] == "cancelled"
        assert job["progress"]["blocks_done"] < 12
        versions = {v["version"]: v["state"] for v in coord.call(
            "GET", "/v1/models?site=s1")[1]["versions"] if v["model"].endswith("slow")}
        assert versions == {"v1": "cancelled"}
    finally:
        coord.stop()


def etcd_state(etcd, cluster: str) -> dict[str, tuple[bytes, int]]:  # type: ignore[no-untyped-def]
    """Return the cluster's etcd keys but its nodes' (value, mod revision)."""
    import aetcd

    async def go() -> dict[str, tuple[bytes, int]]:
        host, port = etcd.endpoint.split("://")[1].split(":")
        async with aetcd.Client(host, int(port)) as c:
            got = await c.get_prefix(f"/blockcache/{cluster}/".encode())
            return {kv.key.decode(): (bytes(kv.value), kv.mod_revision) for kv in got.kvs
                    if b"/sites/" not in kv.key}

    return asyncio.run(go())


def test_no_traps_in_model_and_version_bookkeeping(
        tmp_path: Path, group: LocalGroup, s3, etcd, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """A dry run writes nothing; a model's root is refused with the versions under it
    (unless a pattern is given); a version recorded by mistake can be forgotten; the policy
    of a site without nodes says so."""
    upload(s3, bucket, "tiny-llm/v1/", {"config.json": 100, "w.bin": BS + 5})
    upload(s3, bucket, "tiny-llm/v2/", {"config.json": 100, "w.bin": 2 * BS})
    coord = coordinator(tmp_path, s3, etcd, group, "c1")
    try:
        coord.wait_leader()
        before = etcd_state(etcd, group.cluster)
        r = cachectl(coord, "warmup", f"s3://{bucket}/tiny-llm/v2/", "--site", "s1",
                     "--dry-run")
        assert r.returncode == 0, r.stderr
        assert f"model     {bucket}/tiny-llm" in r.stdout and "version   v2" in r.stdout
        assert "objects   2 (8.0 MiB)" in r.stdout and "nothing was recorded" in r.stdout
        plan = json.loads(cachectl(coord, "warmup", f"s3://{bucket}/tiny-llm/v2/", "--site",
                                   "s1", "--dry-run", "--json").stdout)["dry_run"]
        assert plan["sites"]["s1"] == {"nodes": 3, "block_size": BS, "blocks": 3,
                                       "bytes": 2 * BS + 100}
        assert etcd_state(etcd, group.cluster) == before  # nothing written
        assert coord.call("GET", "/v1/jobs")[1]["jobs"] == []

        r = cachectl(coord, "warmup", f"s3://{bucket}/tiny-llm/", "--site", "s1")
        assert r.returncode == 1, r.stdout
        assert "it is a model, not one of its versions" in r.stderr, r.stderr
        assert f"s3://{bucket}/tiny-llm/v2/" in r.stderr and "--pattern" in r.stderr
        assert etcd_state(etcd, group.cluster) == before

        # Said on purpose (a pattern), it is warmed as asked, and can then be forgotten.
        r = cachectl(coord, "warmup", f"s3://{bucket}/tiny-llm/", "--site", "s1", "--pattern",
                     "{model}/{version}", "--wait")
        assert r.returncode == 0, r.stderr
        versions = json.loads(cachectl(coord, "models", "--json").stdout)["versions"]
        assert [(v["model"], v["version"], v["state"]) for v in versions] == [
            (bucket, "tiny-llm", "ready")]
        r = cachectl(coord, "models", "forget", f"s3://{bucket}/tiny-llm/", "--site", "s1")
        assert r.returncode == 0, r.stderr
        assert "forgot" in r.stdout and "blocks stay" in r.stdout
        assert json.loads(cachectl(coord, "models", "--json").stdout)["versions"] == []
        r = cachectl(coord, "models", "forget", f"s3://{bucket}/tiny-llm/", "--site", "s1")
        assert r.returncode == 1 and "has no version at" in r.stderr

        r = cachectl(coord, "policy", "--site", "nowhere")
        assert r.returncode == 0, r.stderr
        assert "site 'nowhere' has no cache nodes registered" in r.stdout
        assert "sites with nodes: s1" in r.stdout
        assert json.loads(cachectl(coord, "policy", "--site", "s1", "--json").stdout)[
            "nodes"] == 3
    finally:
        coord.stop()


def test_one_job_warms_two_sites_each_on_its_own_ring(
        tmp_path: Path, group: LocalGroup, s3, etcd, bucket: str, proxy) -> None:  # type: ignore[no-untyped-def]
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
    with LocalGroup(tmp_path / "fra", env, etcd.endpoint, 2, "--capacity", "1GiB",
                    cluster=group.cluster, site="fra") as fra:
        files = upload(s3, bucket, "two/v1/", {"a.bin": 5 * BS, "b.bin": 3 * BS + 9})
        n = blocks_of(files)
        c = coordinator(tmp_path, s3, etcd, group, "c1")
        try:
            c.wait_leader()
            proxy.reset()
            job = c.wait_job(warm(c, f"s3://{bucket}/two/v1/", ["s1", "fra"])["id"])
            assert job["state"] == "complete", job
            assert {s: p["blocks_done"] for s, p in job["sites_progress"].items()} == {
                "s1": n, "fra": n}
            assert job["progress"]["origin_fills"] == gets(proxy) == 2 * n  # once per site
            proxy.reset()
            read_all(group, bucket, files)
            read_all(fra, bucket, files)
            assert gets(proxy) == 0
            versions = c.call("GET", "/v1/models")[1]["versions"]
            assert sorted((v["site"], v["state"]) for v in versions) == [
                ("fra", "ready"), ("s1", "ready")]
        finally:
            c.stop()
