"""The one error taxonomy of the cache node; adapters map these to HTTP and gRPC codes."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error the cache reports to a reader."""

    reason = "cache error"

    def __str__(self) -> str:
        return self.reason


class BadRequest(CacheError):
    """The request itself is invalid (path tricks, overlong key, bad bucket name)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PayloadTooLarge(BadRequest):
    """A request body is larger than the endpoint accepts."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")


class MalformedRange(CacheError):
    """The Range header cannot be parsed, or asks for something unsupported."""

    def __init__(self, header: str, why: str) -> None:
        super().__init__(header, why)
        self.header, self.why = header, why
        self.reason = f"malformed Range header {header!r}: {why}"


class RangeNotSatisfiable(CacheError):
    """The range lies wholly past the end of the object."""

    def __init__(self, header: str, size: int) -> None:
        super().__init__(header, size)
        self.header, self.size = header, size
        self.reason = f"range {header!r} not satisfiable for an object of {size} bytes"


class OriginNotFound(CacheError):
    """The bucket or key does not exist at the origin."""

    def __init__(self, bucket: str, key: str, what: str = "key") -> None:
        super().__init__(bucket, key, what)
        self.bucket, self.key, self.what = bucket, key, what
        self.reason = f"no such {what} at origin: s3://{bucket}/{key}"


class OriginUnavailable(CacheError):
    """The origin could not be reached or failed; only uncached bytes are affected."""

    def __init__(self, bucket: str, key: str, detail: str) -> None:
        super().__init__(bucket, key, detail)
        self.bucket, self.key, self.detail = bucket, key, detail
        self.reason = f"origin unavailable for s3://{bucket}/{key}: {detail}"


class OriginTimeout(OriginUnavailable):
    """The origin did not answer within the fill timeout."""


class OriginDenied(CacheError):
    """The origin refused our credentials for this object."""

    def __init__(self, bucket: str, key: str, detail: str) -> None:
        super().__init__(bucket, key, detail)
        self.reason = f"origin denied access to s3://{bucket}/{key}: {detail}"


class ObjectChanged(CacheError):
    """The object changed at origin while it was being read (ETag no longer matches)."""

    def __init__(self, bucket: str, key: str, etag: str) -> None:
        super().__init__(bucket, key, etag)
        self.bucket, self.key, self.etag = bucket, key, etag
        self.reason = f"s3://{bucket}/{key} changed at origin (pinned ETag {etag} is stale)"


class PreconditionFailed(ObjectChanged):
    """The reader pinned a version (If-Match) that the origin no longer has."""


class ConditionFailed(PreconditionFailed):
    """A request precondition (If-Match, If-Unmodified-Since...) is false for the object."""

    def __init__(self, bucket: str, key: str, etag: str, condition: str) -> None:
        super().__init__(bucket, key, etag)
        self.condition = condition
        self.reason = f"{condition} is false for s3://{bucket}/{key} (ETag {etag})"


class StoreFull(CacheError):
    """No space could be freed for a new block (everything is in use, or the disk is full)."""

    def __init__(self, needed: int, capacity: int, why: str = "") -> None:
        super().__init__(needed, capacity, why)
        self.reason = why or (f"block store full: cannot free {needed} bytes under capacity "
                              f"{capacity}")


class DiskUnavailable(CacheError):
    """The local disk failed; the store took itself out of rotation."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = f"local disk unavailable: {detail}"


class Overloaded(CacheError):
    """Too many requests are already waiting for fills."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = f"node overloaded: {detail}"


class TenantThrottled(Overloaded):
    """A tenant's fills are over its origin budget on this node (bytes/s or fills at once).

    Answered like an overload (503 with Retry-After, S3 SlowDown), but never failed over to
    another node: that would spend the tenant's budget twice.
    """

    def __init__(self, tenant: str, detail: str, retry_after_s: float = 1.0) -> None:
        super().__init__(detail)
        self.tenant, self.retry_after_s = tenant, retry_after_s
        self.reason = f"tenant {tenant} is over its origin budget on this node: {detail}"


class NotReady(CacheError):
    """The node is starting, draining or its disk is out of rotation."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = f"node not ready: {detail}"


class BlockNotCached(CacheError):
    """A handoff asked for a block this node does not hold on disk."""

    def __init__(self, block_id: str) -> None:
        super().__init__(block_id)
        self.reason = f"block {block_id} is not cached here"


class PeerUnavailable(CacheError):
    """Another cache node could not be reached or did not answer in time."""

    def __init__(self, peer: str, detail: str) -> None:
        super().__init__(peer, detail)
        self.peer, self.detail = peer, detail
        self.reason = f"peer {peer} unavailable: {detail}"


def remote_error(name: str, reason: str, bucket: str = "", key: str = "") -> CacheError:
    """Return the local form of an error another node reported by class name and reason."""
    cls = next((c for c in _all_errors() if c.__name__ == name), CacheError)
    err = cls.__new__(cls)
    Exception.__init__(err, reason)
    err.reason = reason
    err.bucket, err.key, err.size = bucket, key, 0  # type: ignore[attr-defined]
    err.detail, err.etag = reason, ""  # type: ignore[attr-defined]
    return err


def _all_errors() -> list[type[CacheError]]:
    """Return CacheError and every subclass, depth first."""
    found: list[type[CacheError]] = [CacheError]
    for c in found:
        found.extend(c.__subclasses__())
    return found
