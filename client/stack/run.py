"""The local stack: SeaweedFS, etcd, a cache group and a coordinator on loopback, one owner."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from client.stack.auth import Key, create_tenant, secured_coordinator, secured_group, write_secrets
from client.stack.coordinator import CoordinatorProcess
from client.stack.etcd import Etcd
from client.stack.group import LocalGroup
from client.stack.seaweed import SeaweedFS


@dataclass(frozen=True)
class StackConfig:
    """What the stack runs: how many nodes, its names, the buckets made at start, auth."""

    base_dir: Path
    nodes: int = 3
    site: str = "local"
    cluster: str = "local"
    buckets: tuple[str, ...] = ("models",)
    auth: bool = False
    capacity: str = "2GiB"  # each node's --capacity
    log_level: str = "WARNING"
    site_origin_rate: str = ""  # the coordinator's --site-origin-rate (a warmup's cap), if any


class Stack:
    """Start the servers in order, stop them in reverse; every child in its own session."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        base = config.base_dir
        self.s3 = SeaweedFS(base / "seaweedfs")
        self.etcd = Etcd(base / "etcd", name="blockcache-stack")
        self.group: LocalGroup | None = None
        self.coordinator: CoordinatorProcess | None = None
        self.admin_token = ""  # with auth: the coordinator's admin token
        self.admin_token_file: Path | None = None
        self.tenant: Key | None = None  # with auth: a tenant reading every bucket

    def start(self) -> Self:
        """Start everything and wait until each part answers; on failure stop what started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        c = self.config
        self.s3.start()
        self.etcd.start()
        for bucket in c.buckets:
            self.s3.make_bucket(bucket)
        opts = ("--capacity", c.capacity, "--log-level", c.log_level)
        coord_opts: tuple[str, ...] = ("--log-level", c.log_level)
        if c.site_origin_rate:
            coord_opts += ("--site-origin-rate", c.site_origin_rate)
        base, env, etcd = c.base_dir, self.s3.env(), self.etcd.endpoint
        if c.auth:
            secret, self.admin_token_file, self.admin_token = write_secrets(base / "secrets")
            self.group = secured_group(base / "group", env, etcd, c.nodes, secret, *opts,
                                       site=c.site, cluster=c.cluster)
            self.coordinator = secured_coordinator(base, env, etcd, c.cluster, secret,
                                                   self.admin_token_file, *coord_opts,
                                                   replica="coord-0")
        else:
            self.group = LocalGroup(base / "group", env, etcd, c.nodes, *opts, site=c.site,
                                    cluster=c.cluster)
            self.coordinator = CoordinatorProcess(base, env, etcd, c.cluster, "coord-0",
                                                  *coord_opts)
        self.group.start()
        self.coordinator.start()
        self.coordinator.auth = {"Authorization": f"Bearer {self.admin_token}"} if c.auth else {}
        if c.auth:
            reads = [a for b in c.buckets for a in ("--read", f"s3://{b}/")]
            self.tenant = create_tenant(self.coordinator, self.admin_token, "local", *reads)

    def dead(self) -> str | None:
        """Return the name of a part whose process has exited, if any."""
        parts = [("SeaweedFS", self.s3.proc), ("etcd", self.etcd.proc)]
        if self.group is not None:
            parts += [(f"node {i}", n.proc) for i, n in enumerate(self.group.nodes)]
        if self.coordinator is not None:
            parts.append(("coordinator", self.coordinator.proc))
        return next((name for name, p in parts if p is None or p.poll() is not None), None)

    def stop(self) -> None:
        """Stop the coordinator, the nodes, etcd and SeaweedFS, in that order."""
        if self.coordinator is not None:
            try:
                self.coordinator.stop()
            except RuntimeError:
                pass  # killed after its grace period
        if self.group is not None:
            self.group.stop()
        self.etcd.stop()
        self.s3.stop()

    def exports(self) -> dict[str, str]:
        """Return the environment that points S3 clients and cachectl at the stack."""
        assert self.group is not None and self.coordinator is not None
        node = self.group.nodes[0]
        env = {"AWS_ENDPOINT_URL": node.s3_url, "AWS_REGION": self.s3.region,
               "AWS_ACCESS_KEY_ID": self.s3.access_key,
               "AWS_SECRET_ACCESS_KEY": self.s3.secret_key}
        if self.tenant is not None:
            env["AWS_ACCESS_KEY_ID"] = self.tenant.key_id
            env["AWS_SECRET_ACCESS_KEY"] = self.tenant.secret
        env |= {"CACHECTL_NODES": ",".join(self.group.seeds),
                "CACHECTL_ETCD": self.etcd.endpoint, "CACHECTL_CLUSTER": self.config.cluster,
                "CACHECTL_SITE": self.config.site,
                "CACHECTL_COORDINATOR": self.coordinator.url}
        if self.tenant is not None:
            env["CACHECTL_TOKEN"] = self.tenant.token
        return env

    def describe(self) -> str:
        """Return the endpoints and the `export` lines, as the command prints them."""
        assert self.group is not None and self.coordinator is not None
        c, s3 = self.config, self.s3
        lines = [f"blockcache stack: {len(self.group.nodes)} nodes of site {c.site!r}, cluster "
                 f"{c.cluster!r}, files under {c.base_dir}",
                 f"  origin (SeaweedFS S3)  {s3.endpoint_url}   keys {s3.access_key} / "
                 f"{s3.secret_key}   buckets {', '.join(c.buckets)}",
                 f"  etcd                   {self.etcd.endpoint}"]
        for i, n in enumerate(self.group.nodes):
            lines.append(f"  node n{i}                http {n.url}   s3 {n.s3_url}   "
                         f"grpc 127.0.0.1:{n.grpc_port}")
        lines.append(f"  coordinator            {self.coordinator.url}")
        if self.admin_token_file is not None:
            lines.append(f"  admin token            {self.admin_token_file} (auth on; tenant "
                         "'local' reads every bucket: its keys below)")
        lines += ["", "# read through the cache (S3 API of n0) and run cachectl:"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.exports().items()]
        lines += ["", "# put a model into the origin:",
                  f"AWS_ENDPOINT_URL={s3.endpoint_url} AWS_ACCESS_KEY_ID={s3.access_key} "
                  f"AWS_SECRET_ACCESS_KEY={s3.secret_key} "
                  f"aws s3 cp --recursive ./my-model s3://{c.buckets[0]}/my-model/v1/"]
        return "\n".join(lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
