"""Who may read what: principals, their read scopes, and the authenticator every API asks.

This is the seam between the transports and authentication. Each adapter (HTTP range API,
S3 API, gRPC) builds a `RequestView` of what it received, asks `Authenticator.authenticate`
for the `Principal` (or gets `AccessDenied`), and checks `Principal.may_read` (or
`may_list`; `require_read`/`require_list` raise the one refusal every API gives) before any
metadata lookup or origin call: a refused request costs the origin nothing and does not tell
whether the object exists. With no keys and no cluster secret configured the node is open:
`authenticate` returns `OPEN`, which may read everything. `Principal.internal` marks who may
make the cluster's own requests (peer reads with their X-Blockcache-* headers honoured,
`/_warm`, `/_evict`): holders of the cluster secret, or everyone on a node with no auth at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cachenode.errors import CacheError


@dataclass(frozen=True, slots=True)
class Scope:
    """What one grant lets a principal read: a bucket, or the keys under a prefix of it."""

    bucket: str
    prefix: str = ""

    def covers(self, bucket: str, key: str) -> bool:
        """Return whether the object `bucket/key` lies in this scope."""
        return bucket == self.bucket and key.startswith(self.prefix)

    def covers_listing(self, bucket: str, prefix: str) -> bool:
        """Return whether every key a listing of `bucket/prefix*` can return lies in scope."""
        return bucket == self.bucket and prefix.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller (an access key, a tenant) and what it may read."""

    name: str  # access key id or tenant name, for logs and metrics; never a secret
    scopes: tuple[Scope, ...] = ()  # empty: everything the node's origin credentials can read
    unrestricted: bool = False  # True for OPEN and for keys configured without scopes
    internal: bool = False  # a node or coordinator of this cluster (or no auth at all: OPEN)

    def may_read(self, bucket: str, key: str) -> bool:
        """Return whether this principal may read object `bucket/key`."""
        return self.unrestricted or any(s.covers(bucket, key) for s in self.scopes)

    def may_list(self, bucket: str, prefix: str) -> bool:
        """Return whether this principal may list `bucket` under `prefix`."""
        return self.unrestricted or any(s.covers_listing(bucket, prefix) for s in self.scopes)

    def buckets(self) -> frozenset[str] | None:
        """Return the buckets this principal may read in, or None for any bucket."""
        return None if self.unrestricted else frozenset(s.bucket for s in self.scopes)


OPEN = Principal("anonymous", (), unrestricted=True, internal=True)  # no auth configured


class AccessDenied(CacheError):
    """The request carries no valid credential, or one whose scope does not cover it.

    `code` is the S3 error code an S3 client expects (AccessDenied, InvalidAccessKeyId,
    SignatureDoesNotMatch, RequestTimeTooSkewed, AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError, ExpiredToken...); every API answers 403.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True, slots=True)
class RequestView:
    """What an authenticator needs of a request, as it arrived (nothing decoded twice)."""

    method: str
    raw_path: str  # percent-encoded, as on the request line, without the query
    raw_query: str  # as on the request line, after '?', '' if none
    headers: Mapping[str, str]  # names in lower case; values trimmed, inner runs of spaces
    # made one (SigV4's Trimall); a repeated header's values joined by ',' (use `of`)
    transport: str = "http"  # "http", "s3" or "grpc"

    @classmethod
    def of(cls, method: str, target: str, headers: Iterable[tuple[str, str]],
           transport: str = "http") -> RequestView:
        """Return the view of a request: its method, raw request target and header pairs."""
        path, _, query = target.partition("?")
        joined: dict[str, list[str]] = {}
        for name, value in headers:
            joined.setdefault(name.strip().lower(), []).append(" ".join(value.split()))
        return cls(method, path, query, {k: ",".join(v) for k, v in joined.items()}, transport)


class Authenticator(Protocol):
    """Turns a request into the principal it was made by (cachenode/auth/...)."""

    @property
    def enabled(self) -> bool:
        """Return whether credentials are required (False: every request is OPEN)."""
        ...

    def authenticate(self, request: RequestView, now: float) -> Principal:
        """Return the request's principal, or raise AccessDenied saying why (never a secret)."""
        ...


class OpenAccess:
    """The authenticator of a node with no keys configured: everyone is OPEN."""

    enabled = False

    def authenticate(self, request: RequestView, now: float) -> Principal:
        """Return OPEN."""
        return OPEN


def require_read(principal: Principal, bucket: str, key: str) -> None:
    """Raise AccessDenied unless `principal` may read `bucket/key` (whether or not it exists)."""
    if not principal.may_read(bucket, key):
        raise AccessDenied("AccessDenied", f"access key {principal.name} may not read "
                           f"s3://{bucket}/{key}")


def require_list(principal: Principal, bucket: str, prefix: str) -> None:
    """Raise AccessDenied unless `principal` may list `bucket` under `prefix`."""
    if not principal.may_list(bucket, prefix):
        raise AccessDenied("AccessDenied", f"access key {principal.name} may not list "
                           f"s3://{bucket}/{prefix}")
