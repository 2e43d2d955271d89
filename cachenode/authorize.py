"""Each API's edge asks the node's Authenticator here, before any metadata or origin call.

The transports build a `RequestView` of what they received (aiohttp requests, gRPC
invocation metadata), get the `Principal` from the Authenticator, then check its scope for
the object or listing. Everything raises `AccessDenied` (403 / PERMISSION_DENIED), and the
refusal never depends on whether the object exists.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cachenode.access import AccessDenied, Authenticator, Principal, RequestView

if TYPE_CHECKING:
    from aiohttp import web


def http_view(request: web.BaseRequest, transport: str) -> RequestView:
    """Return the view of an aiohttp request: raw path and query as on the request line."""
    raw_path, _, raw_query = request.raw_path.partition("?")
    return RequestView(request.method, raw_path, raw_query,
                       joined(request.headers.items()), transport)


def grpc_view(method: str, metadata: Iterable[tuple[str, str | bytes]]) -> RequestView:
    """Return the view of a gRPC call (`method` as '/package.Service/Method')."""
    text = ((k, v) for k, v in metadata if isinstance(v, str))  # -bin values are no headers
    return RequestView("POST", method, "", joined(text), "grpc")


def joined(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Return headers with lower-case names, repeated ones joined by ','."""
    out: dict[str, str] = {}
    for name, value in items:
        name = name.lower()
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def principal(auth: Authenticator, view: RequestView) -> Principal:
    """Return who made the request, or raise AccessDenied."""
    return auth.authenticate(view, time.time())


def require_read(who: Principal, bucket: str, key: str) -> None:
    """Raise AccessDenied unless `who` may read object `bucket/key`."""
    if not who.may_read(bucket, key):
        raise AccessDenied("AccessDenied", f"{who.name} may not read s3://{bucket}/{key}"[:300])


def require_list(who: Principal, bucket: str, prefix: str) -> None:
    """Raise AccessDenied unless `who` may list `bucket` under `prefix`."""
    if not who.may_list(bucket, prefix):
        raise AccessDenied("AccessDenied",
                           f"{who.name} may not list s3://{bucket}/{prefix}"[:300])


def require_bucket(who: Principal, bucket: str) -> None:
    """Raise AccessDenied unless `who` may read something in `bucket` (HeadBucket, location)."""
    allowed = who.buckets()
    if allowed is not None and bucket not in allowed:
        raise AccessDenied("AccessDenied", f"{who.name} may not read bucket {bucket}"[:300])
