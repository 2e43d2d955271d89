"""Fixtures of the integration tests: a cache group of node processes on real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import LocalGroup


@pytest.fixture
def group(tmp_path: Path, proxy, s3, etcd) -> Iterator[LocalGroup]:  # type: ignore[no-untyped-def]
    """Three nodes of site s1 whose origin is the counting proxy in front of SeaweedFS."""
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
    with LocalGroup(tmp_path, env, etcd.endpoint, 3, "--capacity", "2GiB") as g:
        yield g
