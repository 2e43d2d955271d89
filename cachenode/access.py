"""Who may read what: principals, their read scopes, and the authenticator every API asks.

This is the seam between the transports and authentication. Each adapter (HTTP range API,
S3 API, gRPC) builds a `RequestView` of what it received, asks `Authenticator.authenticate`
for the `Principal` (or gets `AccessDenied`), and checks `Principal.may_read` (or
`may_list`) before any metadata lookup or origin call: a refused request costs the origin
nothing and does not tell whether the object exists. With no keys configured the node is
open: `authenticate` returns `OPEN`, which may read everything.
"""

from __future__ import annotations

from collections.abc import Mapping
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

    def may_read(self, bucket: str, key: str) -> bool:
        """Return whether this principal may read object `bucket/key`."""
        return self.unrestricted or any(s.covers(bucket, key) for s in self.scopes)

    def may_list(self, bucket: str, prefix: str) -> bool:
        """Return whether this principal may list `bucket` under `prefix`."""
        return self.unrestricted or any(s.covers_listing(bucket, prefix) for s in self.scopes)

    def buckets(self) -> frozenset[str] | None:
        """Return the buckets this principal may read in, or None for any bucket."""
        return None if self.unrestricted else frozenset(s.bucket for s in self.scopes)


OPEN = Principal("anonymous", (), unrestricted=True)


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
    headers: Mapping[str, str]  # header names in lower case; repeated headers joined by ','
    transport: str = "http"  # "http", "s3" or "grpc"


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
