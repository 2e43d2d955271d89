"""Tenants end to end on real etcd, SeaweedFS (counting proxy), 3 node processes with --tenants
and a coordinator with an admin token: who reads what through every API, keys added and
revoked on every node within 5 s, bad credentials on every surface, a node with a wrong
cluster secret."""

from __future__ import annotations

import json
import random
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from botocore.exceptions import ClientError

from cachenode.auth.grpc_auth import GrpcCredentials
from tests.cluster import LocalGroup
from tests.coordproc import CoordinatorProcess
from tests.integration.test_node_s3 import pattern
from tests.nodeproc import NodeProcess
from tests.s3proxy import CountingProxy
from tests.tenantstack import (
    Key,
    add_key,
    bearer,
    cachectl,
    create_tenant,
    grpc_read,
    http_get,
    s3_client,
    secured_coordinator,
    secured_group,
    write_secrets,
)

pytestmark = pytest.mark.integration
MiB = 2**20
BOUND_S = 5.0  # a new key works and a revoked one fails on every node within this
APIS = ("s3", "range", "presigned", "grpc", "bearer-range", "bearer-s3", "bearer-grpc")


@dataclass
class Stack:
    group: LocalGroup
    coord: CoordinatorProcess
    proxy: CountingProxy
    admin: str
    bucket: str
    a: Key
    b: Key
    objects: dict[str, bytes]
    base: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3, etcd) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("tenants")
    cluster_secret, admin_file, admin = write_secrets(base / "secrets")
    bucket = s3.make_bucket("tenants-x")
    objects = {}
    for i in range(4):  # sizes across block edges: 0, small, one block + a bit
        for prefix, seed in (("team-a/", 10), ("team-b/", 20), ("shared/", 30)):
            key = f"{prefix}obj{i}.bin"
            objects[key] = pattern([0, 777, 4 * MiB + 5, 3 * MiB][i], seed + i)
            s3.put_object(bucket, key, objects[key])
    with CountingProxy(s3.endpoint_url) as proxy:
        env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
        with secured_group(base / "g", env, etcd.endpoint, 3, cluster_secret,
                           "--capacity", "1GiB") as group:
            coord = secured_coordinator(base, s3.env(), etcd.endpoint, group.cluster,
                                        cluster_secret, admin_file).start()
            try:
                a = create_tenant(coord, admin, "team-a", "--read", f"s3://{bucket}/team-a/",
                                  "--read", f"s3://{bucket}/shared/", "--quota", "s1=10MiB")
                b = create_tenant(coord, admin, "team-b", "--read", f"s3://{bucket}/team-b/")
                yield Stack(group, coord, proxy, admin, bucket, a, b, objects, base)
            finally:
                coord.stop()


def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> float:
    """Wait until `cond()` holds; return the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout_s, "not within the bound"
        time.sleep(0.05)
    return time.monotonic() - t0


def read_via(api: str, node: NodeProcess, bucket: str, key: str, k: Key) -> tuple[bool, bytes]:
    """Read a whole object as tenant key `k` through one API; return (allowed, bytes)."""
    if api in ("s3", "range", "presigned"):
        c = s3_client(node.s3_url if api == "s3" else node.url, k)
        if api == "presigned":
            url = urllib.parse.urlsplit(c.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300))
            status, _, body = http_get(node, f"{url.path}?{url.query}")
            return status == 200, body
        try:
            return True, c.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403, e.response
            return False, b""
    if api in ("grpc", "bearer-grpc"):
        code, data = grpc_read(node, bucket, key, token=k.token if api == "bearer-grpc" else None,
                               creds=GrpcCredentials(k.key_id, k.secret) if api == "grpc"
                               else None)
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.UNAUTHENTICATED), code
        return code == grpc.StatusCode.OK, data
    port = node.s3_port if api == "bearer-s3" else None
    status, _, body = http_get(node, f"/{bucket}/{urllib.parse.quote(key)}", bearer(k.token),
                               port=port)
    assert status in (200, 403), (api, status, body[:200])
    return status == 200, body


def test_every_tenant_object_and_api_on_several_nodes_reads_only_inside_its_scopes(
        stack: Stack) -> None:
    rng = random.Random(12)
    scopes = {"team-a": ("team-a/", "shared/"), "team-b": ("team-b/",)}
    pairs = [(k, key, api) for k in (stack.a, stack.b) for key in stack.objects for api in APIS]
    rng.shuffle(pairs)
    refused = [p for p in pairs if not p[1].startswith(scopes[p[0].tenant])]
    stack.proxy.reset()
    for k, key, api in refused:  # every one on two random nodes
        for node in rng.sample(stack.group.nodes, 2):
            allowed, _ = read_via(api, node, stack.bucket, key, k)
            assert not allowed, (k.tenant, key, api, node.http_port)
    assert stack.proxy.total == 0  # no refused read reached the origin, not even a HEAD
    for k, key, api in (p for p in pairs if p not in refused):
        node = rng.choice(stack.group.nodes)
        allowed, data = read_via(api, node, stack.bucket, key, k)
        assert allowed and data == stack.objects[key], (k.tenant, key, api)
    print(f"{len(refused) * 2} refused reads, {len(pairs) - len(refused)} allowed ones")


def _works_everywhere(group: LocalGroup, bucket: str, key: str, k: Key) -> bool:
    return all(read_via(api, n, bucket, key, k)[0] for n in group.nodes
               for api in ("range", "bearer-range"))


def _refused_everywhere(group: LocalGroup, bucket: str, key: str, k: Key) -> bool:
    return not any(read_via(api, n, bucket, key, k)[0] for n in group.nodes
                   for api in ("range", "bearer-range", "presigned", "grpc"))


def test_a_new_key_works_and_a_revoked_one_fails_on_every_node_within_5s(stack: Stack) -> None:
    t0 = time.monotonic()
    k = add_key(stack.coord, stack.admin, "team-b")
    added_s = until(lambda: _works_everywhere(stack.group, stack.bucket, "team-b/obj1.bin", k),
                    BOUND_S)
    print(f"key add: {time.monotonic() - t0:.2f}s with the cachectl call")
    assert stack.coord.call("GET", "/v1/jobs")[0] == 401  # no token
    t0 = time.monotonic()
    cachectl(stack.coord, stack.admin, "key", "revoke", "team-b", k.key_id)
    revoked_s = until(lambda: _refused_everywhere(stack.group, stack.bucket, "team-b/obj1.bin",
                                                  k), BOUND_S)
    status, _, body = http_get(stack.group.nodes[0], f"/{stack.bucket}/team-b/obj1.bin",
                               bearer(k.token))
    assert status == 403 and b"InvalidToken" in body
    print(f"new key on 3 nodes in {added_s:.2f}s, revoked on 3 nodes in {revoked_s:.2f}s "
          f"({time.monotonic() - t0:.2f}s with the cachectl call)")
    assert read_via("range", stack.group.nodes[1], stack.bucket, "team-b/obj1.bin", stack.b)[0]


def test_bad_credentials_are_refused_on_every_surface_and_cost_the_origin_nothing(
        stack: Stack) -> None:
    node, key = stack.group.nodes[2], "team-a/obj1.bin"
    a = stack.a
    forged = "bct_" + a.key_id + "_" + "0" * 64
    tampered = a.token[:-1] + ("0" if a.token[-1] != "0" else "1")
    c = s3_client(node.url, a)
    url = urllib.parse.urlsplit(c.generate_presigned_url(
        "get_object", Params={"Bucket": stack.bucket, "Key": key}, ExpiresIn=300))
    stack.proxy.reset()
    for token in (forged, tampered, "not-a-token"):
        for port in (node.http_port, node.s3_port):
            status, headers, body = http_get(node, f"/{stack.bucket}/{key}", bearer(token),
                                             port=port)
            assert status == 403 and b"InvalidToken" in body, (port, body)
        assert grpc_read(node, stack.bucket, key, token=token)[0] == \
            grpc.StatusCode.UNAUTHENTICATED
        assert stack.coord.request("GET", "/v1/jobs", headers=bearer(token))[0] == 401
    assert grpc_read(node, stack.bucket, key, creds=GrpcCredentials(a.key_id, "x" * 40))[0] \
        == grpc.StatusCode.UNAUTHENTICATED
    tampered_url = f"{url.path.replace('obj1', 'obj2')}?{url.query}"
    assert http_get(node, tampered_url)[0] == 403
    assert http_get(node, f"{url.path}?{url.query}", bearer(a.token))[0] == 403  # two schemes
    with pytest.raises(ClientError):
        s3_client(node.s3_url, a, secret="y" * 40).get_object(Bucket=stack.bucket, Key=key)
    for path in ("/_warm", "/_evict"):  # a tenant is no coordinator
        status, _, _ = http_get(node, path, bearer(a.token), method="POST")
        assert status == 403
    forged_hop = {**bearer(a.token), "X-Blockcache-Hops": "1", "X-Blockcache-Cached-Only": "1"}
    assert http_get(node, f"/{stack.bucket}/{key}", forged_hop)[0] == 403  # a forged peer read
    assert http_get(node, "/ring")[0] == 403 and http_get(node, "/ring", bearer(a.token))[0] == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http_get(node, path)[0] == 200, path
    assert stack.coord.request("GET", "/healthz")[0] == 200
    assert stack.coord.request("GET", "/metrics")[0] == 200
    assert stack.proxy.total == 0
    logs = "".join(n.log_path.read_text() for n in stack.group.nodes)
    logs += stack.coord.log_path.read_text()
    for secret in (a.secret, a.token, stack.b.secret, stack.b.token, stack.admin):
        assert secret not in logs


def test_a_node_with_a_wrong_cluster_secret_neither_reads_from_nor_serves_its_peers(
        stack: Stack, tmp_path: Path, s3) -> None:  # type: ignore[no-untyped-def]
    keys = [f"shared/stray/{i}" for i in range(24)]  # some blocks are sure to be n9's
    for i, key in enumerate(keys):
        stack.objects[key] = pattern(1000 + i, 40 + i)
        s3.put_object(stack.bucket, key, stack.objects[key])
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("another-cluster-secret-0123456789\n")
    g = stack.group
    env = {**g.origin_env}
    stray = NodeProcess(tmp_path / "n9", env, "--etcd", g.etcd, "--cluster", g.cluster,
                        "--site", g.site, "--node-id", "n9", "--lease-ttl", "4s",
                        "--tenants", "true", "--cluster-secret-file", str(wrong),
                        "--capacity", "1GiB").start()
    try:
        g.nodes.append(stray)
        g.wait_view(4)
        before = {n.http_port: n.metric("blockcache_auth_failures_total") for n in g.nodes}
        for key in keys:
            allowed, data = read_via("bearer-range", stray, stack.bucket, key, stack.a)
            assert allowed and data == stack.objects[key]  # from the origin, as a loner
            for n in g.nodes[:3]:  # the others do not take its blocks from it either
                assert read_via("bearer-range", n, stack.bucket, key, stack.a)[1] == \
                    stack.objects[key]
        assert stray.metric("blockcache_peer_reads_total", result="ok") == 0
        assert sum(n.metric("blockcache_auth_failures_total") - before[n.http_port]
                   for n in g.nodes[:3]) > 0  # it asked them, and was refused
        assert stray.metric("blockcache_auth_failures_total") > before[stray.http_port]
        assert not read_via("range", stray, stack.bucket, "team-a/obj1.bin", stack.a)[0], \
            "a SigV4 secret sealed with the real cluster secret must not open with another"
    finally:
        stray.stop()
        g.nodes.remove(stray)
        g.wait_view(3)


def _answer(c: CoordinatorProcess, method: str, path: str, token: str,
            body: Any = None) -> tuple[int, Any]:
    status, _, answer = c.request(method, path, body, headers=bearer(token))
    return status, answer


def _wait_job(c: CoordinatorProcess, job_id: str, token: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = _answer(c, "GET", f"/v1/jobs/{job_id}", token)
        assert status == 200, body
        if body["job"]["state"] in ("complete", "failed", "cancelled"):
            return body["job"]
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def test_tenant_tokens_stay_inside_their_scopes_jobs_versions_and_quota(
        stack: Stack, s3) -> None:  # type: ignore[no-untyped-def]
    c, a, b, admin, bkt = stack.coord, stack.a.token, stack.b.token, stack.admin, stack.bucket
    for v in ("v1", "v2"):
        s3.put_object(bkt, f"team-a/m/{v}/w.bin", pattern(6 * MiB, 50 + int(v[1])))
    status, body = _answer(c, "POST", "/v1/jobs", a, {"prefix": f"s3://{bkt}/team-b/",
                                                      "sites": ["s1"]})
    assert (status, body["error"]) == (403, "Forbidden"), body
    status, body = _answer(c, "POST", "/v1/jobs", a, {"prefix": f"s3://{bkt}/team-a/m/v1/",
                                                      "sites": ["s1"]})
    assert status == 201, body
    job = _wait_job(c, body["job"]["id"], a)
    assert job["state"] == "complete" and job["tenant"] == "team-a", job
    for method, path, body_ in (("GET", f"/v1/jobs/{job['id']}", None),
                                ("POST", f"/v1/jobs/{job['id']}/cancel", None),
                                ("POST", "/v1/pin", {"prefix": f"s3://{bkt}/team-a/m/v1/",
                                                     "site": "s1"}),
                                ("POST", "/v1/evict", {"prefix": f"s3://{bkt}/team-a/m/v1/",
                                                       "site": "s1"})):
        status, answer = _answer(c, method, path, b, body_)
        assert status in (403, 404), (path, status, answer)  # invisible or out of scope
    assert _answer(c, "GET", "/v1/jobs", b)[1]["jobs"] == []
    assert _answer(c, "GET", "/v1/models", b)[1]["versions"] == []
    [mine] = _answer(c, "GET", "/v1/models?site=s1", a)[1]["versions"]
    assert (mine["version"], mine["tenants"], mine["state"]) == ("v1", ["team-a"], "ready")
    for method, path, body_ in (("PUT", "/v1/sites/s1/policy", {"keep": 5}),
                                ("POST", "/v1/tenants", {"name": "x", "read": ["s3://b/x/"]}),
                                ("GET", "/v1/tenants", None), ("GET", "/v1/tenants/team-a", None),
                                ("POST", "/v1/tenants/team-b/keys", None)):
        assert _answer(c, method, path, b, body_)[0] == 403, path
    assert _answer(c, "GET", "/v1/tenants/team-b", b)[0] == 200  # itself
    v2 = {"prefix": f"s3://{bkt}/team-a/m/v2/", "sites": ["s1"]}
    status, body = _answer(c, "POST", "/v1/jobs", a, v2)
    assert (status, body["error"]) == (409, "QuotaExceeded"), body
    assert (body["quota_bytes"], body["used_bytes"], body["asked_bytes"]) == (
        10 * MiB, 6 * MiB, 6 * MiB), body
    assert f"needs {6 * MiB} bytes, {6 * MiB} of its quota of {10 * MiB}" in body["reason"]
    cachectl(c, admin, "tenant", "update", "team-a", "--over-quota", "evict-oldest")
    status, body = _answer(c, "POST", "/v1/jobs", a, v2)
    assert status == 201, body
    assert _wait_job(c, body["job"]["id"], a)["state"] == "complete"
    states = {v["version"]: v["state"] for v in _answer(c, "GET", "/v1/models", a)[1]["versions"]}
    assert states["v2"] == "ready" and states.get("v1", "evicted") in ("evicting", "evicted")
    extra = add_key(c, admin, "team-b")  # audited like every key change
    cachectl(c, admin, "key", "revoke", "team-b", extra.key_id)
    shown = cachectl(c, a, "tenant", "show", "team-a").stdout
    assert "quota 10MiB" in shown, shown
    audit = [json.loads(line) for line in (stack.base / "audit-c1.log").read_text().splitlines()]
    seen = {(r["event"], r["actor"], r["result"]) for r in audit}
    for want in (("tenant.create", "admin", "ok"), ("key.create", "admin", "ok"),
                 ("key.revoke", "admin", "ok"), ("tenant.update", "admin", "ok"),
                 ("warmup", "team-a", "ok"), ("warmup", "team-a", "refused"),
                 ("policy.set", "team-b", "refused"), ("cancel", "team-b", "refused"),
                 ("pin", "team-b", "refused"), ("evict", "team-b", "refused")):
        assert want in seen, (want, sorted(seen))
    quota = next(r for r in audit if r.get("error") == "QuotaExceeded")
    assert quota["prefix"] == v2["prefix"] and quota["key_id"] == stack.a.key_id
    text = (stack.base / "audit-c1.log").read_text()
    for secret in (stack.a.secret, a, stack.b.secret, b, admin, extra.secret, extra.token):
        assert secret not in text
