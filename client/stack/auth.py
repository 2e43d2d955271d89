"""A cache group with auth on: a cluster secret, nodes following the tenants in etcd
(--tenants), a coordinator with an admin token, and tenants made with `cachectl`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from client.stack.coordinator import CoordinatorProcess
from client.stack.group import LocalGroup

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
                  cluster_secret: Path, *args: str, site: str = "s1",
                  cluster: str | None = None) -> LocalGroup:
    """Return (not started) a group whose nodes follow the tenants and share the secret."""
    return LocalGroup(base, origin_env, etcd, n, "--tenants", "true",
                      "--cluster-secret-file", str(cluster_secret), *args, site=site,
                      cluster=cluster)


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
