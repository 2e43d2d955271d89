"""The ways a tenant reads a cache group with auth on (the group itself: `stack.auth`)."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config
import grpc

from cachenode.auth.grpc_auth import GrpcCredentials
from cachenode.pb import blockcache_pb2 as pb
from cachenode.pb import blockcache_pb2_grpc as pb_grpc
from client.stack.auth import (
    CACHECTL,
    Key,
    add_key,
    cachectl,
    create_tenant,
    secured_coordinator,
    secured_group,
    write_secrets,
)
from client.stack.node import NodeProcess

__all__ = ["CACHECTL", "Key", "add_key", "bearer", "cachectl", "create_tenant", "grpc_read",
           "http_get", "s3_client", "secured_coordinator", "secured_group", "write_secrets"]


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
