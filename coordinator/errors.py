"""Coordinator errors: each maps to one HTTP status and carries a reason a person can act on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_LISTED = 20  # versions named in an UnknownVersion reason


class CoordinatorError(Exception):
    """Base of every error the coordinator reports to a caller."""

    status = 500
    retry_after_s: int | None = None  # sent as Retry-After: the caller may try again then

    def details(self) -> dict[str, Any]:
        """Return fields the JSON answer carries besides `error` and `reason`."""
        return {}


class BadRequest(CoordinatorError):
    """The request is malformed."""

    status = 400


class BadPrefix(BadRequest):
    """The prefix is not s3://<bucket>/<prefix>/."""


class BadSite(BadRequest):
    """The site name is invalid or no cache node is registered for it."""


class BadPattern(BadRequest):
    """The model/version pattern does not compile or does not split the prefix."""


class EmptyPrefix(CoordinatorError):
    """Nothing to warm: the prefix holds no objects, or the bucket does not exist."""

    status = 404


class NotFound(CoordinatorError):
    """No such job or version."""

    status = 404


class UnknownVersion(NotFound):
    """A site has no version at a prefix; the reason names the versions it has under it."""

    def __init__(self, site: str, prefix: str, under: Sequence[tuple[str, str]]) -> None:
        super().__init__(site, prefix)
        self.site, self.prefix = site, prefix
        self.under = list(under)  # (prefix, state) of the site's versions under `prefix`

    def __str__(self) -> str:
        head = f"site {self.site} has no version at {self.prefix}"
        if not self.under:
            return (f"{head}, and none under it: warm it first (`cachectl models --site "
                    f"{self.site}` lists the versions the site has)")
        shown = ", ".join(f"{p} ({state})" for p, state in self.under[:MAX_LISTED])
        more = f" (the first {MAX_LISTED} of {len(self.under)})" if len(
            self.under) > MAX_LISTED else ""
        return f"{head}; name one of its versions under it{more}: {shown}"

    def details(self) -> dict[str, Any]:
        """Return the first versions under the prefix and how many there are."""
        return {"versions": [p for p, _ in self.under[:MAX_LISTED]],
                "versions_total": len(self.under)}


class Conflict(CoordinatorError):
    """The request does not fit the current state (e.g. cancelling a finished job)."""

    status = 409


class OriginFailed(CoordinatorError):
    """The object store could not be listed."""

    status = 502


class NodesFailed(CoordinatorError):
    """The cache nodes of a site could not be asked what the request needs."""

    status = 502


class StateUnavailable(CoordinatorError):
    """etcd, where all state lives, cannot be reached."""

    status = 503
    retry_after_s = 1


class NotLeader(CoordinatorError):
    """This replica lost the leadership while writing (the write was refused by etcd)."""

    status = 503
    retry_after_s = 1


class Internal(CoordinatorError):
    """A bug: something failed that the coordinator has no answer for (see its log)."""
