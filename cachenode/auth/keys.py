"""Access keys from `--access-keys FILE`: parse the file, and re-read it when it changes.

One key a line: `ACCESS_KEY_ID SECRET [SCOPE ...] [OPTION ...]`; SCOPE is `bucket` or
`bucket/prefix` (the keys starting with that prefix; none: everything the node's origin
credentials can read); OPTION is `tenant=NAME` and that tenant's site limits (`quota=`,
`origin-rate=`, `origin-fills=`: auth/key_options.py); a line whose first non-blank
character is `#` is a comment. The parser is pure; the
watcher stats the file every ~2 s (the resolved path's device, inode, size and mtime, so a
Kubernetes Secret update, which swaps a symlink, is seen) and keeps the old keys when a new
file is invalid. No message ever holds a secret: errors name the file, the line and why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cachenode.access import NO_LIMITS, Principal, Scope, TenantLimits
from cachenode.auth.key_options import KeyOptions, is_option, merge, parse_options
from cachenode.errors import BadRequest
from cachenode.names import validate_bucket
from cachenode.settings import ConfigError

log = logging.getLogger(__name__)
POLL_S = 2.0  # a changed file takes effect within this plus one read
MIN_SECRET_CHARS = 16
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{3,128}")  # no '/': it separates the credential scope


@dataclass(frozen=True, slots=True)
class AccessKey:
    """One access key: its id, its secret (never printed) and the principal it stands for."""

    key_id: str
    secret: str = field(repr=False)
    principal: Principal
    limits: TenantLimits = NO_LIMITS  # its tenant's site limits, as its line gives them


class KeyFileError(ValueError):
    """A line of an access keys file is invalid; the message says which and why."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


def parse_scope(text: str) -> Scope:
    """Return the scope of `bucket` or `bucket/prefix`."""
    bucket, _, prefix = text.partition("/")
    try:
        validate_bucket(bucket)
    except BadRequest as e:
        raise ValueError(f"scope {text[:80]!r}: {e.reason} (a scope is bucket or "
                         "bucket/prefix)") from None
    return Scope(bucket, prefix)


def parse_line(words: list[str]) -> AccessKey:
    """Return the access key of one line's words, or raise ValueError saying why."""
    if len(words) < 2:
        raise ValueError("expected ACCESS_KEY_ID SECRET [SCOPE ...]")
    key_id, secret = words[0], words[1]
    scopes = [w for w in words[2:] if not is_option(w)]
    opts = parse_options([w for w in words[2:] if is_option(w)])
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError(f"access key id {key_id[:40]!r} must be 3-128 letters, digits, "
                         "'.', '_' or '-'")
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"the secret of {key_id} is shorter than {MIN_SECRET_CHARS} "
                         "characters")
    parsed = tuple(parse_scope(s) for s in scopes)
    return AccessKey(key_id, secret, Principal(key_id, parsed, unrestricted=not parsed,
                                               tenant=opts.tenant or key_id), opts.limits)


def parse_keys(text: str) -> dict[str, AccessKey]:
    """Return the keys of an access keys file by id, or raise KeyFileError at the first bad line."""
    keys: dict[str, AccessKey] = {}
    lines: dict[str, int] = {}
    tenants: dict[str, TenantLimits] = {}  # each tenant's limits, alike on all its lines
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            key = parse_line(words)
            if key.principal.tenant:
                tenants[key.principal.tenant] = merge(tenants, opts_of(key))
        except ValueError as e:
            raise KeyFileError(number, str(e)) from None
        if key.key_id in keys:
            raise KeyFileError(number, f"access key id {key.key_id} is already on line "
                               f"{lines[key.key_id]}")
        keys[key.key_id], lines[key.key_id] = key, number
    return keys


def opts_of(key: AccessKey) -> KeyOptions:
    """Return the tenant options a key's line gave."""
    return KeyOptions(key.principal.tenant, key.limits)


def tenant_limits(keys: dict[str, AccessKey]) -> dict[str, TenantLimits]:
    """Return each tenant's limits as the keys of a (valid) file give them."""
    found: dict[str, TenantLimits] = {}
    for key in keys.values():
        if key.principal.tenant and (key.limits != NO_LIMITS
                                     or key.principal.tenant not in found):
            found[key.principal.tenant] = key.limits
    return found


class KeyFile:
    """The access keys of a file, re-read when it changes (`watch`), the last valid ones kept."""

    def __init__(self, path: Path, on_reload: Callable[[str, int], None] | None = None
                 ) -> None:
        self.path = Path(path)
        self._keys: dict[str, AccessKey] = {}  # replaced whole, never changed in place
        self._tenants: dict[str, TenantLimits] = {}  # from the same file as _keys
        self._seen: tuple[object, ...] | None = None  # what the last look found
        self._on_reload = on_reload  # (result "ok"/"invalid", keys now) -> None

    def get(self, key_id: str) -> AccessKey | None:
        """Return the key with this id, or None."""
        return self._keys.get(key_id)

    def limits(self, tenant: str) -> TenantLimits:
        """Return a tenant's site limits as the file gives them (a TenantDirectory)."""
        return self._tenants.get(tenant, NO_LIMITS)

    def __len__(self) -> int:
        return len(self._keys)

    def _stamp(self) -> tuple[object, ...]:
        real = os.path.realpath(self.path)
        st = os.stat(real)
        return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> tuple[tuple[object, ...], dict[str, AccessKey]]:
        stamp = self._stamp()
        text = Path(stamp[0]).read_text(encoding="utf-8")  # type: ignore[arg-type]
        return stamp, parse_keys(text)

    def load(self) -> None:
        """Read the file at start; raise ConfigError naming the line and why."""
        try:
            self._seen, self._keys = self._read()
            self._tenants = tenant_limits(self._keys)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--access-keys {self.path}: cannot read it: {e}") from None
        except KeyFileError as e:
            raise ConfigError(f"--access-keys {self.path}: {e}") from None
        self._report("ok")

    def poll(self) -> bool:
        """Re-read the file if it changed; return whether new keys took effect."""
        try:
            stamp = self._stamp()
            if stamp == self._seen:
                return False
            self._seen, keys = self._read()
        except (OSError, UnicodeDecodeError) as e:
            if self._seen == ("unreadable", str(e)):
                return False  # said already
            self._seen = ("unreadable", str(e))
            log.warning("--access-keys %s: cannot read it (%s); keeping the %d keys loaded "
                        "before", self.path, e, len(self._keys))
            self._report("invalid")
            return False
        except KeyFileError as e:
            log.warning("--access-keys %s changed but is invalid: %s; keeping the %d keys "
                        "loaded before", self.path, e, len(self._keys))
            self._report("invalid")
            return False
        added = sorted(keys.keys() - self._keys.keys())
        removed = sorted(self._keys.keys() - keys.keys())
        self._keys, self._tenants = keys, tenant_limits(keys)
        log.info("--access-keys %s reloaded: %d keys (added %s; removed %s)", self.path,
                 len(keys), ", ".join(added) or "none", ", ".join(removed) or "none")
        self._report("ok")
        return True

    def _report(self, result: str) -> None:
        if self._on_reload is not None:
            self._on_reload(result, len(self._keys))

    async def watch(self, interval_s: float = POLL_S) -> None:
        """Poll the file every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.poll)
