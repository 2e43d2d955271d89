"""Faults a probe found in the coordinator, each injected against real servers.

etcd, SeaweedFS (behind the counting proxy) and the cache nodes are real processes; every
answer is awaited with a deadline, never a guessed sleep.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import LocalGroup
from tests.coordproc import CoordinatorProcess
from tests.integration.test_coordinator import (
    BS,
    CACHECTL,
    coordinator,
    gets,
    read_all,
    upload,
    warm,
)
from tests.servers import Etcd

pytestmark = pytest.mark.integration
QUICK_S = 2.0  # an answer that needs a few etcd reads on loopback comes within this
ETCD_CALL_S = 5.0  # the coordinator's deadline of one etcd call (EtcdStateStore timeout_s)
LEASE_TTL_S = 3.0  # the test coordinators' --lease-ttl (tests/coordproc.py FAST)
REGISTER_S = 15.0  # nodes whose leases lapsed are registered again: TTL 4 s + backoff + margin


@pytest.fixture
def coord(tmp_path: Path, s3, etcd, group: LocalGroup) -> Iterator[CoordinatorProcess]:  # type: ignore[no-untyped-def]
    c = coordinator(tmp_path, s3, etcd, group, "c1")
    try:
        c.wait_leader()
        yield c
    finally:
        c.stop()


def timed(c: CoordinatorProcess, method: str, path: str,
          body: object = None) -> tuple[int, Any, float]:
    """Return (status, JSON body, seconds) of one API call."""
    t0 = time.monotonic()
    status, answer = c.call(method, path, body)
    return status, answer, time.monotonic() - t0


def wait_version(c: CoordinatorProcess, prefix: str, state: str, timeout_s: float) -> None:
    """Wait until a version of site s1 reaches `state`."""
    deadline = time.monotonic() + timeout_s
    while True:
        versions = c.call("GET", "/v1/models?site=s1")[1]["versions"]
        if any(v["prefix"] == prefix and v["state"] == state for v in versions):
            return
        assert time.monotonic() < deadline, versions
        time.sleep(0.1)


def test_evict_pin_unpin_of_an_unknown_prefix_is_404_listing_the_versions_under_it(
        group: LocalGroup, coord: CoordinatorProcess, s3, bucket: str, proxy) -> None:  # type: ignore[no-untyped-def]
    """Inject: evict, pin, unpin prefixes no job warmed, above a warmed version and over
    blocks that were only read through: 404 naming the versions, and nothing is deleted."""
    v1 = upload(s3, bucket, "m/v1/", {"w.bin": BS + 1})
    v2 = upload(s3, bucket, "m/v2/", {"w.bin": BS + 2}, seed=1)  # read through, never warmed
    assert coord.wait_job(warm(coord, f"s3://{bucket}/m/v1/")["id"])["state"] == "complete"
    read_all(group, bucket, v2)
    for op in ("evict", "pin", "unpin"):
        status, body, took = timed(coord, "POST", f"/v1/{op}",
                                   {"prefix": f"s3://{bucket}/m/", "site": "s1"})
        assert (status, body["error"], took < QUICK_S) == (404, "UnknownVersion", True), body
        assert body["reason"] == (f"site s1 has no version at s3://{bucket}/m/; name one of its "
                                  f"versions under it: s3://{bucket}/m/v1/ (ready)")
        assert (body["versions"], body["versions_total"]) == ([f"s3://{bucket}/m/v1/"], 1)
        status, body, took = timed(coord, "POST", f"/v1/{op}",
                                   {"prefix": f"s3://{bucket}/m/v2/", "site": "s1"})
        assert (status, took < QUICK_S) == (404, True), body
        assert "and none under it: warm it first" in body["reason"], body
    status, body, _ = timed(coord, "POST", "/v1/evict", {"prefix": f"s3://{bucket}/m/v1/",
                                                         "site": "fra"})
    assert status == 404 and body["versions_total"] == 0  # a version of another site only

    # a known version is evicted as before; its sweep also handles any request written above
    assert coord.call("POST", "/v1/evict", {"prefix": f"s3://{bucket}/m/v1/",
                                            "site": "s1"})[0] == 202
    wait_version(coord, f"s3://{bucket}/m/v1/", "evicted", timeout_s=30)
    _, models = coord.call("GET", "/v1/models")
    assert [(v["prefix"], v["state"]) for v in models["versions"]] == [
        (f"s3://{bucket}/m/v1/", "evicted")]  # no version recorded for m/ or m/v2/
    proxy.reset()
    read_all(group, bucket, v2)
    assert gets(proxy) == 0  # the read-through blocks under m/ are all still there
    read_all(group, bucket, v1)
    assert gets(proxy) == 2  # v1's two blocks had left


def test_a_known_version_that_holds_or_lies_within_another_is_still_refused(
        group: LocalGroup, coord: CoordinatorProcess, s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Inject: evict a known version whose prefix holds another known version (and the
    other way round): 409 naming the other one, nothing evicted."""
    upload(s3, bucket, "nest/v1/", {"w.bin": 10})
    # Versions v1 of bucket/nest, and nest of bucket: a model's root (nest/) is warmed only
    # with a pattern that says so.
    for prefix, pattern in (("nest/v1/", None), ("nest/", "{model}/{version}")):
        extra = {"pattern": pattern} if pattern else {}
        assert coord.wait_job(warm(coord, f"s3://{bucket}/{prefix}", **extra)["id"])[
            "state"] == "complete"
    for prefix, other in (("nest/", "nest/v1/"), ("nest/v1/", "nest/")):
        status, body, took = timed(coord, "POST", "/v1/evict",
                                   {"prefix": f"s3://{bucket}/{prefix}", "site": "s1"})
        assert (status, took < QUICK_S) == (409, True), body
        assert body["reason"] == (f"evicting s3://{bucket}/{prefix} would also evict "
                                  f"s3://{bucket}/{other} (nodes evict by prefix)")
    states = {v["prefix"]: v["state"] for v in coord.call("GET", "/v1/models")[1]["versions"]}
    assert states == {f"s3://{bucket}/nest/": "ready", f"s3://{bucket}/nest/v1/": "ready"}


@dataclass
class Stack:
    """A cache group and a coordinator on an etcd of their own, which the test may stop."""

    etcd: Etcd
    group: LocalGroup
    coord: CoordinatorProcess


@pytest.fixture
def stack(tmp_path: Path, s3) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    with contextlib.ExitStack() as es:
        etcd = es.enter_context(Etcd(tmp_path / "etcd"))
        group = es.enter_context(LocalGroup(tmp_path / "g", s3.env(), etcd.endpoint, 2,
                                            "--capacity", "1GiB"))
        coord = CoordinatorProcess(tmp_path, s3.env(), etcd.endpoint, group.cluster,
                                   "c1").start()
        es.callback(coord.stop)
        es.callback(lambda: etcd.running or etcd.start())  # stop the others on a live etcd
        es.callback(etcd.resume)
        coord.wait_leader()
        yield Stack(etcd, group, coord)


def routes(bucket: str) -> list[tuple[str, str, Any, int]]:
    """Return every route that needs etcd: (method, path, body, status once etcd is up)."""
    version = {"prefix": f"s3://{bucket}/m/v9/", "site": "s1"}
    return [("GET", "/v1/jobs", None, 200),
            ("POST", "/v1/jobs", {"prefix": f"s3://{bucket}/m/v1/", "sites": ["s1"]}, 201),
            ("GET", "/v1/jobs/w-00000000", None, 404),
            ("POST", "/v1/jobs/w-00000000/cancel", None, 404),
            ("GET", "/v1/models", None, 200), ("GET", "/v1/models?site=s1", None, 200),
            ("POST", "/v1/pin", version, 404), ("POST", "/v1/unpin", version, 404),
            ("POST", "/v1/evict", version, 404),
            ("GET", "/v1/sites/s1/policy", None, 200),
            ("PUT", "/v1/sites/s1/policy", {"keep": 3}, 200)]


def call_all(c: CoordinatorProcess, table: list[tuple[str, str, Any, int]]
             ) -> list[tuple[int, dict[str, str], Any, float]]:
    """Call every route at once; return (status, headers, body, seconds) of each."""
    def one(route: tuple[str, str, Any, int]) -> tuple[int, dict[str, str], Any, float]:
        t0 = time.monotonic()
        status, headers, body = c.request(route[0], route[1], route[2])
        return status, headers, body, time.monotonic() - t0

    with ThreadPoolExecutor(len(table)) as pool:
        return list(pool.map(one, table))


def assert_503_naming_etcd(c: CoordinatorProcess, bucket: str, within_s: float) -> None:
    """Assert that every route answers 503 + Retry-After + a reason naming etcd in time."""
    table = routes(bucket)
    for (method, path, _, _), (status, headers, body, took) in zip(
            table, call_all(c, table), strict=True):
        assert (status, headers.get("Retry-After"), body["error"]) == (
            503, "1", "StateUnavailable"), (method, path, body)
        assert body["reason"].startswith("etcd at 127.0.0.1:"), body
        assert took < within_s, (method, path, took)


def assert_answers_again(c: CoordinatorProcess, bucket: str, within_s: float) -> None:
    """Assert that the API answers within `within_s` of etcd coming back, and every route as
    with etcd up once the nodes are registered again (a pause lets their leases lapse)."""
    deadline = time.monotonic() + within_s
    while c.call("GET", "/v1/jobs")[0] != 200:
        assert time.monotonic() < deadline, c.call("GET", "/v1/jobs")
        time.sleep(0.05)
    table, deadline = routes(bucket), time.monotonic() + REGISTER_S
    want = [(m, p, status) for m, p, _, status in table]
    while (got := [(m, p, status) for (m, p, _, _), (status, _, _, _) in zip(
            table, call_all(c, table), strict=True)]) != want:
        assert time.monotonic() < deadline, got
        time.sleep(0.2)


def health(c: CoordinatorProcess) -> tuple[int, dict[str, Any]]:
    """Return /healthz's (status, body), asserting it answers at once (it never waits on etcd)."""
    status, body, took = timed(c, "GET", "/healthz")
    assert took < QUICK_S, took
    return status, body


def wait_health(replicas: list[CoordinatorProcess], deadline: float, healthy: bool) -> None:
    """Wait until every replica's /healthz names the one leader among them, or (not
    `healthy`) answers 503 naming no leader, with a reason."""
    while True:
        got = {c.id: health(c) for c in replicas}
        named = {b["leader_id"] for _, b in got.values()}
        leading = [i for i, (_, b) in got.items() if b["leader"]]
        if healthy:
            done = all(status == 200 and b["etcd_healthy"] for status, b in got.values()) \
                and len(named) == 1 and leading == list(named)
        else:
            done = all((status, b["etcd_healthy"], b["leader"], b["leader_id"], bool(
                b["reason"])) == (503, False, False, None, True) for status, b in got.values())
        if done:
            return
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["kill", "pause"])
def test_etcd_down_is_503_on_every_route_and_healthz_stops_naming_a_leader(
        stack: Stack, tmp_path: Path, s3, bucket: str, how: str) -> None:  # type: ignore[no-untyped-def]
    """Inject: etcd killed (calls refused) or paused (calls hang), under a leader and a
    follower. Every route that needs etcd answers 503 naming it within an etcd call deadline;
    both /healthz answer 503 with no leader within a lease TTL; once etcd is back, all answer
    again, one leader is named by both, and a warmup completes."""
    upload(s3, bucket, "m/v1/", {"w.bin": BS + 5})
    c1 = stack.coord
    c2 = CoordinatorProcess(tmp_path, s3.env(), stack.etcd.endpoint, stack.group.cluster,
                            "c2").start()
    try:
        wait_health([c1, c2], time.monotonic() + QUICK_S, healthy=True)
        assert health(c2)[1]["leader_id"] == "c1"
        t0 = time.monotonic()
        if how == "kill":
            stack.etcd.kill()
            assert_503_naming_etcd(c1, bucket, within_s=QUICK_S)
        else:
            stack.etcd.pause()
            assert_503_naming_etcd(c1, bucket, within_s=ETCD_CALL_S + QUICK_S)
        wait_health([c1, c2], t0 + LEASE_TTL_S + QUICK_S, healthy=False)
        stack.etcd.start() if how == "kill" else stack.etcd.resume()
        t1 = time.monotonic()
        assert_answers_again(c1, bucket, within_s=ETCD_CALL_S + QUICK_S)
        wait_health([c1, c2], t1 + REGISTER_S, healthy=True)  # an old lease lapses first
        job = c1.call("GET", "/v1/jobs")[1]["jobs"][0]  # the POST of assert_answers_again
        assert c1.wait_job(job["id"], timeout_s=60)["state"] == "complete"
    finally:
        c2.stop()


def test_a_resent_job_request_with_its_id_starts_no_second_job(
        group: LocalGroup, coord: CoordinatorProcess, s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Inject: the same POST /v1/jobs sent again (a retry after a lost answer), eight times at
    once: one job; the same id for another warmup is a 409."""
    upload(s3, bucket, "r/v1/", {"w.bin": 10})
    body = {"id": "rollout-1", "prefix": f"s3://{bucket}/r/v1/", "sites": ["s1"]}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: coord.call("POST", "/v1/jobs", body), range(8)))
    assert sorted(status for status, _ in answers) == [200] * 7 + [201], answers
    assert {a["job"]["id"] for _, a in answers} == {"rollout-1"}
    assert coord.wait_job("rollout-1")["state"] == "complete"
    status, again = coord.call("POST", "/v1/jobs", body)
    assert (status, again["job"]["state"]) == (200, "complete")  # the job it made, finished
    status, other = coord.call("POST", "/v1/jobs", {**body, "prefix": f"s3://{bucket}/r/"})
    assert (status, other["error"]) == (409, "Conflict"), other
    assert other["reason"] == (f"job id rollout-1 already names a warmup of s3://{bucket}/r/v1/ "
                               "onto s1: choose another id")
    assert [j["id"] for j in coord.call("GET", "/v1/jobs")[1]["jobs"]] == ["rollout-1"]


def test_cachectl_started_while_etcd_is_down_retries_and_finishes_once_it_is_back(
        stack: Stack, tmp_path: Path, s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Inject: etcd killed before `cachectl warmup --wait` starts. A command with a short
    --retry-for gives up on time naming etcd; the warmup retries, starts one job once etcd
    is back and exits 0 when the job is complete."""
    upload(s3, bucket, "m/v1/", {"w.bin": BS + 7})
    c = stack.coord
    stack.etcd.kill()
    t0 = time.monotonic()
    r = subprocess.run([CACHECTL, "--coordinator", c.url, "jobs", "--retry-for", "2"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, 2 <= time.monotonic() - t0 < 2 + QUICK_S) == (1, True), r.stderr
    assert r.stderr.splitlines()[-1].startswith(
        f"cachectl: gave up after retrying for 2s: the coordinator at {c.url} answered GET "
        "/v1/jobs with 503 (StateUnavailable): etcd at 127.0.0.1:"), r.stderr

    err_path = tmp_path / "cachectl.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([CACHECTL, "--coordinator", c.url, "warmup",
                                 f"s3://{bucket}/m/v1/", "--site", "s1", "--wait", "--json"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        deadline = time.monotonic() + QUICK_S
        while "retrying for up to 60s" not in err_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        stack.etcd.start()
        out, _ = proc.communicate(timeout=60)  # nodes re-register, a leader is elected, it runs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    notes = err_path.read_text()
    assert proc.returncode == 0, notes
    assert notes.startswith("cachectl: etcd at 127.0.0.1:") and \
        "cachectl: the coordinator answers again\n" in notes, notes
    job = json.loads(out)["job"]
    assert (job["state"], job["progress"]["blocks_done"]) == ("complete", 2)
    assert [j["id"] for j in c.call("GET", "/v1/jobs")[1]["jobs"]] == [job["id"]]  # one job
