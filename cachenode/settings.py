"""Settings machinery shared by every command: value parsers, and config dataclasses
loaded from flags, then environment variables, then defaults, each failing loudly."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar, cast

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


def format_duration(seconds: float) -> str:
    """Return seconds as parse_duration reads them back: '10s', '500ms', '2m', '1.5s'."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def shown_default(value: Any, parse: Any) -> str:
    """Return a default as a person writes it on the command line (20GiB, 10s, off, none)."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if parse is parse_size:
        return format_size(int(value))
    if parse is parse_duration:
        return format_duration(float(value))
    if isinstance(value, tuple):  # a listener's (host, port)
        return f"{value[0]}:{value[1]}"
    return str(value)


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


def parse_bool(text: str) -> bool:
    """Return a boolean from true/false, yes/no, on/off, 1/0."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{text!r} is not a boolean (use true or false)")


def parse_urls(text: str) -> tuple[str, ...]:
    """Return the comma-separated http(s) URLs of etcd endpoints."""
    urls = tuple(u.strip() for u in str(text).split(",") if u.strip())
    for u in urls:
        if not re.fullmatch(r"https?://[^/\s]+/?", u):
            raise ConfigError(f"{u!r} is not an etcd URL (example: http://etcd:2379)")
    return urls


def parse_name(text: str) -> str:
    """Return a name of 1-63 letters, digits, '.', '_' or '-'."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", str(text)):
        raise ConfigError(f"{text!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return str(text)


def opt(flag: str, help: str, parse: Any = str, env: str | None = None,
        shown: str | None = None) -> Any:
    """Describe a config field's flag, help text, parser, extra env variable and, for a
    default computed at start, how --help names it."""
    return {"flag": flag, "help": help, "parse": parse, "env": env, "shown": shown}


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


def make_parser(cls: type[Any], prog: str, env_prefix: str,
                description: str) -> argparse.ArgumentParser:
    """Return an argument parser with one flag per field of a config dataclass, and --version."""
    from cachenode.version import version_line

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--version", action="version", version=version_line(prog))
    for f in fields(cls):
        meta = f.metadata
        default: Any = f.default
        if default is MISSING:
            default = cast(Any, f.default_factory)()
        shown = meta.get("shown") or ((",".join(default) or "none")
                                      if f.name == "etcd_endpoints"
                                      else shown_default(default, meta["parse"]))
        env_name = env_prefix + meta["flag"][2:].replace("-", "_").upper()
        extra = f", or {meta['env']}" if meta["env"] else ""
        text = f"{meta['help']} [env {env_name}{extra}; default {shown}]"
        p.add_argument(meta["flag"], dest=f.name, default=None, metavar=env_name[len(env_prefix):],
                       help=text.replace("%", "%%"))  # argparse %-formats help
    return p
