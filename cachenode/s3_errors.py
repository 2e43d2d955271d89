"""Cache errors as S3 answers: one table of (status, S3 code), and the XML error response.

The codes are the ones S3 clients act on: botocore raises `s3.exceptions.NoSuchKey` for a
GetObject 404 whose body says NoSuchKey, and retries 500/503 and the throttling codes
(SlowDown) with backoff; a HEAD error has no body (S3 sends none; botocore then reports
the status as the code, e.g. '404').
"""

from __future__ import annotations

from aiohttp import web

from cachenode.access import AccessDenied
from cachenode.errors import (
    BadRequest,
    CacheError,
    ConditionFailed,
    MalformedRange,
    ObjectChanged,
    OriginDenied,
    OriginNotFound,
    OriginUnavailable,
    Overloaded,
    PreconditionFailed,
    RangeNotSatisfiable,
)
from cachenode.http_errors import retry_after, status_of
from cachenode.http_limits import header_safe
from cachenode.s3_xml import error_xml


class S3Error(CacheError):
    """A request the S3 API refuses by itself: writes, unsupported features, bad arguments."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(status, code, reason)
        self.status, self.code, self.reason = status, code, reason


def not_implemented(what: str) -> S3Error:
    """Return the 501 NotImplemented error for a feature this read-only cache lacks."""
    return S3Error(501, "NotImplemented", f"{what} is not implemented by blockcache, a "
                   "read-only cache: send it to the origin")


def invalid_argument(reason: str) -> S3Error:
    """Return the 400 InvalidArgument error."""
    return S3Error(400, "InvalidArgument", reason)


# Most specific class first wins (see s3_status); anything else is 500 InternalError.
S3_CODES: dict[type[CacheError], tuple[int, str]] = {
    BadRequest: (400, "InvalidArgument"),
    AccessDenied: (403, "AccessDenied"),  # its own .code is used (InvalidAccessKeyId...)
    OriginDenied: (403, "AccessDenied"),  # the origin refused the node's credentials
    OriginNotFound: (404, "NoSuchKey"),  # NoSuchBucket when the origin said bucket
    MalformedRange: (416, "InvalidRange"),
    RangeNotSatisfiable: (416, "InvalidRange"),
    ConditionFailed: (412, "PreconditionFailed"),
    PreconditionFailed: (412, "PreconditionFailed"),
    ObjectChanged: (503, "ServiceUnavailable"),  # changed twice during one request
    Overloaded: (503, "SlowDown"),
    OriginUnavailable: (503, "ServiceUnavailable"),
}


def s3_status(err: CacheError) -> tuple[int, str]:
    """Return the HTTP status and S3 error code of a cache error."""
    if isinstance(err, S3Error):
        return err.status, err.code
    if isinstance(err, AccessDenied):
        return 403, err.code
    if isinstance(err, OriginNotFound) and getattr(err, "what", "key") == "bucket":
        return 404, "NoSuchBucket"
    for cls in type(err).__mro__:
        if cls in S3_CODES:
            return S3_CODES[cls]
    # The node's own trouble (disk, queue, a fill that took too long): the range API's
    # table knows every class; what it answers 503 is worth a retry here too.
    return (503, "ServiceUnavailable") if status_of(err) == 503 else (500, "InternalError")


def error_response(err: CacheError, method: str, resource: str, ids: dict[str, str]
                   ) -> web.Response:
    """Return the S3 error answer: XML with Code, Message, Resource, RequestId (no body on HEAD)."""
    status, code = s3_status(err)
    headers = {**ids, "X-Blockcache-Error": code, "X-Blockcache-Reason": header_safe(str(err))}
    extra: list[tuple[str, str]] = []
    if isinstance(err, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{err.size}"
        extra = [("RangeRequested", err.header), ("ActualObjectSize", str(err.size))]
    elif isinstance(err, ConditionFailed):
        extra = [("Condition", err.condition)]
    elif isinstance(err, PreconditionFailed):
        extra = [("Condition", "If-Match")]
    if status == 503:
        headers["Retry-After"] = retry_after(err)
    if status == 405:
        headers["Allow"] = "GET, HEAD"
    if method == "HEAD":
        return web.Response(status=status, headers=headers)
    body = error_xml(code, str(err), resource, ids["x-amz-request-id"], ids["x-amz-id-2"],
                     extra)
    return web.Response(status=status, body=body, headers=headers,
                        content_type="application/xml")
