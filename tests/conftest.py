"""Shared fixtures: one SeaweedFS per session, a fresh bucket and a counting proxy per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.s3proxy import CountingProxy
from tests.servers import Etcd, SeaweedFS

_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """Start one SeaweedFS S3 server for the whole session."""
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def bucket(s3: SeaweedFS, request: pytest.FixtureRequest) -> str:
    """Create a fresh, uniquely named bucket."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40]
    return s3.make_bucket(f"t{next(_bucket_ids)}-{stem}".rstrip("-"))


@pytest.fixture
def proxy(s3: SeaweedFS) -> Iterator[CountingProxy]:
    """Run a CountingProxy in front of the session's S3 server."""
    with CountingProxy(s3.endpoint_url) as p:
        yield p


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    """Start one etcd for the whole session (tests that stop etcd should start their own)."""
    with Etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server
