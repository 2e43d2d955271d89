"""Faults a probe found in the coordinator, each injected against real servers.

etcd, SeaweedFS (behind the counting proxy) and the cache nodes are real processes; every
answer is awaited with a deadline, never a guessed sleep.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import LocalGroup
from tests.coordproc import CoordinatorProcess
from tests.integration.test_coordinator import BS, coordinator, gets, read_all, upload, warm

pytestmark = pytest.mark.integration
QUICK_S = 2.0  # an answer that needs a few etcd reads on loopback comes within this


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
    for prefix in ("nest/v1/", "nest/"):  # versions v1 of bucket/nest, and nest of bucket
        assert coord.wait_job(warm(coord, f"s3://{bucket}/{prefix}")["id"])["state"] == \
            "complete"
    for prefix, other in (("nest/", "nest/v1/"), ("nest/v1/", "nest/")):
        status, body, took = timed(coord, "POST", "/v1/evict",
                                   {"prefix": f"s3://{bucket}/{prefix}", "site": "s1"})
        assert (status, took < QUICK_S) == (409, True), body
        assert body["reason"] == (f"evicting s3://{bucket}/{prefix} would also evict "
                                  f"s3://{bucket}/{other} (nodes evict by prefix)")
    states = {v["prefix"]: v["state"] for v in coord.call("GET", "/v1/models")[1]["versions"]}
    assert states == {f"s3://{bucket}/nest/": "ready", f"s3://{bucket}/nest/v1/": "ready"}
