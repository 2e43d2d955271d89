"""Node configuration: one frozen dataclass from flags with env fallbacks, validated once."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cachenode.names import KEY_POLICIES
from cachenode.settings import (  # re-exported: the coordinator's config is built from them
    ConfigError,
    FreeFloor,
    format_size,
    load_config,
    make_parser,
    parse_duration,
    parse_free_floor,
    parse_hostport,
    parse_size,
)
from cachenode.settings import opt as _opt
from cachenode.settings import parse_bool as _bool
from cachenode.settings import parse_name as _name
from cachenode.settings import parse_urls as _urls

__all__ = ["ConfigError", "FreeFloor", "NodeConfig", "format_size", "load_config",
           "make_parser", "parse_duration", "parse_free_floor", "parse_hostport", "parse_size"]

ENV_PREFIX = "CACHENODE_"
MAX_WEIGHT = 10_000  # x 3 virtual nodes each: ring builds stay fast


def parse_listener(text: str) -> tuple[str, int] | None:
    """Return (host, port) of an optional listener; '', 'off' or 'none' turn it off."""
    if str(text).strip().lower() in ("", "off", "none"):
        return None
    return parse_hostport(text)


def parse_domain(text: str) -> str:
    """Return a DNS domain such as 's3.cache.local' ('' = none), lower case."""
    value = str(text).strip().lower().rstrip(".")
    labels = value.split(".")
    if value and not all(0 < len(x) <= 63 and x.isascii() and x.replace("-", "").isalnum()
                         for x in labels):
        raise ConfigError(f"{text!r} is not a domain name (example: s3.blockcache.local)")
    return value


def _path(text: str) -> Path | None:
    """Return a file path, or None for an empty one."""
    return Path(text) if str(text).strip() else None


@dataclass(frozen=True)
class NodeConfig:
    """Everything a cache node needs to start; sizes in bytes, times in seconds."""

    data_dir: Path = field(default=Path("./cachenode-data"), metadata=_opt(
        "--data-dir", "directory for block files and the index", Path,
        shown="./cachenode-data"))
    capacity_bytes: int = field(default=20 * 2**30, metadata=_opt(
        "--capacity", "most bytes of blocks kept on disk (e.g. 20GiB)", parse_size))
    min_free_disk: FreeFloor = field(default=FreeFloor(5.0, 2**30), metadata=_opt(
        "--min-free-disk", "free space kept on the data dir's filesystem, as a share of it "
        "and/or bytes, the lesser (e.g. 5%, 10GiB, 5%,1GiB): blocks are evicted to keep it, "
        "and the store holds at most min(--capacity, what fits above it)", parse_free_floor))
    disk_check_interval_s: float = field(default=1.0, metadata=_opt(
        "--disk-check-interval", "how often fills look at the filesystem's free space "
        "(statvfs); a full disk (ENOSPC) and /readyz look at once", parse_duration))
    block_size_bytes: int = field(default=4 * 2**20, metadata=_opt(
        "--block-size", "block size (e.g. 4MiB); changing it starts a new set of blocks",
        parse_size))
    http_addr: tuple[str, int] = field(default=("0.0.0.0", 8080), metadata=_opt(
        "--http", "host:port of the HTTP range API and /metrics", parse_hostport))
    grpc_addr: tuple[str, int] = field(default=("0.0.0.0", 9090), metadata=_opt(
        "--grpc", "host:port of the gRPC block service", parse_hostport))
    s3_addr: tuple[str, int] | None = field(default=("0.0.0.0", 9000), metadata=_opt(
        "--s3", "host:port of the S3-compatible read API (AWS_ENDPOINT_URL of loaders); "
        "empty or 'off' = no S3 listener", parse_listener))
    s3_domain: str = field(default="", metadata=_opt(
        "--s3-domain", "domain of virtual-hosted S3 addressing: a Host of "
        "<bucket>.<domain> names the bucket (empty = path-style only, which always works)",
        parse_domain))
    metadata_ttl_s: float = field(default=10.0, metadata=_opt(
        "--metadata-ttl", "how long object size/ETag from a HEAD is trusted (e.g. 10s); "
        "an overwrite is seen at most this late", parse_duration))
    origin_endpoint_url: str = field(default="", metadata=_opt(
        "--origin-endpoint", "S3 endpoint URL of the origin; empty = AWS", str, "AWS_ENDPOINT_URL"))
    origin_region: str = field(default="", metadata=_opt(
        "--origin-region", "S3 region of the origin; empty = botocore's default chain "
        "(AWS_DEFAULT_REGION, profile)", str, "AWS_REGION"))
    max_concurrent_fills: int = field(default=16, metadata=_opt(
        "--max-concurrent-fills", "origin GETs in flight at once", int))
    max_waiting_fills: int = field(default=4096, metadata=_opt(
        "--max-waiting-fills", "distinct blocks queued for a fill before new misses get 503", int))
    fill_timeout_s: float = field(default=60.0, metadata=_opt(
        "--fill-timeout", "deadline for one block fill from origin, retries included",
        parse_duration))
    origin_connect_timeout_s: float = field(default=3.0, metadata=_opt(
        "--origin-connect-timeout", "TCP connect timeout to the origin", parse_duration))
    origin_read_timeout_s: float = field(default=10.0, metadata=_opt(
        "--origin-read-timeout", "socket read timeout on origin responses; an origin that "
        "stays silent this long counts as down for 1s", parse_duration))
    origin_max_attempts: int = field(default=3, metadata=_opt(
        "--origin-max-attempts", "attempts per origin call: 5xx, throttling and timeouts are "
        "retried with backoff; a refused connection is not, and fails misses at once for 1s",
        int))
    readahead_blocks: int = field(default=4, metadata=_opt(
        "--readahead", "blocks fetched ahead of the one being sent, per response, at least "
        "(0: none)", int))
    readahead_max_blocks: int = field(default=16, metadata=_opt(
        "--readahead-max", "blocks a response may fetch ahead when its reader keeps waiting "
        "for blocks not yet started (a high-latency origin); at least --readahead", int))
    memory_budget_bytes: int = field(default=128 * 2**20, metadata=_opt(
        "--memory-budget", "block bytes all responses together may hold in memory (blocks "
        "from other nodes, until sent; blocks stored here are sent from their files)",
        parse_size))
    send_timeout_s: float = field(default=30.0, metadata=_opt(
        "--send-timeout", "a reader that takes no bytes for this long is disconnected; also "
        "the longest a response waits for memory budget before a 503", parse_duration))
    scrub_rate_bytes: int = field(default=32 * 2**20, metadata=_opt(
        "--scrub-rate", "bytes per second of cold blocks re-read and checked against their "
        "CRC-32C in the background (e.g. 32MiB; 0 = no scrub)", parse_size))
    fsync: bool = field(default=False, metadata=_opt(
        "--fsync", "fsync each block before it becomes visible (survives power loss)", _bool))
    origin_keys: str = field(default="strict", metadata=_opt(
        "--origin-keys", "strict: refuse (400) keys an origin that stores keys as paths "
        "would read as another key or cannot hold (empty segments as in a//b, a leading or "
        "trailing '/', a backslash, a segment over 255 bytes; SeaweedFS); verbatim: pass "
        "every key as is (AWS S3 keeps them distinct)",
        str.lower))
    header_timeout_s: float = field(default=10.0, metadata=_opt(
        "--header-timeout", "a request head (request line and headers) must arrive within "
        "this, counted from the accept or from the first byte of a kept-alive connection's "
        "next request; else 408 and the connection is closed (also the time a /_warm or "
        "/_evict body may take; gRPC: the HTTP/2 handshake)",
        parse_duration))
    idle_timeout_s: float = field(default=75.0, metadata=_opt(
        "--idle-timeout", "a kept-alive connection with no request in flight is closed after "
        "this (HTTP keep-alive, gRPC max connection idle)", parse_duration))
    max_connections: int = field(default=0, metadata=_opt(
        "--max-connections", "open HTTP connections at most; one more is answered 503 with "
        "Retry-After and closed; 0 = derived from the open-files limit (RLIMIT_NOFILE), "
        "leaving fds for block files, origin and peer connections", int))
    etcd_endpoints: tuple[str, ...] = field(default=(), metadata=_opt(
        "--etcd", "etcd URL(s), comma-separated, to join a cache group; empty = run alone",
        _urls))
    cluster: str = field(default="default", metadata=_opt(
        "--cluster", "cluster name: the etcd prefix /blockcache/<cluster>/", _name))
    site: str = field(default="default", metadata=_opt(
        "--site", "site (cache group) this node serves; one ring per site", _name))
    node_id: str = field(default_factory=socket.gethostname, metadata=_opt(
        "--node-id", "stable node id (a StatefulSet pod name): a restarted node owns the "
        "same blocks", _name, shown="this machine's hostname"))
    weight: int = field(default=100, metadata=_opt(
        "--weight", "share of the ring relative to other nodes (100 = a normal node, 200 = "
        "twice its blocks; 0 = owns nothing)", int))
    advertise_host: str = field(default="", metadata=_opt(
        "--advertise-host", "host other nodes and clients use to reach this one; empty = "
        "the --http host, or this machine's name if that is 0.0.0.0", str))
    peer_timeout_s: float = field(default=65.0, metadata=_opt(
        "--peer-timeout", "deadline for reading one block from another node (its fill "
        "included); a dead or hung peer is noticed sooner, by refused connections or "
        "missed keepalive pings", parse_duration))
    peer_memory_blocks: int = field(default=16, metadata=_opt(
        "--peer-memory-blocks", "blocks read from other nodes kept in memory for readers just "
        "behind (memory: this many blocks)", int))
    lease_ttl_s: float = field(default=10.0, metadata=_opt(
        "--lease-ttl", "etcd lease of the node's registration: a node that dies leaves the "
        "ring this long after", parse_duration))
    etcd_connect_timeout_s: float = field(default=30.0, metadata=_opt(
        "--etcd-connect-timeout", "how long a starting node waits for etcd before it gives up",
        parse_duration))
    access_keys_file: Path | None = field(default=None, metadata=_opt(
        "--access-keys", "file of access keys, one 'ACCESS_KEY_ID SECRET [SCOPE ...]' a line "
        "(SCOPE: bucket or bucket/prefix; none: all; '#' comments; then optionally "
        "tenant=NAME quota=SIZE origin-rate=SIZE/s origin-fills=N); with it every object "
        "read and listing needs a SigV4 signature or a presigned URL of a key whose scope "
        "covers it; re-read within ~2s when it changes; empty = no keys (the node is open)",
        _path))
    cluster_secret_file: Path | None = field(default=None, metadata=_opt(
        "--cluster-secret-file", "file holding the secret the group's nodes sign their "
        "requests to each other with (peer reads, handoff questions, /_warm, /_evict); "
        "required with --access-keys in a group (--etcd)", _path))
    tenants: bool = field(default=False, metadata=_opt(
        "--tenants", "follow the cluster's tenants in etcd (created through the coordinator): "
        "every object read and listing then needs a tenant's SigV4 key, presigned URL or "
        "bearer token whose read scopes cover it (with --access-keys, the file's keys work "
        "too); needs --etcd and --cluster-secret-file, which unseals their SigV4 secrets",
        _bool))
    metrics_auth: bool = field(default=False, metadata=_opt(
        "--metrics-auth", "with credentials required (--access-keys or --tenants), /metrics "
        "needs one too (a valid key, token or cluster signature); else it stays open like "
        "/healthz and /readyz", _bool))
    log_level: str = field(default="INFO", metadata=_opt(
        "--log-level", "DEBUG, INFO, WARNING or ERROR", str.upper))

    def __post_init__(self) -> None:
        """Reject settings that cannot work, naming the option."""
        bs = self.block_size_bytes
        if not 64 * 1024 <= bs <= 256 * 2**20:
            raise ConfigError(f"--block-size {bs} must be between 64KiB and 256MiB")
        if self.capacity_bytes < 2 * bs:
            raise ConfigError(f"--capacity {self.capacity_bytes} must hold at least 2 blocks")
        if self.disk_check_interval_s <= 0:
            raise ConfigError("--disk-check-interval must be more than 0")
        for name in ("max_concurrent_fills", "max_waiting_fills", "origin_max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.readahead_blocks <= 64:
            raise ConfigError("--readahead must be between 0 and 64")
        if not 0 <= self.readahead_max_blocks <= 64:  # below --readahead: --readahead
            raise ConfigError("--readahead-max must be between 0 and 64")
        if self.metadata_ttl_s < 0:
            raise ConfigError("--metadata-ttl must not be negative")
        if self.memory_budget_bytes < bs:
            raise ConfigError(f"--memory-budget {self.memory_budget_bytes} must hold a block")
        for name in ("fill_timeout_s", "origin_connect_timeout_s", "origin_read_timeout_s",
                     "send_timeout_s", "header_timeout_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                flag = "--" + name.removesuffix("_s").replace("_", "-")
                raise ConfigError(f"{flag} must be more than 0")
        if not 0 <= self.peer_memory_blocks <= 1024:
            raise ConfigError("--peer-memory-blocks must be between 0 and 1024")
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ConfigError(f"--weight must be between 0 and {MAX_WEIGHT}")
        if self.peer_timeout_s <= 0:
            raise ConfigError("--peer-timeout must be more than 0")
        if self.etcd_connect_timeout_s <= 0:
            raise ConfigError("--etcd-connect-timeout must be more than 0")
        if self.lease_ttl_s < 2:
            raise ConfigError("--lease-ttl must be at least 2s")
        if self.max_connections < 0:
            raise ConfigError("--max-connections must not be negative (0 = from the fd limit)")
        if self.origin_keys not in KEY_POLICIES:
            raise ConfigError(f"--origin-keys {self.origin_keys!r} is not strict or verbatim")
        if self.access_keys_file and self.etcd_endpoints and not self.cluster_secret_file:
            raise ConfigError("--cluster-secret-file is required when --access-keys and "
                              "--etcd are set: without it peer reads could not be told from "
                              "forged ones")
        if self.tenants and not (self.etcd_endpoints and self.cluster_secret_file):
            raise ConfigError("--tenants needs --etcd (where tenants live) and "
                              "--cluster-secret-file (which unseals their SigV4 secrets)")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"--log-level {self.log_level!r} is not DEBUG/INFO/WARNING/ERROR")

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None,
                  env: Mapping[str, str] | None = None) -> NodeConfig:
        """Return the config from flags, then CACHENODE_* / AWS_* env, then defaults."""
        return load_config(cls, build_parser(), ENV_PREFIX, argv, env)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser documenting every option of `cachenode`."""
    return make_parser(
        NodeConfig, "cachenode", ENV_PREFIX,
        "blockcache node: serves byte ranges of S3 objects from local disk blocks, "
        "filling misses from the origin once. Every option can also be set with a "
        f"{ENV_PREFIX}<OPTION> environment variable (e.g. {ENV_PREFIX}CAPACITY=20GiB). Origin "
        "credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or any botocore "
        "credential source).")


