"""Who calls the coordinator API: the admin, a tenant, or anyone (a lab with auth off).

With `--admin-token-file`, every route but `/healthz` (and `/metrics` unless
`--metrics-auth`) needs `Authorization: Bearer <token>`: the admin token (compared in
constant time with the file's) may do everything, tenant management included; a tenant's
token (looked up in the tenants this replica follows in etcd) acts as that tenant, inside
its read scopes and on its own jobs and versions only (coordinator/scoping.py). No token or
an unknown one is 401, a valid one without the right 403. Without the file the API is open
(every caller is the admin) and the replica says so in a WARNING at start.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from cachenode.auth.tenant_table import TenantTable
from cachenode.auth.tenants import Tenant
from cachenode.settings import ConfigError
from coordinator.errors import Forbidden, Unauthorized

MIN_TOKEN_CHARS = 16
OPEN_PATHS = frozenset({"/healthz"})


@dataclass(frozen=True)
class Caller:
    """Who made a request: the admin (tenant None) or one tenant."""

    name: str  # "admin", "anonymous" (auth off) or the tenant's name
    tenant: Tenant | None = None
    key_id: str = ""  # the tenant's key whose token was used

    @property
    def admin(self) -> bool:
        """Return whether the caller may do everything."""
        return self.tenant is None

    def require_admin(self, what: str) -> None:
        """Raise Forbidden unless the caller is the admin."""
        if not self.admin:
            raise Forbidden(f"{what} needs the admin token; tenant {self.name} may not")


ADMIN = Caller("admin")
ANYONE = Caller("anonymous")  # auth off


def read_admin_token(path: Path) -> str:
    """Return the SHA-256 of the admin token in a file, or raise ConfigError."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--admin-token-file {path}: cannot read it: {e}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(f"--admin-token-file {path}: the token must be at least "
                          f"{MIN_TOKEN_CHARS} characters, without blanks")
    return hashlib.sha256(token.encode()).hexdigest()


class ApiAuth:
    """Resolves each request's caller; `enabled` False: everyone is the admin."""

    def __init__(self, admin_sha256: str | None, tenants: TenantTable | None,
                 metrics_auth: bool = False) -> None:
        self._admin, self._tenants = admin_sha256, tenants
        self._open = OPEN_PATHS | (frozenset() if metrics_auth else {"/metrics"})

    @property
    def enabled(self) -> bool:
        """Return whether callers need a token."""
        return self._admin is not None

    def caller(self, request: web.Request) -> Caller:
        """Return who sent the request, or raise Unauthorized."""
        if not self.enabled:
            return ANYONE
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("this coordinator needs a token: Authorization: Bearer <token> "
                               "(cachectl --token or CACHECTL_TOKEN)")
        digest = hashlib.sha256(token.encode()).hexdigest()
        if self._admin is not None and hmac.compare_digest(digest, self._admin):
            return ADMIN
        who = self._tenants.by_token(token) if self._tenants is not None else None
        tenant = self._tenants.tenants.get(who.tenant) if who and self._tenants else None
        if who is None or tenant is None:
            raise Unauthorized("the token is not valid here (unknown, revoked or malformed)")
        return Caller(tenant.name, tenant, who.name)

    def needs_caller(self, path: str) -> bool:
        """Return whether a path needs a token (all but /healthz and maybe /metrics)."""
        return path not in self._open
