"""Errors the client reports; each carries the node's reason when there is one."""

from __future__ import annotations

import json


class ClientError(Exception):
    """A read through the cache failed; `str()` says why."""


class NotFound(ClientError):
    """The bucket or key does not exist at the origin."""


class Unavailable(ClientError):
    """No node could serve the request (or the origin failed for uncached bytes)."""


class ObjectChanged(ClientError):
    """The object was overwritten at origin while it was being read: stat it again."""


class CoordinatorError(ClientError):
    """The coordinator answered a request with an error; `str()` is its reason."""

    def __init__(self, status: int, error: str, reason: str,
                 retry_after_s: float | None = None) -> None:
        super().__init__(status, error, reason)
        self.status, self.error, self.reason = status, error, reason
        self.retry_after_s = retry_after_s  # the answer's Retry-After, if it had one

    def __str__(self) -> str:
        return self.reason or f"{self.error} (HTTP {self.status})"


class CoordinatorUnavailable(Unavailable):
    """The coordinator could not be reached or did not answer in time; `str()` names its URL."""


def reason_of(body: str) -> str:
    """Return the reason of a node's JSON error body (else the body's start)."""
    try:
        return str(json.loads(body)["reason"])
    except (ValueError, KeyError, TypeError):
        return body.strip()[:200]


def error_for(status: int, body: str) -> ClientError:
    """Return the error for a node's final 4xx answer."""
    reason = reason_of(body)
    if status == 404:
        return NotFound(f"404: {reason}")
    return ClientError(f"{status}: {reason}")
