"""Cache errors as HTTP answers: one status table and a JSON body with the reason."""

from __future__ import annotations

import json
import math

from aiohttp import web

from cachenode.access import AccessDenied
from cachenode.errors import (
    BadRequest,
    BlockNotCached,
    CacheError,
    DiskUnavailable,
    MalformedRange,
    NotReady,
    ObjectChanged,
    OriginDenied,
    OriginNotFound,
    OriginTimeout,
    OriginUnavailable,
    Overloaded,
    PayloadTooLarge,
    PreconditionFailed,
    RangeNotSatisfiable,
    StoreFull,
)
from cachenode.singleflight import FlightCancelled

HTTP_STATUS: dict[type[CacheError], int] = {
    AccessDenied: 403,
    BadRequest: 400,
    PayloadTooLarge: 413,
    OriginNotFound: 404,
    MalformedRange: 416,
    RangeNotSatisfiable: 416,
    OriginDenied: 502,
    OriginUnavailable: 502,
    OriginTimeout: 503,
    ObjectChanged: 503,
    PreconditionFailed: 412,
    BlockNotCached: 404,
    StoreFull: 503,
    DiskUnavailable: 503,
    Overloaded: 503,
    FlightCancelled: 503,
    NotReady: 503,
}


def status_of(err: CacheError) -> int:
    """Return the HTTP status for a cache error (most specific class wins)."""
    for cls in type(err).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def retry_after(err: CacheError) -> str:
    """Return the Retry-After of a 503: whole seconds, 1 unless the error knows better."""
    return str(max(1, math.ceil(getattr(err, "retry_after_s", 1.0))))


def error_response(err: CacheError) -> web.Response:
    """Return a JSON error response with the reason a person can act on.

    The error is the class name; an AccessDenied also carries its S3 `code`
    (InvalidAccessKeyId, SignatureDoesNotMatch...).
    """
    reason = str(err).encode("ascii", "backslashreplace").decode()
    headers = {"X-Blockcache-Error": type(err).__name__,  # HEAD responses have no body
               "X-Blockcache-Reason": "".join(c if " " <= c < "\x7f" else "?"
                                              for c in reason[:300])}
    if isinstance(err, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{err.size}"
    if status_of(err) == 503:
        headers["Retry-After"] = retry_after(err)
    doc = {"error": type(err).__name__, "reason": str(err)}
    if isinstance(err, AccessDenied):  # the S3 error code: SignatureDoesNotMatch...
        doc["code"] = headers["X-Blockcache-Code"] = getattr(err, "code", "AccessDenied")
    body = json.dumps(doc) + "\n"
    return web.Response(status=status_of(err), text=body, content_type="application/json",
                        headers=headers)
