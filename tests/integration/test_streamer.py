"""The Run:ai Model Streamer loads a model through a node's S3 API as vLLM does, every tensor equal.

The streamer runs in its own process (tests/streamer_load.py, `--verify exact`): it lists the
shards (ListObjectsV2), pulls the JSON files with boto3 (HeadObject, GetObject) and streams
every shard with its C++ S3 client (ranged GETs, absolute-form request targets, many in
flight). Its set-up (torch, runai-model-streamer, runai-model-streamer-s3) is in the test
extra, so a missing install fails here instead of being skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import LocalGroup
from tests.s3proxy import CountingProxy
from tests.safetensors_gen import write_model
from tests.servers import ACCESS_KEY, SECRET_KEY, Etcd, SeaweedFS
from tests.streamer_load import client_env, run_load

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BLOCK = 4 * MiB


def origin_block_gets(proxy: CountingProxy) -> int:
    """Return how many ranged GETs reached the origin since the proxy's last reset."""
    return sum(proxy.range_gets.values())


def upload_model(tmp_path: Path, s3: SeaweedFS, bucket: str) -> tuple[dict[str, Any], Path, int]:
    """Write and upload a small 3-shard model; return manifest, manifest path and blocks."""
    manifest = write_model(tmp_path / "model", 20 * MiB, 3, seed=11, hidden=256, vocab=4096)
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    files = [*manifest["shards"], *manifest["other_files"]]
    for f in files:
        s3.put_file(bucket, f"org/tiny/v1/{f['file']}", tmp_path / "model" / f["file"])
    return manifest, manifest_path, sum(math.ceil(f["size"] / BLOCK) for f in files)


def test_streamer_loads_a_model_through_a_node_of_a_group(
        tmp_path: Path, s3: SeaweedFS, bucket: str, proxy: CountingProxy,
        group: LocalGroup) -> None:
    manifest, manifest_path, blocks = upload_model(tmp_path, s3, bucket)
    assert blocks > len(manifest["shards"]) + len(manifest["other_files"])  # several owners
    env = client_env(group.nodes[1].s3_url)
    prefix = f"s3://{bucket}/org/tiny/v1/"

    proxy.reset()
    cold = run_load(env, prefix, manifest_path, tmp_path / "pulled-cold", verify="exact",
                    timeout_s=120)
    assert cold["n_bad"] == 0 and cold["n_missing"] == 0, (cold["bad"], cold["stderr_tail"])
    assert cold["tensors"] == manifest["tensors"]
    assert origin_block_gets(proxy) == blocks  # every block from the origin exactly once

    proxy.reset()
    warm = run_load(env, prefix, manifest_path, tmp_path / "pulled-warm", verify="exact",
                    timeout_s=120)
    assert warm["n_bad"] == 0 and warm["n_missing"] == 0, (warm["bad"], warm["stderr_tail"])
    assert warm["tensors"] == manifest["tensors"]
    assert origin_block_gets(proxy) == 0  # all from the group's disks


@pytest.fixture
def keyed_group(tmp_path: Path, proxy: CountingProxy, s3: SeaweedFS, etcd: Etcd
                ) -> Iterator[LocalGroup]:
    """Three nodes with access keys (the test credentials) and a cluster secret."""
    (tmp_path / "keys").write_text(f"{ACCESS_KEY} {SECRET_KEY}\n")
    (tmp_path / "cluster").write_text("the-cluster-secret-0123456789\n")
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
    with LocalGroup(tmp_path / "g", env, etcd.endpoint, 3, "--capacity", "2GiB",
                    "--access-keys", str(tmp_path / "keys"), "--cluster-secret-file",
                    str(tmp_path / "cluster")) as g:
        yield g


# The streamer's C++ client (aws-c-s3) sends absolute-form targets (GET http://host/b/k
# HTTP/1.1): the signature covers only their path and query (cachenode/authorize.py).
def test_streamer_loads_a_model_through_a_node_with_access_keys(
        tmp_path: Path, s3: SeaweedFS, bucket: str, keyed_group: LocalGroup) -> None:
    manifest, manifest_path, _ = upload_model(tmp_path, s3, bucket)
    env = client_env(keyed_group.nodes[1].s3_url)
    r = run_load(env, f"s3://{bucket}/org/tiny/v1/", manifest_path, tmp_path / "pulled",
                 verify="exact", timeout_s=120)
    assert r["n_bad"] == 0 and r["n_missing"] == 0, (r["bad"], r["stderr_tail"])
    assert r["tensors"] == manifest["tensors"]
