"""A group with a cluster secret is warmed only by a coordinator that signs with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import LocalGroup
from tests.coordproc import CoordinatorProcess
from tests.integration.test_coordinator import blocks_of, gets, read_all, upload, warm

pytestmark = pytest.mark.integration
MiB = 2**20
BS = 4 * MiB


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "cluster-secret"
    path.write_text("a-cluster-secret-for-tests-0123456789\n")
    return path


@pytest.fixture
def sealed(tmp_path: Path, proxy, s3, etcd, secret: Path) -> Iterator[LocalGroup]:  # type: ignore[no-untyped-def]
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
    with LocalGroup(tmp_path, env, etcd.endpoint, 3, "--capacity", "1GiB",
                    "--cluster-secret-file", str(secret)) as g:
        yield g


def test_only_a_coordinator_with_the_secret_warms_a_sealed_group(  # type: ignore[no-untyped-def]
        tmp_path: Path, s3, etcd, bucket: str, proxy, sealed: LocalGroup,
        secret: Path) -> None:
    files = upload(s3, bucket, "m/v1/", {"a.bin": 2 * BS + 5, "b.bin": 77})
    outsider = CoordinatorProcess(tmp_path / "c0", s3.env(), etcd.endpoint, sealed.cluster,
                                  "c0").start()
    try:
        outsider.wait_leader()
        proxy.reset()
        job = outsider.wait_job(warm(outsider, f"s3://{bucket}/m/v1/")["id"], timeout_s=30)
        assert job["state"] == "failed", job
        assert "cluster secret" in str(job["failed_objects"]), job["failed_objects"]
        assert gets(proxy) == 0  # refused before any fill
    finally:
        outsider.stop()
    member = CoordinatorProcess(tmp_path / "c1", s3.env(), etcd.endpoint, sealed.cluster,
                                "c1", "--cluster-secret-file", str(secret)).start()
    try:
        member.wait_leader()
        job = member.wait_job(warm(member, f"s3://{bucket}/m/v1/")["id"], timeout_s=60)
        assert job["state"] == "complete", job
        assert gets(proxy) == blocks_of(files)
        proxy.reset()
        read_all(sealed, bucket, files)
        assert gets(proxy) == 0
    finally:
        member.stop()
