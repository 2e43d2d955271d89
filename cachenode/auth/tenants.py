"""Tenants as etcd holds them: records, credentials, and the in-memory table nodes read.

`/blockcache/<cluster>/tenants/<name>` -> a tenant (JSON, no secret): read scopes, per-site
limits, what to do when a warmup would exceed its quota. `/blockcache/<cluster>/tenants/
<name>/keys/<key id>` -> one credential of it (JSON): the SigV4 secret sealed with the
cluster secret (auth/sealing.py) and the SHA-256 of its bearer token. A token is
`bct_<key id>_<64 hex digits>` (256 random bits), so a SHA-256 without a salt is enough:
nothing that can be tried against it is smaller than the token itself. Revoking a key
deletes its record; deleting a tenant deletes all of its keys. Pure (stdlib only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from cachenode.access import NO_LIMITS, Principal, Scope, TenantLimits
from cachenode.auth.keys import AccessKey
from cachenode.auth.sealing import Sealer, SealError

log = logging.getLogger(__name__)
TOKEN_PREFIX = "bct_"
OVER_QUOTA = ("refuse", "evict-oldest")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TOKEN = re.compile(r"bct_(BC[A-Z2-7]{18})_[0-9a-f]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,62}")
LIMIT_FIELDS = ("quota_bytes", "origin_bytes_per_s", "origin_fills")


def tenants_prefix(cluster: str) -> str:
    """Return the etcd prefix every tenant record and key lives under (ends with '/')."""
    return f"/blockcache/{cluster}/tenants/"


def check_name(name: object) -> str:
    """Return a valid tenant name (1-63 lower-case letters, digits, '.', '_', '-')."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"tenant name {str(name)[:70]!r} must be 1-63 lower-case letters, "
                         "digits, '.', '_' or '-'")
    return name


def parse_read_scope(url: object) -> Scope:
    """Return the scope of 's3://bucket/prefix' (or 's3://bucket' for all of it)."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ValueError(f"read scope {str(url)[:80]!r} is not s3://bucket/prefix")
    bucket, _, prefix = url[5:].partition("/")
    if not _BUCKET.fullmatch(bucket) or "\0" in prefix or len(prefix) > 1024:
        raise ValueError(f"read scope {url[:80]!r}: {bucket[:63]!r} is not a bucket name")
    return Scope(bucket, prefix)


def scope_url(scope: Scope) -> str:
    """Return the s3:// form of a scope."""
    return f"s3://{scope.bucket}/{scope.prefix}"


def _limit(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number of 0 or more, or null")
    return value


def limits_of(doc: object, site: str) -> TenantLimits:
    """Return the limits of one site from their JSON object."""
    if not isinstance(doc, dict) or set(doc) - set(LIMIT_FIELDS):
        raise ValueError(f"site {site}: limits are an object of {', '.join(LIMIT_FIELDS)}")
    return TenantLimits(*(_limit(doc.get(f), f"site {site}: {f}") for f in LIMIT_FIELDS))


@dataclass(frozen=True)
class Tenant:
    """One tenant: what it may read, and what it may use of each site."""

    name: str
    read: tuple[Scope, ...]
    sites: dict[str, TenantLimits] = field(default_factory=dict)
    over_quota: str = "refuse"  # or "evict-oldest": its own oldest unpinned version goes
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (etcd and the API)."""
        return {"name": self.name, "read": [scope_url(s) for s in self.read],
                "sites": {s: {f: getattr(lim, f) for f in LIMIT_FIELDS}
                          for s, lim in sorted(self.sites.items())},
                "over_quota": self.over_quota, "created": self.created}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Tenant:
        """Return a tenant from its JSON form, or raise ValueError saying what is wrong."""
        read = doc.get("read")
        if not isinstance(read, list) or not read:
            raise ValueError("read: give at least one s3://bucket/prefix scope")
        sites = doc.get("sites") or {}
        if not isinstance(sites, dict):
            raise ValueError("sites must map a site name to its limits")
        over = doc.get("over_quota", "refuse")
        if over not in OVER_QUOTA:
            raise ValueError(f"over_quota must be one of {', '.join(OVER_QUOTA)}")
        created = doc.get("created", 0.0)
        return cls(check_name(doc.get("name")), tuple(parse_read_scope(u) for u in read),
                   {str(s): limits_of(v, str(s)) for s, v in sites.items()}, over,
                   float(created) if isinstance(created, int | float) else 0.0)

    def limits(self, site: str) -> TenantLimits:
        """Return this tenant's limits at a site (none set: no limit)."""
        return self.sites.get(site, NO_LIMITS)


@dataclass(frozen=True)
class KeyRecord:
    """One credential of a tenant as etcd holds it: nothing usable without the cluster secret."""

    id: str
    tenant: str
    sealed_secret: str = field(repr=False)
    token_sha256: str = field(repr=False)
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form stored in etcd."""
        return {"id": self.id, "tenant": self.tenant, "secret": self.sealed_secret,
                "token_sha256": self.token_sha256, "created": self.created}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> KeyRecord:
        """Return a key record from its JSON form, or raise ValueError."""
        try:
            return cls(str(doc["id"]), str(doc["tenant"]), str(doc["secret"]),
                       str(doc["token_sha256"]), float(doc.get("created", 0.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad key record: {e}") from None


@dataclass(frozen=True)
class NewKey:
    """A freshly made credential: shown once to its creator, then only its record remains."""

    record: KeyRecord
    secret: str = field(repr=False)
    token: str = field(repr=False)


def token_hash(token: str) -> str:
    """Return the hex SHA-256 a token is stored as."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_key(tenant: str, sealer: Sealer, now: float) -> NewKey:
    """Return a new access key id, SigV4 secret and bearer token for a tenant."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    key_id = "BC" + "".join(secrets.choice(alphabet) for _ in range(18))
    secret = secrets.token_urlsafe(30)  # 40 characters, 240 bits
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_hex(32)}"
    record = KeyRecord(key_id, tenant, sealer.seal(secret, f"{tenant}/{key_id}"),
                       token_hash(token), now)
    return NewKey(record, secret, token)


def token_key_id(token: str) -> str | None:
    """Return the key id a well-formed token names, else None."""
    m = _TOKEN.fullmatch(token)
    return m.group(1) if m else None


def split_key(rest: str) -> tuple[str, str | None] | None:
    """Return (tenant, key id or None) of an etcd key below the tenants prefix."""
    parts = rest.split("/")
    if len(parts) == 1:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "keys":
        return parts[0], parts[2]
    return None


def decode(raw: bytes) -> dict[str, Any]:
    """Return the JSON object of an etcd value, or raise ValueError."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def token_matches(record: KeyRecord, token: str) -> bool:
    """Return whether `token` is the one this record holds the hash of (constant time)."""
    return hmac.compare_digest(record.token_sha256, token_hash(token))


def principal_of(tenant: Tenant, key_id: str) -> Principal:
    """Return the principal a tenant's key stands for."""
    return Principal(key_id, tenant.read, tenant=tenant.name)


def opened(record: KeyRecord, tenant: Tenant, sealer: Sealer | None) -> AccessKey | None:
    """Return the usable SigV4 key of a record, or None if its secret cannot be opened here."""
    if sealer is None:
        return None
    try:
        secret = sealer.open(record.sealed_secret, f"{record.tenant}/{record.id}")
    except SealError as e:
        log.warning("access key %s of tenant %s is unusable here: %s", record.id,
                    record.tenant, e)
        return None
    return AccessKey(record.id, secret, principal_of(tenant, record.id))
