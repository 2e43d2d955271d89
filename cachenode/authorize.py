"""Each API's edge asks the node's Authenticator here, before any metadata or origin call.

The transports build a `RequestView` of what they received, get the `Principal` from the
Authenticator, then check its scope for the object or listing (cachenode/access.py). Every
refusal raises `AccessDenied` (403 / PERMISSION_DENIED) and never depends on whether the
object exists.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cachenode.access import (
    AccessDenied,
    Authenticator,
    Principal,
    RequestView,
    require_list,
    require_read,
)

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["http_view", "principal", "require_bucket", "require_list", "require_read"]


def http_view(request: web.BaseRequest, transport: str) -> RequestView:
    """Return the view of an aiohttp request: raw target and header pairs as received."""
    headers = [(k.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
               for k, v in request.raw_headers]
    return RequestView.of(request.method, request.raw_path, headers, transport)


def principal(auth: Authenticator, view: RequestView) -> Principal:
    """Return who made the request, or raise AccessDenied."""
    return auth.authenticate(view, time.time())


def require_bucket(who: Principal, bucket: str) -> None:
    """Raise AccessDenied unless `who` may read something in `bucket` (HeadBucket, location)."""
    allowed = who.buckets()
    if allowed is not None and bucket not in allowed:
        raise AccessDenied("AccessDenied", f"access key {who.name} may not read bucket "
                           f"{bucket}"[:300])
