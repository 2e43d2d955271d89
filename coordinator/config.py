"""Coordinator configuration: one frozen dataclass from flags with env fallbacks."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cachenode.settings import (
    ConfigError,
    load_config,
    make_parser,
    parse_duration,
    parse_hostport,
    parse_size,
)
from cachenode.settings import opt as _opt
from cachenode.settings import parse_bool as _bool
from cachenode.settings import parse_name as _name
from cachenode.settings import parse_urls as _urls
from coordinator.errors import BadPattern
from coordinator.model import DEFAULT_PATTERN, compile_pattern

ENV_PREFIX = "CACHECOORD_"


def _path(text: str) -> Path | None:
    """Return a file path, or None for an empty one."""
    return Path(text) if str(text).strip() else None


def _default_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything a coordinator replica needs; sizes in bytes, times in seconds."""

    etcd_endpoints: tuple[str, ...] = field(default=(), metadata=_opt(
        "--etcd", "etcd URL(s), comma-separated (required): all state lives there", _urls))
    cluster: str = field(default="default", metadata=_opt(
        "--cluster", "cluster name: the etcd key space /blockcache/<cluster>/", _name))
    http_addr: tuple[str, int] = field(default=("0.0.0.0", 8070), metadata=_opt(
        "--http", "host:port of the HTTP API (cachectl) and /metrics", parse_hostport))
    replica_id: str = field(default_factory=_default_id, metadata=_opt(
        "--id", "this replica's name in the election (unique per replica: a pod name)", str,
        shown="<hostname>-<pid>"))
    lease_ttl_s: float = field(default=10.0, metadata=_opt(
        "--lease-ttl", "leader lease TTL: a dead leader is replaced within it", parse_duration))
    origin_endpoint_url: str = field(default="", metadata=_opt(
        "--origin-endpoint", "S3 endpoint URL of the origin (for listing); empty = AWS", str,
        "AWS_ENDPOINT_URL"))
    origin_region: str = field(default="", metadata=_opt(
        "--origin-region", "S3 region of the origin", str, "AWS_REGION"))
    model_pattern: str = field(default=DEFAULT_PATTERN, metadata=_opt(
        "--model-pattern", "how <bucket>/<prefix> names a model and a version: {model} is "
        "one or more path segments, {version} one, * any one, the rest literal", str))
    keep_versions: int = field(default=2, metadata=_opt(
        "--keep", "ready versions kept per model per site unless a site sets its own", int))
    batch_blocks: int = field(default=8, metadata=_opt(
        "--batch-blocks", "blocks per warm request to a node", int))
    node_concurrency: int = field(default=2, metadata=_opt(
        "--node-concurrency", "warm requests in flight per node", int))
    site_inflight_blocks: int = field(default=64, metadata=_opt(
        "--site-inflight-blocks", "blocks being warmed at once per site: the cap on "
        "origin concurrency a warmup causes", int))
    site_origin_bytes_per_s: int = field(default=0, metadata=_opt(
        "--site-origin-rate", "cap on origin bytes/s a warmup causes per site (e.g. 500MB; "
        "0 = no cap)", parse_size))
    max_running_jobs: int = field(default=4, metadata=_opt(
        "--max-running-jobs", "jobs run at once; the others wait as pending", int))
    block_attempts: int = field(default=6, metadata=_opt(
        "--block-attempts", "attempts per block before the job reports it failed", int))
    retry_base_s: float = field(default=1.0, metadata=_opt(
        "--retry-base", "wait before the first retry round; doubles each round (max 30s)",
        parse_duration))
    node_timeout_s: float = field(default=120.0, metadata=_opt(
        "--node-timeout", "deadline of one warm or evict request to a node", parse_duration))
    cluster_secret_file: Path | None = field(default=None, metadata=_opt(
        "--cluster-secret-file", "file holding the cache group's cluster secret (the nodes' "
        "--cluster-secret-file): /_warm and /_evict are signed with it; empty = unsigned",
        _path))
    admin_token_file: Path | None = field(default=None, metadata=_opt(
        "--admin-token-file", "file holding the admin token (16+ characters): with it every "
        "API route but /healthz (and /metrics, unless --metrics-auth) needs a token, the "
        "admin's or a tenant's (Authorization: Bearer); empty = the API is open to anyone "
        "who reaches it (a lab; a WARNING at start)", _path))
    metrics_auth: bool = field(default=False, metadata=_opt(
        "--metrics-auth", "with --admin-token-file, /metrics needs a token too", _bool))
    audit_log: Path | None = field(default=None, metadata=_opt(
        "--audit-log", "file the audit log (one JSON line per warmup, pin, unpin, evict, "
        "cancel, policy, tenant or key change) is appended to; empty = stderr", _path))
    max_objects: int = field(default=1_000_000, metadata=_opt(
        "--max-objects", "most objects one warmup may list", int))
    reconcile_s: float = field(default=2.0, metadata=_opt(
        "--reconcile-interval", "how often the leader checks jobs, cancels and eviction "
        "policies", parse_duration))
    log_level: str = field(default="INFO", metadata=_opt(
        "--log-level", "DEBUG, INFO, WARNING or ERROR", str.upper))

    def __post_init__(self) -> None:
        """Reject settings that cannot work, naming the option."""
        if not self.etcd_endpoints:
            raise ConfigError("--etcd is required (e.g. http://127.0.0.1:2379)")
        try:
            compile_pattern(self.model_pattern)
        except BadPattern as e:
            raise ConfigError(f"--model-pattern: {e}") from None
        for flag, value, lo, hi in (("--keep", self.keep_versions, 1, 1000),
                                    ("--batch-blocks", self.batch_blocks, 1, 256),
                                    ("--node-concurrency", self.node_concurrency, 1, 64),
                                    ("--site-inflight-blocks", self.site_inflight_blocks, 1,
                                     100_000),
                                    ("--block-attempts", self.block_attempts, 1, 100),
                                    ("--max-running-jobs", self.max_running_jobs, 1, 100),
                                    ("--max-objects", self.max_objects, 1, 100_000_000)):
            if not lo <= value <= hi:
                raise ConfigError(f"{flag} must be between {lo} and {hi}")
        for flag, secs in (("--lease-ttl", self.lease_ttl_s), ("--node-timeout",
                           self.node_timeout_s), ("--reconcile-interval", self.reconcile_s)):
            if secs <= 0:
                raise ConfigError(f"{flag} must be more than 0")
        if self.lease_ttl_s < 2:
            raise ConfigError("--lease-ttl must be at least 2s")
        if self.retry_base_s < 0 or self.site_origin_bytes_per_s < 0:
            raise ConfigError("--retry-base and --site-origin-rate must not be negative")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"--log-level {self.log_level!r} is not DEBUG/INFO/WARNING/ERROR")

    @property
    def etcd_hostports(self) -> list[tuple[str, int]]:
        """Return the etcd endpoints as (host, port)."""
        return [parse_hostport(u.split("://", 1)[1].rstrip("/")) for u in self.etcd_endpoints]

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None,
                  env: Mapping[str, str] | None = None) -> CoordinatorConfig:
        """Return the config from flags, then CACHECOORD_* / AWS_* env, then defaults."""
        parser = make_parser(
            cls, "cachecoordinator", ENV_PREFIX,
            "blockcache coordinator: runs warmup jobs and evicts old model versions per site; "
            "state and leader election in etcd, so several replicas can run. Every option can "
            f"also be set with a {ENV_PREFIX}<OPTION> environment variable. Origin credentials "
            "come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or any botocore source).")
        return load_config(cls, parser, ENV_PREFIX, argv, env)
