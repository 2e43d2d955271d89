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
from pathlib import Path

import pytest

from tests.cluster import LocalGroup
from tests.s3proxy import CountingProxy
from tests.safetensors_gen import write_model
from tests.servers import SeaweedFS
from tests.streamer_load import client_env, run_load

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
BLOCK = 4 * MiB


def origin_block_gets(proxy: CountingProxy) -> int:
    """Return how many ranged GETs reached the origin since the proxy's last reset."""
    return sum(proxy.range_gets.values())


def test_streamer_loads_a_model_through_a_node_of_a_group(
        tmp_path: Path, s3: SeaweedFS, bucket: str, proxy: CountingProxy,
        group: LocalGroup) -> None:
    manifest = write_model(tmp_path / "model", 20 * MiB, 3, seed=11, hidden=256, vocab=4096)
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    files = [*manifest["shards"], *manifest["other_files"]]
    for f in files:
        s3.put_file(bucket, f"org/tiny/v1/{f['file']}", tmp_path / "model" / f["file"])
    blocks = sum(math.ceil(f["size"] / BLOCK) for f in files)
    assert blocks > len(files)  # shards span several blocks, so several owners
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
