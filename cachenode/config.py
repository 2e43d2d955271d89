"""Node configuration: one frozen dataclass from flags with env fallbacks, validated once."""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

from cachenode.names import KEY_POLICIES

ENV_PREFIX = "CACHENODE_"
MAX_WEIGHT = 10_000  # x 3 virtual nodes each: ring builds stay fast
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_DURATIONS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the option and the problem."""


def parse_size(text: str) -> int:
    """Return the byte count of a size such as '20GiB', '4MiB', '500MB' or '1048576'."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ConfigError(f"{text!r} is not a size (examples: 20GiB, 4MiB, 500MB, 1048576)")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    """Return a byte count as parse_size reads it back, in the largest exact binary unit."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n and n % _UNITS[unit.lower()] == 0:
            return f"{n // _UNITS[unit.lower()]}{unit}"
    return str(n)


def parse_duration(text: str) -> float:
    """Return the seconds of a duration such as '10s', '500ms', '2m' or '1.5'."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _DURATIONS:
        raise ConfigError(f"{text!r} is not a duration (examples: 10s, 500ms, 2m)")
    return float(m.group(1)) * _DURATIONS[unit]


@dataclass(frozen=True)
class FreeFloor:
    """Free space the data dir's filesystem keeps: a share of its size and/or bytes, the lesser."""

    percent: float | None = None
    bytes: int | None = None

    def __post_init__(self) -> None:
        """Reject a share outside 0-90% or a negative size."""
        if self.percent is not None and not 0 <= self.percent <= 90:
            raise ConfigError(f"--min-free-disk {self.percent:g}% must be between 0% and 90%")
        if self.bytes is not None and self.bytes < 0:
            raise ConfigError("--min-free-disk must not be negative")

    def resolve(self, total_bytes: int) -> int:
        """Return the floor in bytes on a filesystem of `total_bytes`."""
        parts = [] if self.percent is None else [int(total_bytes * self.percent / 100)]
        parts += [] if self.bytes is None else [self.bytes]
        return min(parts, default=0)

    def __str__(self) -> str:
        parts = [] if self.percent is None else [f"{self.percent:g}%"]
        return ",".join(parts + ([] if self.bytes is None else [format_size(self.bytes)]))


def parse_free_floor(text: str) -> FreeFloor:
    """Return the floor of '5%', '1GiB' or '5%,1GiB' (whichever is smaller on the disk)."""
    percent: float | None = None
    size: int | None = None
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*", part)
        if m is not None and percent is None:
            percent = float(m.group(1))
        elif m is None and size is None:
            size = parse_size(part)
        else:
            raise ConfigError(f"{text!r} is not a free-space floor (examples: 5%, 1GiB, "
                              "5%,1GiB)")
    return FreeFloor(percent, size)


def parse_hostport(text: str) -> tuple[str, int]:
    """Return (host, port) from 'host:port' (port 0 picks a free port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{text!r} is not host:port (example: 0.0.0.0:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{text!r} is not a boolean (use true or false)")


def _urls(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in str(text).split(",") if u.strip())
    for u in urls:
        if not re.fullmatch(r"https?://[^/\s]+/?", u):
            raise ConfigError(f"{u!r} is not an etcd URL (example: http://etcd:2379)")
    return urls


def _name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", str(text)):
        raise ConfigError(f"{text!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return str(text)


def _opt(flag: str, help: str, parse: Any = str, env: str | None = None) -> Any:
    """Describe a config field's flag, help text, parser and extra env variable."""
    return {"flag": flag, "help": help, "parse": parse, "env": env}


@dataclass(frozen=True)
class NodeConfig:
    """Everything a cache node needs to start; sizes in bytes, times in seconds."""

    data_dir: Path = field(default=Path("./cachenode-data"), metadata=_opt(
        "--data-dir", "directory for block files and the index", Path))
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
        "--readahead", "blocks fetched ahead of the one being sent, per response", int))
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
        "same blocks", _name))
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
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"--log-level {self.log_level!r} is not DEBUG/INFO/WARNING/ERROR")

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None,
                  env: Mapping[str, str] | None = None) -> NodeConfig:
        """Return the config from flags, then CACHENODE_* / AWS_* env, then defaults."""
        return load_config(cls, build_parser(), ENV_PREFIX, argv, env)


C = TypeVar("C")


def load_config(cls: type[C], parser: argparse.ArgumentParser, env_prefix: str,
                argv: Sequence[str] | None, env: Mapping[str, str] | None) -> C:
    """Return a config dataclass from flags, then `env_prefix`* / extra env, then defaults."""
    env = os.environ if env is None else env
    ns = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        meta = f.metadata
        env_names = [env_prefix + meta["flag"][2:].replace("-", "_").upper()]
        env_names += [meta["env"]] if meta["env"] else []
        raw = getattr(ns, f.name)
        source = meta["flag"]
        if raw is None:
            found = [(n, env[n]) for n in env_names if env.get(n)]
            if not found:
                continue
            source, raw = found[0]
        try:
            values[f.name] = meta["parse"](raw)
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"{source}: {e}") from None
    return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser documenting every option of `cachenode`."""
    return make_parser(
        NodeConfig, "cachenode", ENV_PREFIX,
        "blockcache node: serves byte ranges of S3 objects from local disk blocks, "
        "filling misses from the origin once. Every option can also be set with a "
        f"{ENV_PREFIX}<OPTION> environment variable (e.g. {ENV_PREFIX}CAPACITY=20GiB). Origin "
        "credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or any botocore "
        "credential source).")


def make_parser(cls: type[Any], prog: str, env_prefix: str,
                description: str) -> argparse.ArgumentParser:
    """Return an argument parser with one flag per field of a config dataclass."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    for f in fields(cls):
        meta = f.metadata
        default: Any = f.default
        if default is MISSING:
            default = cast(Any, f.default_factory)()
        if isinstance(default, tuple):
            default = ",".join(map(str, default)) if f.name == "etcd_endpoints" else (
                f"{default[0]}:{default[1]}")
        env_name = env_prefix + meta["flag"][2:].replace("-", "_").upper()
        extra = f", or {meta['env']}" if meta["env"] else ""
        text = f"{meta['help']} [env {env_name}{extra}; default {default}]"
        p.add_argument(meta["flag"], dest=f.name, default=None, metavar=env_name[len(env_prefix):],
                       help=text.replace("%", "%%"))  # argparse %-formats help
    return p
