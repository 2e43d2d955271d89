"""A cache group with auth on for tests and the demo: a cluster secret, nodes following the
tenants in etcd (--tenants), a coordinator with an admin token, and the ways a tenant reads."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import grpc

from cachenode.auth.grpc_auth import GrpcCredentials
from cachenode.pb import blockcache_pb2 as pb
from cachenode.pb import blockcache_pb2_grpc as pb_grpc
from tests.cluster import LocalGroup
from tests.coordproc import CoordinatorProcess
from tests.nodeproc import NodeProcess

CACHECTL = str(Path(sys.executable).parent / "cachectl")


@dataclass(frozen=True)
class Key:
    """A tenant's credential as `tenant create` / `key add` print it once."""

    tenant: str
    key_id: str
    secret: str
    token: str


def write_secrets(folder: Path) -> tuple[Path, Path, str]:
    """Write a cluster secret and an admin token file; return their paths and the token."""
    folder.mkdir(parents=True, exist_ok=True)
    cluster, admin = folder / "cluster-secret", folder / "admin-token"
    cluster.write_text(secrets.token_hex(32) + "\n")
    token = "adm_" + secrets.token_hex(24)
    admin.write_text(token + "\n")
    return cluster, admin, token


def secured_group(base: Path, origin_env: Mapping[str, str], etcd: str, n: int,
                  cluster_secret: Path, *args: str, site: str = "s1") -> LocalGroup:
    """Return (not started) a group whose nodes follow the tenants and share the secret."""
    return LocalGroup(base, origin_env, etcd, n, "--tenants", "true",
                      "--cluster-secret-file", str(cluster_secret), *args, site=site)


def secured_coordinator(base: Path, origin_env: Mapping[str, str], etcd: str, cluster: str,
                        cluster_secret: Path, admin_token: Path, *args: str,
                        replica: str = "c1") -> CoordinatorProcess:
    """Return (not started) a coordinator with the admin token, secret and an audit log."""
    return CoordinatorProcess(base, origin_env, etcd, cluster, replica, "--cluster-secret-file",
                              str(cluster_secret), "--admin-token-file", str(admin_token),
                              "--audit-log", str(base / f"audit-{replica}.log"), *args)


def cachectl(coord: CoordinatorProcess, token: str, *args: str,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run cachectl against the coordinator with a token."""
    env = {**os.environ, "CACHECTL_COORDINATOR": coord.url, "CACHECTL_TOKEN": token}
    return subprocess.run([CACHECTL, *args], env=env, capture_output=True, text=True,
                          check=check, timeout=60)


def create_tenant(coord: CoordinatorProcess, admin: str, name: str, *opts: str) -> Key:
    """Create a tenant with `cachectl tenant create ... --json`; return its first key."""
    got = json.loads(cachectl(coord, admin, "tenant", "create", name, *opts, "--json").stdout)
    k = got["key"]
    return Key(name, k["access_key_id"], k["secret_access_key"], k["token"])


def add_key(coord: CoordinatorProcess, admin: str, name: str) -> Key:
    """Add a key to a tenant with `cachectl key add --json`; return it."""
    k = json.loads(cachectl(coord, admin, "key", "add", name, "--json").stdout)["key"]
    return Key(name, k["access_key_id"], k["secret_access_key"], k["token"])


def s3_client(endpoint: str, key: Key, secret: str | None = None) -> Any:
    """Return a boto3 S3 client signing with a tenant key (SigV4, path style, no retries)."""
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key.key_id,
                        aws_secret_access_key=secret or key.secret, region_name="us-east-1",
                        config=botocore.config.Config(s3={"addressing_style": "path"},
                                                      signature_version="s3v4",
                                                      retries={"max_attempts": 1}))


def http_get(node: NodeProcess, target: str, headers: Mapping[str, str] | None = None,
             port: int | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Send one request to a node (the range port unless `port`); return status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port or node.http_port, timeout=30)
    try:
        conn.request(method, target, headers=dict(headers or {}))
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    """Return the header of a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def grpc_read(node: NodeProcess, bucket: str, key: str, *, creds: GrpcCredentials | None = None,
              token: str | None = None) -> tuple[grpc.StatusCode, bytes]:
    """Read a whole object over gRPC ReadRange; return the status code and the bytes."""
    req = pb.ReadRangeRequest(bucket=bucket, key=key, offset=0, length=-1)
    md: tuple[tuple[str, str], ...] = ()
    if creds is not None:
        md = creds.metadata("ReadRange", req)
    elif token is not None:
        md = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}") as ch:
        try:
            data = b"".join(c.data for c in pb_grpc.BlockCacheStub(ch).ReadRange(
                req, metadata=md, timeout=30))
        except grpc.RpcError as e:
            return e.code(), b""
    return grpc.StatusCode.OK, data
