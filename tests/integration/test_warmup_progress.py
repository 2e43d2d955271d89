"""Warmup progress that tells the truth, against real etcd + SeaweedFS + node processes: a
rate and an ETA while a job runs, an average once it ended, and a site origin-rate cap that
paces the warmup (a token bucket) instead of letting it burst and stall."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import LocalGroup
from tests.coordproc import CoordinatorProcess
from tests.integration.test_node_s3 import pattern

pytestmark = pytest.mark.integration
MiB = 2**20
CAP = 4 * MiB  # --site-origin-rate
SIZE = 36 * MiB  # about 9 s at the cap


@pytest.fixture
def small_blocks(tmp_path: Path, s3, etcd) -> Iterator[LocalGroup]:  # type: ignore[no-untyped-def]
    """Two nodes with 1 MiB blocks, so confirmations arrive in small steps."""
    with LocalGroup(tmp_path, s3.env(), etcd.endpoint, 2, "--block-size", "1MiB",
                    "--capacity", "1GiB") as g:
        yield g


def test_a_capped_warmup_is_paced_and_shows_rate_and_eta(
        tmp_path: Path, s3, etcd, bucket: str, small_blocks: LocalGroup) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        s3.put_object(bucket, f"m/v1/part-{i}.bin", pattern(SIZE // 3, i))
    coord = CoordinatorProcess(tmp_path, s3.env(), etcd.endpoint, small_blocks.cluster, "c1",
                               "--site-origin-rate", f"{CAP}", "--batch-blocks", "2").start()
    try:
        coord.wait_leader()
        status, body = coord.call("POST", "/v1/jobs", {"prefix": f"s3://{bucket}/m/v1/",
                                                       "sites": ["s1"]})
        assert status == 201, body
        samples = sample(coord, body["job"]["id"])
    finally:
        coord.stop()
    job = samples[-1][1]
    assert job["state"] == "complete", job
    running = [(t, j) for t, j in samples if j["state"] == "running" and j.get("started")]
    assert len(running) >= 10, samples
    for t, j in running:
        p, elapsed = j["progress"], t - j["started"]
        # The cap holds at every sample: never more than 10% over cap x time since the start.
        assert p["bytes_done"] <= 1.1 * CAP * elapsed, (elapsed, p)
        assert p["rate_bytes_per_s"] <= 1.1 * CAP, (elapsed, p)
        if elapsed >= 4 and p["bytes_done"] < p["bytes_total"]:
            # No burst-then-stall: the bytes keep up with the cap, and the rate and ETA show.
            assert p["bytes_done"] >= 0.75 * CAP * (elapsed - 2), (elapsed, p)
            assert p["rate_bytes_per_s"] >= 0.7 * CAP, (elapsed, p)
            left = (p["bytes_total"] - p["bytes_done"]) / CAP
            assert p["eta_s"] is not None and 0.7 * left - 1 <= p["eta_s"] <= 1.4 * left + 1, p
    p = job["progress"]
    took = job["finished"] - job["started"]
    assert p["eta_s"] is None
    assert p["rate_bytes_per_s"] == pytest.approx(p["average_bytes_per_s"])
    assert p["average_bytes_per_s"] == pytest.approx(SIZE / took, rel=0.01)
    assert 0.8 * CAP <= p["average_bytes_per_s"] <= 1.1 * CAP, (took, p)


def sample(coord: CoordinatorProcess, job_id: str) -> list[tuple[float, dict]]:  # type: ignore[type-arg]
    """Read the job every 0.5 s until it ends; return (time, job) pairs."""
    out = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = coord.job(job_id)
        out.append((time.time(), job))
        if job["state"] in ("complete", "failed", "cancelled"):
            return out
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end: {out[-1]}")
