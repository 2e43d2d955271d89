"""NodeConfig: size/duration/address parsing, flags over env over defaults, loud failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachenode.config import (
    ConfigError,
    FreeFloor,
    NodeConfig,
    format_size,
    parse_duration,
    parse_free_floor,
    parse_hostport,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]
MiB, GiB = 2**20, 2**30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("0", 0),
        ("4MiB", 4 * MiB),
        ("4mib", 4 * MiB),
        ("20GiB", 20 * GiB),
        ("1TiB", 2**40),
        ("64KiB", 64 * 1024),
        ("500MB", 500 * 10**6),
        ("2G", 2 * 10**9),
        ("10k", 10_000),
        ("7b", 7),
        ("1.5GiB", int(1.5 * GiB)),
        (" 8 MiB ", 8 * MiB),
    ],
)
def test_parse_size_good(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1", "1XB", "MiB", "1 2", "1e9", "0x10", "1,5G"])
def test_parse_size_bad(text: str) -> None:
    with pytest.raises(ConfigError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "percent", "size"),
    [("5%", 5.0, None), ("0.5 %", 0.5, None), ("1GiB", None, GiB), ("0", None, 0),
     ("5%,1GiB", 5.0, GiB), ("10GiB, 2%", 2.0, 10 * GiB), ("90%", 90.0, None)],
)
def test_parse_free_floor_good(text: str, percent: float | None, size: int | None) -> None:
    assert parse_free_floor(text) == FreeFloor(percent, size)


@pytest.mark.parametrize("text", ["", "lots", "5%,6%", "1GiB,2GiB", "-5%", "5%%", "%"])
def test_parse_free_floor_bad(text: str) -> None:
    with pytest.raises(ConfigError, match="not a"):
        parse_free_floor(text)


def test_free_floor_is_the_lesser_part_on_the_disk_at_hand() -> None:
    default = NodeConfig().min_free_disk
    assert default == FreeFloor(5.0, GiB)
    assert default.resolve(20 * MiB) == MiB  # a small disk: 5%
    assert default.resolve(4 * 10**12) == GiB  # an NVMe drive: 1 GiB, not 200 GB
    assert FreeFloor(None, 10 * GiB).resolve(MiB) == 10 * GiB  # a size is a size
    assert FreeFloor().resolve(GiB) == 0
    assert str(default) == "5%,1GiB" and parse_free_floor(str(default)) == default
    with pytest.raises(ConfigError, match="--min-free-disk"):
        FreeFloor(95.0)


@pytest.mark.parametrize(("n", "text"), [(0, "0"), (1023, "1023"), (4 * MiB, "4MiB"),
                                         (GiB, "1GiB"), (3 * 2**40, "3TiB"), (1536, "1536")])
def test_format_size_reads_back(n: int, text: str) -> None:
    assert format_size(n) == text and parse_size(text) == n


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10", 10.0), ("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("2min", 120.0),
     ("1h", 3600.0), ("1.5", 1.5), ("0.2s", 0.2), ("0", 0.0)],
)
def test_parse_duration_good(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "soon", "-1s", "10d", "1..5s", "s"])
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), (":9090", ("0.0.0.0", 9090)),
     ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:443", ("::1", 443)),
     ("node-1.example:65535", ("node-1.example", 65535))],
)
def test_parse_hostport_good(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["8080", "host", "host:", "host:http", "host:65536",
                                  "host:-1"])
def test_parse_hostport_bad(text: str) -> None:
    with pytest.raises(ConfigError, match="not host:port"):
        parse_hostport(text)


def test_defaults() -> None:
    cfg = NodeConfig.from_args([], env={})
    assert cfg == NodeConfig()
    assert cfg.block_size_bytes == 4 * MiB and cfg.capacity_bytes == 20 * GiB
    assert cfg.http_addr == ("0.0.0.0", 8080) and cfg.grpc_addr == ("0.0.0.0", 9090)


def test_flags_parse_every_kind() -> None:
    cfg = NodeConfig.from_args(
        ["--data-dir", "/tmp/x", "--capacity", "1GiB", "--block-size", "1MiB",
         "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--metadata-ttl", "500ms",
         "--origin-endpoint", "http://127.0.0.1:8333", "--fsync", "yes",
         "--max-concurrent-fills", "3", "--log-level", "debug", "--min-free-disk", "2%",
         "--disk-check-interval", "250ms"],
        env={})
    assert cfg.data_dir == Path("/tmp/x")
    assert cfg.capacity_bytes == GiB and cfg.block_size_bytes == MiB
    assert cfg.http_addr == ("127.0.0.1", 0) and cfg.grpc_addr == ("127.0.0.1", 0)
    assert cfg.metadata_ttl_s == pytest.approx(0.5)
    assert cfg.origin_endpoint_url == "http://127.0.0.1:8333"
    assert cfg.fsync is True and cfg.max_concurrent_fills == 3 and cfg.log_level == "DEBUG"
    assert cfg.min_free_disk == FreeFloor(2.0) and cfg.disk_check_interval_s == 0.25


def test_connection_and_key_options() -> None:
    cfg = NodeConfig.from_args([], env={})
    assert cfg.origin_keys == "strict" and cfg.max_connections == 0
    assert cfg.header_timeout_s == 10.0 and cfg.idle_timeout_s == 75.0
    cfg = NodeConfig.from_args(["--origin-keys", "Verbatim", "--header-timeout", "500ms",
                                "--idle-timeout", "2m", "--max-connections", "300"], env={})
    assert cfg.origin_keys == "verbatim" and cfg.max_connections == 300
    assert cfg.header_timeout_s == pytest.approx(0.5) and cfg.idle_timeout_s == 120.0


def test_env_fallback() -> None:
    cfg = NodeConfig.from_args([], env={"CACHENODE_CAPACITY": "2GiB",
                                        "CACHENODE_METADATA_TTL": "3s",
                                        "AWS_ENDPOINT_URL": "http://origin:9000",
                                        "AWS_REGION": "eu-central-1",
                                        "CACHENODE_MIN_FREE_DISK": "5%,10GiB"})
    assert cfg.capacity_bytes == 2 * GiB
    assert cfg.min_free_disk == FreeFloor(5.0, 10 * GiB)
    assert cfg.metadata_ttl_s == 3.0
    assert cfg.origin_endpoint_url == "http://origin:9000"
    assert cfg.origin_region == "eu-central-1"


def test_flags_override_env() -> None:
    env = {"CACHENODE_CAPACITY": "2GiB", "AWS_ENDPOINT_URL": "http://from-env:9000"}
    cfg = NodeConfig.from_args(["--capacity", "3GiB", "--origin-endpoint", "http://flag:1"],
                               env=env)
    assert cfg.capacity_bytes == 3 * GiB
    assert cfg.origin_endpoint_url == "http://flag:1"


def test_cachenode_env_beats_aws_env() -> None:
    cfg = NodeConfig.from_args([], env={"AWS_ENDPOINT_URL": "http://aws:1",
                                        "CACHENODE_ORIGIN_ENDPOINT": "http://ours:2"})
    assert cfg.origin_endpoint_url == "http://ours:2"


def test_flag_overrides_invalid_env() -> None:
    # A bad env value that a flag replaces is never parsed.
    cfg = NodeConfig.from_args(["--capacity", "1GiB"], env={"CACHENODE_CAPACITY": "lots"})
    assert cfg.capacity_bytes == GiB


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--capacity", "lots"], {}, "--capacity"),
        ([], {"CACHENODE_CAPACITY": "lots"}, "CACHENODE_CAPACITY"),
        (["--block-size", "1KiB"], {}, "--block-size"),
        (["--block-size", "1GiB"], {}, "--block-size"),
        (["--capacity", "4MiB"], {}, "--capacity"),  # less than 2 blocks
        (["--http", "nowhere"], {}, "--http"),
        (["--grpc", "127.0.0.1:99999"], {}, "--grpc"),
        (["--metadata-ttl", "forever"], {}, "--metadata-ttl"),
        ([], {"CACHENODE_METADATA_TTL": "-3s"}, "CACHENODE_METADATA_TTL"),
        (["--max-concurrent-fills", "0"], {}, "--max-concurrent-fills"),
        (["--max-concurrent-fills", "many"], {}, "--max-concurrent-fills"),
        (["--max-waiting-fills", "0"], {}, "--max-waiting-fills"),
        (["--readahead", "65"], {}, "--readahead"),
        (["--fsync", "maybe"], {}, "--fsync"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--origin-keys", "lenient"], {}, "--origin-keys"),
        (["--header-timeout", "0s"], {}, "--header-timeout"),
        ([], {"CACHENODE_IDLE_TIMEOUT": "soon"}, "CACHENODE_IDLE_TIMEOUT"),
        (["--max-connections", "-1"], {}, "--max-connections"),
        (["--min-free-disk", "95%"], {}, "--min-free-disk"),
        ([], {"CACHENODE_MIN_FREE_DISK": "half"}, "CACHENODE_MIN_FREE_DISK"),
        (["--disk-check-interval", "0"], {}, "--disk-check-interval"),
    ],
)
def test_invalid_values_name_the_option(argv: list[str], env: dict[str, str],
                                        names: str) -> None:
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_args(argv, env=env)
    assert names in str(info.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="--block-size"):
        NodeConfig(block_size_bytes=1000)
    with pytest.raises(ConfigError, match="--metadata-ttl"):
        NodeConfig(metadata_ttl_s=-1.0)
    for name in ("fill_timeout_s", "origin_connect_timeout_s", "origin_read_timeout_s"):
        flag = "--" + name.removesuffix("_s").replace("_", "-")
        with pytest.raises(ConfigError, match=f"{flag} must be more than 0"):
            NodeConfig(**{name: 0.0})  # type: ignore[arg-type]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("CACHENODE_", "AWS_"))}


def _cachenode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cachenode", *args], check=False, cwd=REPO,
                          env=env if env is not None else _clean_env(),
                          capture_output=True, text=True, timeout=30)


def test_help_mentions_every_flag() -> None:
    proc = _cachenode("--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--data-dir", "--capacity", "--block-size", "--http", "--grpc",
                 "--metadata-ttl", "--origin-endpoint", "--max-concurrent-fills",
                 "--fill-timeout", "--readahead", "--origin-keys", "--header-timeout",
                 "--idle-timeout", "--max-connections", "--min-free-disk",
                 "--disk-check-interval"):
        assert flag in proc.stdout, flag
    assert "CACHENODE_CAPACITY" in proc.stdout and "AWS_ENDPOINT_URL" in proc.stdout


def test_invalid_flag_value_exits_2_with_reason() -> None:
    proc = _cachenode("--capacity", "lots", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0")
    assert proc.returncode == 2
    assert "invalid configuration" in proc.stderr
    assert "--capacity" in proc.stderr and "'lots' is not a size" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_invalid_env_value_exits_2_with_reason() -> None:
    env = _clean_env() | {"CACHENODE_BLOCK_SIZE": "1KiB"}
    proc = _cachenode(env=env)
    assert proc.returncode == 2
    assert "--block-size" in proc.stderr and "64KiB" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_flag_exits_2() -> None:
    proc = _cachenode("--no-such-flag")
    assert proc.returncode == 2
    assert "--no-such-flag" in proc.stderr
